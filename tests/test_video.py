"""--capture-video: the evaluator records the episode it evaluates, and every suite draws it as a GIF whose
frames are that episode's steps."""
import importlib

import jax
import numpy as np
import pytest
from PIL import Image

# One task per suite, a minute or two each on 2 cores (compiling the evaluator, drawing up to 500 steps): CoordSum
# in the fast suite, the others with `-m slow`. The adapter and its drawing code are the same text in every script
# (test_consistency.py).
TASKS = ["coordsum-3x10"] + [pytest.param(task, marks=pytest.mark.slow) for task in (
    "smax-2s3z", "mpe-simple_spread_3ag", "con-5x5x3a", "lbf-2s-8x8-2p-2f-coop", "rware-tiny-2ag")]


def gif_durations(path):
    """Each stored frame's display time in ms (Pillow merges identical consecutive frames, adding their times)."""
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    return durations


@pytest.mark.parametrize("env_id", TASKS)
def test_recorded_episode_is_the_evaluated_one_and_animates(env_id, tmp_path):
    ippo = importlib.import_module("ippo")
    args = ippo.Args(env_id=env_id, num_envs=4, rollout_length=8, layer_size=16, gru_size=16)
    env = ippo.make_env(env_id)
    trainer = ippo.make_train(args, env)
    params = trainer.init(jax.random.PRNGKey(1), ippo.hparams_from_args(args)).actor_params
    evaluate = jax.jit(trainer.evaluate_actor, static_argnums=(2, 3))
    key = jax.random.PRNGKey(5)
    plain = jax.device_get(evaluate(params, key, 2))
    metrics, episode = jax.device_get(evaluate(params, key, 2, True))
    # Recording changes nothing in what is evaluated, and what it records is environment 0's first episode.
    for name in plain:
        np.testing.assert_array_equal(plain[name], metrics[name], name)
    length = int(metrics["episode_length"][0])
    assert np.argmax(episode["done"]) + 1 == length
    assert np.sum(episode["reward"][:length]) == pytest.approx(metrics["episode_return"][0], rel=1e-5, abs=1e-5)
    assert len(importlib.import_module("envs")._episode_states(episode)) == length
    path = str(tmp_path / "episode.gif")
    env.animate(episode, path)
    durations = gif_durations(path)
    per_frame = {"coordsum": 400, "mpe": 100}.get(env.suite, 150)  # ms
    assert sum(durations) == length * per_frame  # one frame per step, however Pillow stored them


def test_coordsum_frames_show_the_recorded_picks_and_rewards(tmp_path, monkeypatch):
    """The CoordSum drawing's title of each step states its target, picks, reward and running return."""
    import matplotlib.axes

    import coordsum

    env = coordsum.CoordSum(num_agents=2, num_actions=3, maxval=4, time_limit=3)
    state, _ = env.reset(jax.random.PRNGKey(0))
    states, actions, rewards = [], [], []
    for t, key in enumerate(jax.random.split(jax.random.PRNGKey(1), 3)):
        target = int(state.target)
        first = min(target, 2)  # steps 0 and 2 hit the target, step 1 misses it
        actions.append([first, target - first] if t != 1 else [first, (target - first + 1) % 3])
        states.append(state)
        state, _, reward, _ = env.step(key, state, np.array(actions[t]))
        rewards.append(float(reward))
    actions = np.array(actions)
    assert rewards[0] > 0 and rewards[1] == 0 and rewards[2] > 0
    titles = []
    real_set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, text, **kw: titles.append(text) or real_set_title(self, text, **kw))
    coordsum.animate(env, states, actions, np.array(rewards), str(tmp_path / "c.gif"))
    expected = []
    for t in range(3):
        target = int(states[t].target)
        expected.append(f"step {t + 1}: target {target}, picks {actions[t][0]} + {actions[t][1]} = "
                        f"{actions[t].sum()}, reward {rewards[t]:g} (return {sum(rewards[:t + 1]):g})")
    assert titles[-3:] == expected or titles[:3] == expected
