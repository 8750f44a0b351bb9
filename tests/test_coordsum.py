"""CoordSum (paper Appendix B, the authors' registered tasks): rewards, opponent, episodes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coordsum


def state_with(env, target, counts=None, step_count=0):
    counts = jnp.zeros((env.num_rows, env.num_actions), jnp.int32) if counts is None else jnp.asarray(counts, jnp.int32)
    return coordsum.CoordSumState(jnp.int32(target), jnp.int32(step_count), counts)


def test_reward_two_when_sum_hits_and_opponent_is_fooled():
    env = coordsum.CoordSum(3, 10, 30)
    # Empty history: the opponent guesses 0 (argmax of all-zero counts); agent 0 plays 4.
    _, _, reward, done = env.step(jax.random.PRNGKey(0), state_with(env, 9), jnp.array([4, 3, 2]))
    assert float(reward) == 2.0 and not bool(done)


def test_reward_one_when_opponent_guesses_agent_0():
    env = coordsum.CoordSum(3, 10, 30)
    # Empty history -> guess 0, and agent 0 plays 0 while the sum still hits.
    _, _, reward, _ = env.step(jax.random.PRNGKey(0), state_with(env, 9), jnp.array([0, 5, 4]))
    assert float(reward) == 1.0


def test_reward_zero_when_sum_misses_whatever_the_guess():
    env = coordsum.CoordSum(3, 10, 30)
    for actions in ([4, 3, 3], [0, 0, 0], [9, 9, 9]):
        _, _, reward, _ = env.step(jax.random.PRNGKey(0), state_with(env, 9), jnp.array(actions))
        assert float(reward) == 0.0


def test_opponent_majority_vote_over_agent_0_history_for_the_target():
    env = coordsum.CoordSum(3, 10, 30)
    state = state_with(env, 5)
    # Agent 0 plays 2, 2, 1 on target 5 -> majority 2; a play on another target must not count.
    key = jax.random.PRNGKey(1)
    for a0 in (2, 2, 1):
        state, *_ = env.step(key, state._replace(target=jnp.int32(5)), jnp.array([a0, 0, 0]))
    state, *_ = env.step(key, state._replace(target=jnp.int32(7)), jnp.array([1, 0, 0]))
    state = state._replace(target=jnp.int32(5))
    assert int(env.guess(state)) == 2
    _, _, reward, _ = env.step(key, state, jnp.array([2, 3, 0]))  # sum 5, guessed -> 1.0
    assert float(reward) == 1.0
    _, _, reward, _ = env.step(key, state, jnp.array([1, 4, 0]))  # sum 5, not guessed -> 2.0
    assert float(reward) == 2.0
    # Ties go to the smallest action: after one more 1, counts are {1: 2, 2: 2}.
    state, *_ = env.step(key, state, jnp.array([1, 0, 0]))
    assert int(env.guess(state._replace(target=jnp.int32(5)))) == 1


def test_targets_at_or_above_num_actions_minus_1_share_one_history_row():
    env = coordsum.CoordSum(3, 10, 30)
    state = state_with(env, 25)
    state, *_ = env.step(jax.random.PRNGKey(0), state, jnp.array([7, 9, 9]))
    assert int(env.guess(state._replace(target=jnp.int32(9)))) == 7  # row 9 = targets 9..29
    assert int(env.guess(state._replace(target=jnp.int32(8)))) == 0  # row 8 untouched
    separate = coordsum.CoordSum(3, 10, 30, row_per_target=True)
    state = state_with(separate, 25)
    state, *_ = separate.step(jax.random.PRNGKey(0), state, jnp.array([7, 9, 9]))
    assert int(separate.guess(state._replace(target=jnp.int32(9)))) == 0
    assert int(separate.guess(state._replace(target=jnp.int32(25)))) == 7


def test_episode_ends_after_time_limit_and_targets_cover_0_to_maxval():
    env = coordsum.CoordSum(3, 10, 30)
    state, obs = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (3, 1) and obs.dtype == jnp.float32
    targets, dones = [], []
    step = jax.jit(env.step)
    for t in range(coordsum.TIME_LIMIT):
        targets.append(int(state.target))
        state, obs, reward, done = step(jax.random.PRNGKey(t + 1), state, jnp.array([0, 0, 0]))
        dones.append(bool(done))
        assert np.all(np.asarray(obs) == int(state.target))  # every agent sees the raw target
    assert dones == [False] * 99 + [True]
    targets += [int(coordsum.CoordSum(3, 10, 30).reset(k)[0].target) for k in jax.random.split(jax.random.PRNGKey(9), 400)]
    assert min(targets) == 0 and max(targets) == 29


def test_parse_task_uses_registered_maxval_and_rejects_garbage():
    assert coordsum.parse_task("3x10") == (3, 10, 30)
    assert coordsum.parse_task("8x15") == (8, 15, 100)
    assert coordsum.parse_task("4x6") == (4, 6, 6)
    with pytest.raises(ValueError, match="<agents>x<actions>"):
        coordsum.parse_task("three")


def test_section3_example_numbers():
    rates = coordsum.section3_example()
    assert rates["symmetric decentralised (all 3)"] == 0.0
    assert rates["symmetric decentralised (all 4)"] == 0.0
    assert rates["sequential joint (CTCE)"] == pytest.approx(1.0)
    assert rates["CTDS student distilled from it"] == pytest.approx(0.5)
