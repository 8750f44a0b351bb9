"""The environments every script trains on: one adapter per suite, and the interface your own follows.

`make_env(env_id) -> EnvSpec`: pure `reset(key)` / `step(key, env_state, actions)` with automatic reset
inside `step`, for the paper's 44 tasks (RWARE, LBF and Connector from jumanji; MPE and SMAX from jaxmarl;
CoordSum from coordsum.py) and for any environment of your own: `--env-id mypackage.mymodule:make_env`
names a factory that returns an EnvSpec, usually built by `wrap_env` from two functions (README, "Your own
environment"; examples/target_matching.py is a worked one). The algorithm scripts import this file and
nothing else of this repository's (coordsum.py only for CoordSum); it imports no script.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Every suite's adapter feeds the networks what the authors' Mava wrappers fed theirs
# (tests/test_parity_authors.py compares them step by step; README, "How this follows the authors' code"):
# * obs [agents, obs_dim]: a one-hot agent id, then the suite's own view of each agent;
# * state [state_dim]: the centralised critic's input, all agents' views without ids (SMAX: its world state);
# * reward: the team reward whose episode sum Mava reports as the return;
# * done: the episode ended, for any reason; Mava's recurrent systems bootstrap nothing past it.
#   `terminated` marks only real terminal events, not time limits.
class TimeStep(NamedTuple):
    obs: jax.Array  # float32 [A, obs_dim], one-hot agent id first
    action_mask: jax.Array  # bool [A, num_actions]
    state: jax.Array  # float32 [state_dim]
    reward: jax.Array  # float32 [], team reward of the transition into this timestep
    done: jax.Array  # bool [], the episode ended here (terminated or truncated)
    terminated: jax.Array  # bool [], real terminal (no bootstrap)
    episode_return: jax.Array  # float32 [], running; the finished episode's where done
    episode_length: jax.Array  # int32 [], running; the finished episode's where done
    won: jax.Array  # float32 [], 1.0 where an episode ended in a win


class EnvSpec(NamedTuple):
    env_id: str
    suite: str
    num_agents: int
    obs_dim: int
    state_dim: int
    num_actions: int  # discrete: actions per agent; continuous: action dimension
    continuous: bool
    time_limit: int  # steps in an episode that runs to its time limit
    reset: Callable  # reset(key) -> (env_state, TimeStep)
    step: Callable  # step(key, env_state, actions) -> (env_state, TimeStep), auto-resets
    # step_many(keys [E], env_states, actions [E, ...]) -> jax.vmap(step)'s result, but the next
    # episodes' first timesteps are built only on steps where some episode ended
    step_many: Callable
    # animate(episode, path) writes a GIF of a recorded episode, on the host, outside anything jitted;
    # `episode` holds per step the inner state before it, the actions, the team reward and the done flag
    animate: Callable


class EnvState(NamedTuple):
    inner: object  # the wrapped env's own state
    episode_return: jax.Array  # float32 []
    episode_length: jax.Array  # int32 []


# Tasks of the paper (keys `<suite>-<task>`, connector ids carry their suite already). Values as in
# the authors' scenario configs (mava/configs/env/scenario/*.yaml).
# RWARE (column_height 8, sensor_range 1, time limit 500): (shelf_rows, shelf_columns, agents, queue)
_RWARE = {
    "tiny-2ag": (1, 3, 2, 2), "tiny-2ag-hard": (1, 3, 2, 1), "tiny-4ag": (1, 3, 4, 4),
    "tiny-4ag-easy": (1, 3, 4, 8), "tiny-4ag-hard": (1, 3, 4, 2), "small-4ag": (2, 3, 4, 4),
    "small-4ag-hard": (2, 3, 4, 2), "medium-4ag": (2, 5, 4, 4), "medium-4ag-hard": (2, 5, 4, 2),
    "medium-6ag": (2, 5, 6, 6), "large-4ag": (3, 5, 4, 4), "large-4ag-hard": (3, 5, 4, 2),
    "large-8ag": (3, 5, 8, 8), "large-8ag-hard": (3, 5, 8, 4), "xlarge-4ag": (4, 5, 4, 4),
    "xlarge-4ag-hard": (4, 5, 4, 2),
}
# LBF (max_agent_level 2, time limit 100): (grid_size, fov, agents, food, force_coop)
_LBF = {
    "2s-8x8-2p-2f-coop": (8, 2, 2, 2, True), "8x8-2p-2f-coop": (8, 8, 2, 2, True),
    "2s-10x10-3p-3f": (10, 2, 3, 3, False), "10x10-3p-3f": (10, 10, 3, 3, False),
    "15x15-3p-5f": (15, 15, 3, 5, False), "15x15-4p-3f": (15, 15, 4, 3, False),
    "15x15-4p-5f": (15, 15, 4, 5, False),
}
# Connector: (grid_size, agents, time limit)
_CONNECTOR = {
    "con-5x5x3a": (5, 3, 25), "con-7x7x5a": (7, 5, 49), "con-10x10x10a": (10, 10, 100),
    "con-15x15x23a": (15, 23, 225),
}
# MPE simple_spread_v3 (continuous actions, local_ratio 0.5, max_steps 25): agents = landmarks
_MPE = {"simple_spread_3ag": 3, "simple_spread_5ag": 5, "simple_spread_10ag": 10}
# SMAX HeuristicEnemySMAX maps (see_enemy_actions, walls_cause_death, attack_mode "closest")
_SMAX = ("2s3z", "3s5z", "5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "3s5z_vs_3s6z", "3s_vs_5z",
         "6h_vs_8z", "smacv2_5_units", "smacv2_10_units")
# CoordSum (coordsum.py, imported only when a CoordSum task is made): the authors' registered tasks; any
# other coordsum-<agents>x<actions> builds too.
_COORDSUM = ("3x10", "3x30", "5x20", "8x15")

ENV_IDS = (
    [f"rware-{t}" for t in _RWARE] + [f"lbf-{t}" for t in _LBF] + list(_CONNECTOR)
    + [f"mpe-{t}" for t in _MPE] + [f"smax-{t}" for t in _SMAX]
    + [f"coordsum-{t}" for t in _COORDSUM]
)


def _where(pred, a, b):
    """Pick pytree `a` where the scalar `pred` holds, else `b` (leafwise)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _strong(tree):
    """Drop weak types (some envs build their reset state from Python scalars), so that reset's
    and step's env states have identical types and jitted callers never retrace."""
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), tree)


def _with_agent_id(view):
    """Mava's AgentIDWrapper: one-hot agent id in front of each agent's (float) view."""
    n = view.shape[0]
    return jnp.concatenate([jnp.eye(n, dtype=jnp.float32), view.astype(jnp.float32)], axis=-1)


def _build(env_id, suite, num_agents, num_actions, continuous, time_limit, core_reset, core_step, animate,
           staggered_ends=False):
    """Wrap a suite's core functions into EnvSpec.reset/step/step_many with auto-reset and metrics.

    core_reset(key) -> (inner, view [A, d], mask [A, n], state [s])
    core_step(key, inner, actions) -> (inner, view, mask, state, reward, done, terminated, won),
        all describing the transition, before any reset.
    `view` is the suite's per-agent view without the agent id.
    staggered_ends: episodes often end before the time limit, at different steps in different
    environments (LBF, Connector, SMAX), so that nearly every step resets some environment.
    """

    def reset(key):
        inner, view, mask, state = core_reset(key)
        env_state = EnvState(_strong(inner), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        ts = TimeStep(
            obs=_with_agent_id(view), action_mask=mask.astype(bool),
            state=state.astype(jnp.float32), reward=jnp.zeros((), jnp.float32),
            done=jnp.zeros((), bool), terminated=jnp.zeros((), bool),
            episode_return=jnp.zeros((), jnp.float32), episode_length=jnp.zeros((), jnp.int32),
            won=jnp.zeros((), jnp.float32),
        )
        return env_state, ts

    def transition(key, env_state, actions):
        """One environment's step before any reset: (next fields, outcome, key for a reset)."""
        step_key, reset_key = jax.random.split(key)
        inner, view, mask, state, reward, done, terminated, won = core_step(
            step_key, env_state.inner, actions
        )
        outcome = (jnp.asarray(reward, jnp.float32), jnp.asarray(done, bool), jnp.asarray(terminated, bool),
                   jnp.asarray(won, bool))
        return (inner, view, mask, state), outcome, reset_key

    def restart(reset_key, done, fields):
        """Where the episode ended, the next episode's first fields replace the step's."""
        return _strong(_where(done, core_reset(reset_key), fields))

    def finish(env_state, fields, outcome):
        inner, view, mask, state = fields
        reward, done, terminated, won = outcome
        ep_return = env_state.episode_return + reward
        ep_length = env_state.episode_length + 1
        ts = TimeStep(
            obs=_with_agent_id(view), action_mask=mask.astype(bool),
            state=state.astype(jnp.float32), reward=reward, done=done,
            terminated=terminated & done,
            episode_return=ep_return, episode_length=ep_length,
            won=(won & done).astype(jnp.float32),
        )
        env_state = EnvState(
            _strong(inner),
            jnp.where(done, jnp.zeros((), jnp.float32), ep_return),
            jnp.where(done, jnp.zeros((), jnp.int32), ep_length),
        )
        return env_state, ts

    def step(key, env_state, actions):
        fields, outcome, reset_key = transition(key, env_state, actions)
        return finish(env_state, restart(reset_key, outcome[1], fields), outcome)

    def step_many(keys, env_states, actions):
        # Inside a vmap a cond runs both branches, so vmap(step) would reset every environment on
        # every step; one cond outside the vmap skips the resets on steps where no episode ended.
        # Suites whose episodes end at different steps gain nothing from it (README, "Where the time goes").
        if staggered_ends:
            return jax.vmap(step)(keys, env_states, actions)
        fields, outcome, reset_keys = jax.vmap(transition)(keys, env_states, actions)
        done = outcome[1]
        fields = jax.lax.cond(done.any(), lambda f: jax.vmap(restart)(reset_keys, done, f), _strong, fields)
        return jax.vmap(finish)(env_states, fields, outcome)

    # Shapes come from one abstract evaluation of reset (nothing is compiled or run).
    _, ts = jax.eval_shape(reset, jax.random.PRNGKey(0))
    return EnvSpec(
        env_id=env_id, suite=suite, num_agents=num_agents, obs_dim=int(ts.obs.shape[-1]),
        state_dim=int(ts.state.shape[-1]), num_actions=num_actions, continuous=continuous,
        time_limit=time_limit, reset=reset, step=step, step_many=step_many, animate=animate,
    )


def _episode_states(episode) -> list:
    """The inner states of a recorded episode up to its last step (the state after that step is already
    the next episode's first: the adapter resets inside step)."""
    done = np.asarray(episode["done"])
    length = int(np.argmax(done)) + 1 if done.any() else len(done)
    return [jax.tree.map(lambda x: x[t], episode["inner"]) for t in range(length)]


def _gif_output():
    """matplotlib without a display, writing GIFs with Pillow (no ffmpeg needed)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["animation.writer"] = "pillow"


def _jumanji_core(env, make_view, team_reward, terminated_fn, won_fn):
    """Core functions for a jumanji multi-agent env (RWARE, LBF, Connector)."""

    def core_reset(key):
        inner, ts = env.reset(key)
        view = make_view(inner, ts.observation)
        return inner, view, ts.observation.action_mask, view.reshape(-1)

    def core_step(key, inner, actions):
        del key  # jumanji envs keep their randomness in their state
        nxt, ts = env.step(inner, actions)
        view = make_view(nxt, ts.observation)
        done = ts.last()
        return (nxt, view, ts.observation.action_mask, view.reshape(-1),
                team_reward(ts.reward), done, terminated_fn(nxt, ts), won_fn(nxt))

    def animate(episode, path):
        import matplotlib.pyplot as plt

        _gif_output()
        env.animate(_episode_states(episode), interval=150, save_path=path)
        plt.close("all")

    return core_reset, core_step, animate


def _connector_views(inner, grid_size, num_agents):
    """Mava's VectorConnectorWrapper view, computed without per-agent loops: per agent,
    [own head (row, col) / grid_size**2, own target (row, col) / grid_size**2 ((0, 0) once
    connected), 5x5 window of blockers (heads 1, paths -1, else 0, outside the grid 1),
    5x5 window of targets (own 1, others -1, else 0, outside the grid 1)] -> 54 floats.
    Grid cells: 0 empty; for agent i: 1 + 3i path, 2 + 3i head, 3 + 3i target."""
    grid = inner.grid
    pos, tgt = inner.agents.position, inner.agents.target  # int32 [A, 2] (row, col)
    kind = grid % 3
    blockers = jnp.where((grid > 0) & (kind == 2), 1, jnp.where(kind == 1, -1, 0))
    owner = jnp.where((grid > 0) & (kind == 0), grid // 3 - 1, -1)  # whose target, -1 none
    blockers = jnp.pad(blockers, 2, constant_values=1)
    owner = jnp.pad(owner, 2, constant_values=-2)  # -2: outside the grid
    rows = pos[:, 0, None, None] + jnp.arange(5)[None, :, None]  # padded coords of the window
    cols = pos[:, 1, None, None] + jnp.arange(5)[None, None, :]
    block_win = blockers[rows, cols]
    own_win = owner[rows, cols]
    ids = jnp.arange(num_agents)[:, None, None]
    target_win = jnp.where((own_win == -2) | (own_win == ids), 1, jnp.where(own_win >= 0, -1, 0))
    connected = jnp.all(pos == tgt, axis=-1, keepdims=True)
    scale = float(grid_size * grid_size)  # Mava divides coordinates by grid.size (sic)
    return jnp.concatenate([
        pos / scale, jnp.where(connected, 0, tgt) / scale,
        block_win.reshape(num_agents, 25), target_win.reshape(num_agents, 25),
    ], axis=-1).astype(jnp.float32)


def _make_rware(env_id, task):
    from jumanji.environments import RobotWarehouse
    from jumanji.environments.routing.robot_warehouse import utils as rware_utils
    from jumanji.environments.routing.robot_warehouse.generator import RandomGenerator

    rows, cols, n, queue = _RWARE[task]
    generator = RandomGenerator(shelf_rows=rows, shelf_columns=cols, column_height=8,
                                num_agents=n, sensor_range=1, request_queue_size=queue)
    env = RobotWarehouse(generator=generator, time_limit=500)
    ids = jnp.arange(n)

    def terminated(nxt, ts):
        # jumanji ends RWARE on a collision or at the horizon, both with discount 0; only the
        # collision is a real terminal.
        collide = jax.vmap(rware_utils.is_collision, in_axes=(None, 0, 0))
        return jnp.any(collide(nxt.grid, nxt.agents, ids))

    core = _jumanji_core(
        env, make_view=lambda s, o: o.agents_view.astype(jnp.float32),
        team_reward=lambda r: r,  # already the shared team reward (scalar)
        terminated_fn=terminated, won_fn=lambda s: jnp.zeros((), bool))
    return _build(env_id, "rware", n, 5, False, 500, *core)


def _make_lbf(env_id, task):
    from jumanji.environments import LevelBasedForaging
    from jumanji.environments.routing.lbf.generator import RandomGenerator

    grid, fov, n, food, coop = _LBF[task]
    generator = RandomGenerator(grid_size=grid, fov=fov, num_agents=n, num_food=food,
                                max_agent_level=2, force_coop=coop)
    env = LevelBasedForaging(generator=generator, time_limit=100)
    core = _jumanji_core(
        env, make_view=lambda s, o: o.agents_view.astype(jnp.float32),
        team_reward=jnp.sum,  # Mava's aggregate_rewards
        # jumanji: termination (discount 0) once all food is eaten, truncation at the limit
        terminated_fn=lambda s, ts: jnp.all(ts.discount == 0),
        won_fn=lambda s: jnp.zeros((), bool))
    return _build(env_id, "lbf", n, 6, False, 100, *core, staggered_ends=True)


def _make_connector(env_id, task):
    # The paper ran Connector-v2, whose board generator jumanji 1.1.2 keeps as LegacyRandomWalkGenerator
    # (README, "How this follows the authors' code"). Views are Mava's flat per-agent vectors.
    from jumanji.environments import Connector
    from jumanji.environments.routing.connector.generator import LegacyRandomWalkGenerator

    g, n, limit = _CONNECTOR[task]
    env = Connector(generator=LegacyRandomWalkGenerator(grid_size=g, num_agents=n),
                    time_limit=limit)
    core = _jumanji_core(
        env, make_view=lambda s, o: _connector_views(s, g, n),
        team_reward=jnp.sum,  # Mava's aggregate_rewards
        terminated_fn=lambda s, ts: jnp.all(ts.discount == 0),
        won_fn=lambda s: jnp.all(jnp.all(s.agents.position == s.agents.target, axis=-1)))
    return _build(env_id, "connector", n, 5, False, limit, *core, staggered_ends=True)


def _jaxmarl_core(env, agents, make_state, make_mask, team_reward, terminated_fn, won_fn, actions_fn,
                  animate):
    """Core functions for a jaxmarl env, stepping with `step_env` (no reset inside) so that the
    ended episode's state stays visible; the adapter resets once per step instead of jaxmarl's
    reset plus Mava's second one."""

    def stack(d):
        return jnp.stack([d[a] for a in agents]).astype(jnp.float32)

    def core_reset(key):
        obs, inner = env.reset(key)
        views = stack(obs)
        return inner, views, make_mask(inner), make_state(obs, views)

    def core_step(key, inner, actions):
        obs, nxt, reward, dones, _ = env.step_env(key, inner, actions_fn(actions))
        rewards = jnp.stack([reward[a] for a in agents]).astype(jnp.float32)
        views = stack(obs)
        return (nxt, views, make_mask(nxt), make_state(obs, views), team_reward(rewards),
                dones["__all__"], terminated_fn(nxt), won_fn(rewards))

    return core_reset, core_step, animate


def _make_mpe(env_id, task):
    import jaxmarl

    n = _MPE[task]
    env = jaxmarl.make("MPE_simple_spread_v3", num_agents=n, num_landmarks=n, local_ratio=0.5,
                       action_type="Continuous", max_steps=25)
    agents = list(env.agents)
    act_dim = int(env.action_space(agents[0]).shape[0])  # 5: [no-op, -x, +x, -y, +y]

    def animate(episode, path):
        import contextlib
        import io

        import matplotlib.pyplot as plt
        from jaxmarl.environments.mpe import MPEVisualizer

        _gif_output()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints whether the agents communicate
            MPEVisualizer(env, _episode_states(episode)).animate(save_fname=path, view=False)
        plt.close("all")

    def actions_fn(actions):
        # Mava hands its tanh-squashed actions in [-1, 1] to the env unchanged (no rescaling to
        # the declared Box [0, 1]); the env uses (a2 - a1, a4 - a3) * accel without clipping.
        return {a: actions[i] for i, a in enumerate(agents)}

    core = _jaxmarl_core(
        env, agents,
        # The state is read off the same array as the views: built apart, XLA may round them apart.
        make_state=lambda obs, views: views.reshape(-1),
        make_mask=lambda s: jnp.ones((n, act_dim), bool),
        team_reward=jnp.mean,  # Mava's episode return: mean of the per-agent rewards
        terminated_fn=lambda s: jnp.zeros((), bool),  # MPE episodes only end at the limit
        won_fn=lambda r: jnp.zeros((), bool), actions_fn=actions_fn, animate=animate)
    # jaxmarl ends an MPE episode when the pre-step counter reaches max_steps: 26 transitions.
    return _build(env_id, "mpe", n, act_dim, True, 26, *core)


def _make_smax(env_id, task):
    import jaxmarl
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(task),
                       see_enemy_actions=True, walls_cause_death=True, attack_mode="closest")
    agents = list(env.agents)
    n = len(agents)
    num_actions = int(env.action_space(agents[0]).n)

    def animate(episode, path):
        # Drawn here rather than by jaxmarl's SMAXVisualizer, which compiles conds for every frame it draws
        # (over ten minutes for one 2s3z episode on a CPU): one frame per step, allies blue, enemies red,
        # each unit at its size, paler as it loses health.
        import matplotlib.pyplot as plt
        from matplotlib.animation import FuncAnimation
        from matplotlib.patches import Circle

        _gif_output()
        states = [jax.tree.map(np.asarray, s.state) for s in _episode_states(episode)]
        radius, health = np.asarray(env.unit_type_radiuses), np.asarray(env.unit_type_health)
        fig, ax = plt.subplots(figsize=(5, 5))

        def draw(t):
            s = states[t]
            ax.clear()
            for pos, alive, team, hp, kind in zip(s.unit_positions, s.unit_alive, s.unit_teams, s.unit_health,
                                                  s.unit_types):
                if alive:
                    ax.add_patch(Circle(pos, radius[kind], color="tab:blue" if team == 0 else "tab:red",
                                        alpha=0.25 + 0.75 * float(hp) / health[kind]))
            ax.set_xlim(0, env.map_width)
            ax.set_ylim(0, env.map_height)
            ax.set_aspect("equal")
            ax.set_title(f"{task}, step {t + 1}: {int(s.unit_alive[:n].sum())} allies (blue), "
                         f"{int(s.unit_alive[n:].sum())} enemies alive", fontsize=9)

        FuncAnimation(fig, draw, frames=len(states), interval=150).save(path)
        plt.close(fig)

    def terminated(s):
        alive = s.state.unit_alive
        return ~jnp.any(alive[:n]) | ~jnp.any(alive[n:])  # one side wiped out

    core = _jaxmarl_core(
        env, agents,
        make_state=lambda obs, views: obs["world_state"],
        make_mask=lambda s: jnp.stack([env.get_avail_actions(s)[a] for a in agents]).astype(bool),
        team_reward=jnp.mean,  # all allies get the same reward
        terminated_fn=terminated,
        won_fn=lambda r: jnp.all(r >= 1.0),  # Mava: episode end with the win bonus
        actions_fn=lambda a: {name: a[i] for i, name in enumerate(agents)}, animate=animate)
    # jaxmarl SMAX tests its time limit on the pre-step counter: at most max_steps + 1 steps.
    return _build(env_id, "smax", n, num_actions, False, int(env.max_steps) + 1, *core, staggered_ends=True)


def _make_coordsum(env_id, task):
    try:
        import coordsum
    except ImportError:
        raise ValueError(
            f"--env-id {env_id} needs coordsum.py beside envs.py: copy it from the repository"
        ) from None
    n, num_actions, maxval = coordsum.parse_task(task)
    env = coordsum.CoordSum(num_agents=n, num_actions=num_actions, maxval=maxval, time_limit=100)
    mask = jnp.ones((n, num_actions), bool)

    def core_reset(key):
        inner, obs = env.reset(key)  # obs: float32 [A, 1], the raw target value
        return inner, obs, mask, obs.reshape(-1)

    def core_step(key, inner, actions):
        inner, obs, reward, done = env.step(key, inner, actions)
        # Global state: Mava's CoordSumWrapper concatenates the agents' raw views (A copies of
        # the target). The episode always ends at the horizon: treated as a time limit.
        return (inner, obs, mask, obs.reshape(-1), reward, done, jnp.zeros((), bool),
                jnp.zeros((), bool))

    def animate(episode, path):
        _gif_output()
        coordsum.animate(env, _episode_states(episode), episode["action"], episode["reward"], path)

    return _build(env_id, "coordsum", n, num_actions, False, 100, core_reset, core_step, animate)


def _is_coordsum_size(env_id: str) -> bool:
    """Any `coordsum-<agents>x<actions>` builds, not only the paper's four."""
    match = re.fullmatch(r"coordsum-(\d+)x(\d+)", env_id)
    return match is not None and int(match.group(1)) >= 1


def headline_metric(suite: str) -> str:
    """The metric the paper reports per suite (Table 1). The best parameters are picked by evaluation return on
    every suite, SMAX included, as the authors' code does."""
    return "win_rate" if suite == "smax" else "episode_return"


def eval_metric_names(suite: str) -> tuple[str, ...]:
    """What evaluation reports: return and length everywhere, win rate where a suite defines a win."""
    win = ("win_rate",) if suite in ("smax", "connector") else ()
    return ("episode_return", "episode_length") + win


# ---------------------------------------------------------------------------------------------
# Your own environment: --env-id mypackage.mymodule:make_env
# ---------------------------------------------------------------------------------------------
def wrap_env(name: str, num_agents: int, num_actions: int, time_limit: int, reset: Callable, step: Callable,
             continuous: bool = False, animate: Callable | None = None) -> EnvSpec:
    """An EnvSpec from your environment's two pure functions, with what every suite gets: the one-hot
    agent id in front of each observation, the running episode return and length, and automatic reset
    inside step (where `done` holds, the step returns the next episode's first timestep).

    reset(key) -> (env_state, obs [A, d] float, action_mask [A, num_actions] bool, state [s] float)
    step(key, env_state, actions) -> (env_state, obs, action_mask, state, reward [] float, done [] bool,
        terminated [] bool, won [] bool), describing the transition before any reset; `actions` are int32
        [A] (discrete) or float32 [A, num_actions] in [-1, 1] (continuous); `terminated` is a real end
        (nothing bootstrapped past it), `done` any end, the time limit included; `won` is reported by
        suites with a win condition only, so yours may return False.
    time_limit: the longest episode, in steps (evaluation runs every episode this long).
    animate(episode, path): optional, for --capture-video (see the suites above)."""
    def no_video(episode, path):
        raise OSError(f"{name} has no drawing: give wrap_env an animate function")

    return _build(name, "custom", num_agents, num_actions, continuous, time_limit, reset, step,
                  animate or no_video)


def check_env(spec: EnvSpec, env_id: str) -> EnvSpec:
    """Traces one reset and one step abstractly (nothing runs) and compares every shape and dtype with
    what the spec declares, so that a mismatch is one line here, not an error deep inside a compile."""
    def fail(what):
        raise ValueError(f"--env-id {env_id!r}: {what}")

    try:
        state, ts = jax.eval_shape(spec.reset, jax.random.PRNGKey(0))
        if spec.continuous:
            actions = jax.ShapeDtypeStruct((spec.num_agents, spec.num_actions), jnp.float32)
        else:
            actions = jax.ShapeDtypeStruct((spec.num_agents,), jnp.int32)
        _, next_ts = jax.eval_shape(spec.step, jax.random.PRNGKey(0), state, actions)
    except Exception as error:  # any error of the user's code, while tracing
        fail(f"reset or step fails on {spec.num_agents} agents' actions: "
             f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    want = {"obs": (spec.num_agents, spec.obs_dim), "action_mask": (spec.num_agents, spec.num_actions),
            "state": (spec.state_dim,), "reward": (), "done": (), "terminated": (), "episode_return": (),
            "episode_length": (), "won": ()}
    for name, shape in want.items():
        for where, got in (("reset", getattr(ts, name)), ("step", getattr(next_ts, name))):
            if got.shape != shape:
                fail(f"{where} gives {name} of shape {got.shape}, expected {shape} "
                     f"({spec.num_agents} agents, {spec.num_actions} actions)")
            if got.dtype != getattr(ts, name).dtype:
                fail(f"step gives {name} as {got.dtype}, reset as {getattr(ts, name).dtype}")
    return spec


def _from_factory(env_id: str) -> EnvSpec:
    """--env-id module:function: import the module from where the script runs and call the function."""
    module_name, _, function = env_id.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--env-id {env_id!r} names no factory that can be imported ({error}); give "
                         "module:function, the module importable from where the script runs") from None
    try:
        spec = factory()
    except Exception as error:  # the user's code, before any compiling
        raise ValueError(f"--env-id {env_id!r}: {function}() raised {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(spec, EnvSpec):
        raise ValueError(f"--env-id {env_id!r}: {function}() returned a {type(spec).__name__}, not an "
                         "envs.EnvSpec; build one with envs.wrap_env (README, \"Your own environment\")")
    return check_env(spec, env_id)


def make_env(env_id: str) -> EnvSpec:
    """Build the adapter for `env_id` (see ENV_IDS, or module:function for your own); an unknown id or a
    factory that does not fit raises ValueError with one line."""
    if ":" in env_id:
        return _from_factory(env_id)
    if env_id not in ENV_IDS and not _is_coordsum_size(env_id):
        close = difflib.get_close_matches(env_id, ENV_IDS, n=5, cutoff=0.4)
        rest = [e for e in ENV_IDS if e not in close]
        raise ValueError(
            f"unknown --env-id {env_id!r}; valid ids, closest first: {', '.join(close + rest)}; or "
            "module:function for your own environment"
        )
    if env_id.startswith("con-"):
        return _make_connector(env_id, env_id)
    suite, task = env_id.split("-", 1)
    makers = {"rware": _make_rware, "lbf": _make_lbf, "mpe": _make_mpe, "smax": _make_smax,
              "coordsum": _make_coordsum}
    return makers[suite](env_id, task)
