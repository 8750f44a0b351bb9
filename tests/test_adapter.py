"""The environment adapter (envs.py): shapes, ids, auto-reset, metrics, and a user's own environment."""
import difflib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coordsum
import envs as adapter  # the adapter of every suite, in one file

TASKS_JSON = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark", "reference", "tasks.json")

# One task per suite, with the number of steps each rollout runs (covers the time limit).
SUITE_TASKS = {
    "coordsum": ("coordsum-3x10", 205),
    "rware": ("rware-tiny-2ag", 505),
    "lbf": ("lbf-2s-8x8-2p-2f-coop", 105),
    "connector": ("con-5x5x3a", 55),
    "mpe": ("mpe-simple_spread_3ag", 55),
    "smax": ("smax-2s3z", 110),
}
NUM_ENVS = 4  # envs 0, 1 act at random; envs 2, 3 idle (no-op / zero force): reach time limits
EXPECTED_DIMS = {  # (num_agents, obs_dim, state_dim, num_actions, continuous, time_limit)
    "coordsum-3x10": (3, 4, 3, 10, False, 100),
    "rware-tiny-2ag": (2, 68, 132, 5, False, 500),
    "lbf-2s-8x8-2p-2f-coop": (2, 14, 24, 6, False, 100),
    "con-5x5x3a": (3, 57, 162, 5, False, 25),
    "mpe-simple_spread_3ag": (3, 21, 54, 5, True, 26),
    "smax-2s3z": (5, 132, 120, 10, False, 101),
}


def _env_id(key):
    suite, task = key.split(":")
    return task if suite == "connector" else f"{suite}-{task}"


def _random_actions(spec, key, ts, noop):
    if spec.continuous:
        a = jax.random.uniform(key, (spec.num_agents, spec.num_actions), minval=-1.0, maxval=1.0)
        return jnp.where(noop, 0.0, a)
    logits = jnp.where(ts.action_mask, 0.0, -jnp.inf)
    a = jax.random.categorical(key, logits).astype(jnp.int32)
    # idle action: no-op (0) in RWARE, LBF, Connector; stop (4) in SMAX; 0 in CoordSum
    return jnp.where(noop, 4 if spec.suite == "smax" else 0, a)


def _rollout(spec, steps):
    def run(key, noop):
        k0, k1 = jax.random.split(key)
        es, ts = spec.reset(k0)

        def body(carry, k):
            es, ts = carry
            ka, ks = jax.random.split(k)
            es, ts = spec.step(ks, es, _random_actions(spec, ka, ts, noop))
            return (es, ts), (es, ts, ks)

        _, (ess, tss, keys) = jax.lax.scan(body, (es, ts), jax.random.split(k1, steps))
        return ts, tss, ess, keys

    noop = jnp.arange(NUM_ENVS) >= NUM_ENVS // 2
    return jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(42), NUM_ENVS), noop)


@pytest.fixture(scope="module", params=list(SUITE_TASKS))
def rollout(request):
    env_id, steps = SUITE_TASKS[request.param]
    spec = adapter.make_env(env_id)
    ts0, tss, ess, keys = _rollout(spec, steps)
    return spec, jax.device_get(ts0), jax.device_get(tss), ess, keys


def test_spec_dims(rollout):
    spec = rollout[0]
    got = (spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions, spec.continuous,
           spec.time_limit)
    assert got == EXPECTED_DIMS[spec.env_id]


def test_shapes_and_dtypes(rollout):
    spec, ts0, tss, _, _ = rollout
    A = spec.num_agents
    for ts, lead in ((ts0, (NUM_ENVS,)), (tss, (NUM_ENVS, tss.reward.shape[1]))):
        assert ts.obs.shape == lead + (A, spec.obs_dim) and ts.obs.dtype == np.float32
        assert ts.action_mask.shape == lead + (A, spec.num_actions)
        assert ts.action_mask.dtype == np.bool_
        assert ts.state.shape == lead + (spec.state_dim,) and ts.state.dtype == np.float32
        for name, dtype in (("reward", np.float32), ("done", np.bool_), ("terminated", np.bool_),
                            ("episode_return", np.float32), ("episode_length", np.int32),
                            ("won", np.float32)):
            x = getattr(ts, name)
            assert x.shape == lead and x.dtype == dtype, name
        assert np.all(np.isfinite(ts.obs)) and np.all(np.isfinite(ts.state))


def test_no_dtype_or_weak_type_drift(rollout):
    """reset's and step's outputs have identical avals (shape, dtype, weak_type), so the
    env state and timestep can be carried through lax.scan without retracing."""
    spec = rollout[0]
    key = jax.random.PRNGKey(0)
    es, ts = jax.eval_shape(spec.reset, key)
    actions = jax.ShapeDtypeStruct(
        (spec.num_agents, spec.num_actions) if spec.continuous else (spec.num_agents,),
        jnp.float32 if spec.continuous else jnp.int32)
    es2, ts2 = jax.eval_shape(spec.step, key, es, actions)
    avals = lambda t: [(x.shape, x.dtype, getattr(x, "weak_type", False))
                       for x in jax.tree.leaves(t)]
    assert jax.tree.structure(es) == jax.tree.structure(es2)
    assert avals(es) == avals(es2)
    assert avals(ts) == avals(ts2)
    assert not any(w for _, _, w in avals(ts2))


def test_step_many_is_vmapped_step(rollout):
    """The batched step gives what vmap(step) gives, on steps where no episode, some or every episode
    ended. Suites whose episodes end together put the reset in a cond outside the vmap; the
    staggered ones (LBF, Connector, SMAX) are vmap(step) itself."""
    spec = rollout[0]
    step_all = jax.vmap(spec.step)
    noop = jnp.arange(NUM_ENVS) >= NUM_ENVS // 2

    def body(carry, key):
        es, ts = carry
        ka, ks = jax.random.split(key)
        actions = jax.vmap(_random_actions, (None, 0, 0, 0))(spec, jax.random.split(ka, NUM_ENVS), ts, noop)
        keys = jax.random.split(ks, NUM_ENVS)
        want, got = step_all(keys, es, actions), spec.step_many(keys, es, actions)
        assert jax.tree.structure(want) == jax.tree.structure(got)
        # Floats may differ in the last bit: XLA fuses the two computations differently.
        same = jnp.stack([jnp.allclose(a, b, rtol=1e-5, atol=1e-6) if jnp.issubdtype(a.dtype, jnp.floating)
                          else jnp.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got))])
        return want, (same.all(), want[1].done.sum())

    _, steps = SUITE_TASKS[spec.suite]
    start = jax.vmap(spec.reset)(jax.random.split(jax.random.PRNGKey(7), NUM_ENVS))
    _, (same, n_done) = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.PRNGKey(8), steps)))(start)
    assert bool(same.all()), f"step_many differs from vmap(step) at steps {np.flatnonzero(~np.asarray(same))[:5]}"
    assert (n_done == 0).any() and (n_done > 0).any()  # for the cond: both branches ran


def test_agent_id_and_masks(rollout):
    spec, ts0, tss, _, _ = rollout
    A = spec.num_agents
    for ts in (ts0, tss):
        # Mava's AgentIDWrapper puts the one-hot id in front of each agent's view.
        assert np.array_equal(ts.obs[..., :A], np.broadcast_to(np.eye(A), ts.obs[..., :A].shape))
        assert ts.action_mask.any(axis=-1).all()  # at least one valid action per agent
        if spec.continuous:
            assert ts.action_mask.all()


def test_global_state(rollout):
    spec, ts0, tss, _, _ = rollout
    A = spec.num_agents
    if spec.suite == "smax":  # SMAX: the env's world_state
        assert not np.allclose(tss.state, 0.0)
        return
    # Elsewhere: the concatenation of all agents' views, without the agent ids.
    for ts in (ts0, tss):
        views = ts.obs[..., A:]
        assert np.array_equal(ts.state, views.reshape(views.shape[:-2] + (-1,)))


def test_episode_metrics_and_auto_reset(rollout):
    spec, _, tss, _, _ = rollout
    T = tss.reward.shape[1]
    for e in range(NUM_ENVS):
        ret, length, ends = 0.0, 0, 0
        for t in range(T):
            ret += float(tss.reward[e, t])
            length += 1
            assert tss.episode_length[e, t] == length
            np.testing.assert_allclose(tss.episode_return[e, t], ret, rtol=1e-5, atol=1e-4)
            assert length <= spec.time_limit
            if tss.terminated[e, t]:
                assert tss.done[e, t]
            if tss.won[e, t]:
                assert tss.done[e, t] and tss.won[e, t] == 1.0
            if tss.done[e, t]:
                if not tss.terminated[e, t]:  # truncations happen only at the time limit
                    assert length == spec.time_limit
                ret, length, ends = 0.0, 0, ends + 1
            else:
                assert length < spec.time_limit  # the time limit always ends the episode
        if e >= NUM_ENVS // 2 and spec.suite != "smax":
            # no-op agents: nothing terminal happens, the episode runs to the time limit
            first = int(np.argmax(tss.done[e]))
            assert tss.done[e].any() and first == spec.time_limit - 1
            assert not tss.terminated[e, first]
        assert ends >= 1 or spec.suite == "smax"
    if spec.suite in ("rware", "lbf", "mpe", "coordsum"):
        assert not tss.won.any()


def test_auto_reset_returns_first_timestep(rollout):
    """Where an episode ended, obs/mask/state are those of a fresh reset (with the step's
    reset key), while reward/done describe the ended transition."""
    spec, _, tss, _, keys = rollout
    e, t = np.argwhere(tss.done)[0]
    _, first = jax.jit(spec.reset)(jax.random.split(keys[e, t])[1])
    # (allclose: the fused rollout and a lone reset may round floats differently)
    np.testing.assert_allclose(tss.obs[e, t], first.obs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tss.action_mask[e, t], first.action_mask)
    np.testing.assert_allclose(tss.state[e, t], first.state, rtol=1e-5, atol=1e-6)
    if spec.suite == "mpe":  # fresh MPE episodes start at rest: zero own velocity
        A = spec.num_agents
        assert np.all(tss.obs[e, t, :, A:A + 2] == 0.0)
        assert np.any(tss.obs[e, t - 1, :, A:A + 2] != 0.0)


def _naive_connector_views(grid, num_agents):
    """Slow reference of Mava's VectorConnectorWrapper view, from the grid alone: per agent,
    renumber agents so that it is agent 0, find its head (2) and target (3), and read 5x5
    windows (fov 2) of blockers and targets, padding outside the grid with 1."""
    out = []
    for i in range(num_agents):
        g = grid.astype(np.int64).copy()
        agent_cells = g >= 1
        g[agent_cells] = (g[agent_cells] - 1 - 3 * i) % (3 * num_agents) + 1
        blockers = np.pad(np.where(g % 3 == 2, 1, np.where(g % 3 == 1, -1, 0)), 2, constant_values=1)
        targets = np.where(g == 3, 1, np.where((g % 3 == 0) & (g != 0), -1, 0))
        targets = np.pad(targets, 2, constant_values=1)
        head = np.argwhere(g == 2)
        tgt = np.argwhere(g == 3)
        r, c = head[0]
        tr, tc = tgt[0] if len(tgt) else (0, 0)
        out.append(np.concatenate([
            np.array([r, c, tr, tc]) / grid.size,
            blockers[r:r + 5, c:c + 5].ravel(), targets[r:r + 5, c:c + 5].ravel()]))
    return np.stack(out).astype(np.float32)


def test_connector_views_match_reference(rollout):
    spec, _, tss, ess, _ = rollout
    if spec.suite != "connector":
        pytest.skip("connector only")
    grids = np.asarray(ess.inner.grid)
    A = spec.num_agents
    connected_seen = False
    for e in range(NUM_ENVS):
        for t in range(0, grids.shape[1], 3):
            ref = _naive_connector_views(grids[e, t], A)
            np.testing.assert_allclose(tss.obs[e, t, :, A:], ref, atol=1e-6)
            connected_seen |= bool(np.any(ess.inner.agents.connected[e, t]))
    assert connected_seen  # the reference also covered agents whose target is gone


def test_smax_win_flag_and_time_limit():
    """Envs 0-3: enemies with almost no health and allies that attack: allies win and `won`
    flags exactly those ends. Envs 4-5: every unit invulnerable and allies idle: the episode
    runs to jaxmarl's limit (max_steps + 1 = 101 steps) and is a truncation."""
    spec = adapter.make_env("smax-2s3z")
    A = spec.num_agents

    def run(key, idle):
        k0, k1 = jax.random.split(key)
        es, ts = spec.reset(k0)
        s = es.inner.state
        health = jnp.where(idle, jnp.full_like(s.unit_health, 1e9), s.unit_health.at[A:].set(1e-3))
        es = es._replace(inner=es.inner.replace(state=s.replace(unit_health=health)))

        def body(c, k):
            es, ts = c
            ka, ks = jax.random.split(k)
            idx = jnp.arange(spec.num_actions)
            logits = jnp.where(ts.action_mask & (idx >= 5), 10.0, jnp.where(ts.action_mask, 0.0, -jnp.inf))
            act = jnp.where(idle, 4, jax.random.categorical(ka, logits).astype(jnp.int32))  # 4: stop
            es, ts = spec.step(ks, es, act)
            return (es, ts), ts

        return jax.lax.scan(body, (es, ts), jax.random.split(k1, 105))[1]

    idle = jnp.arange(6) >= 4
    tss = jax.device_get(jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 6), idle))
    first_end = np.argmax(tss.done, axis=1)
    assert tss.done.any(axis=1).all()
    fight = np.arange(4)
    assert tss.won[fight, first_end[:4]].sum() >= 1  # the weakened enemy team loses
    assert np.all(tss.terminated[fight, first_end[:4]])
    assert np.all(tss.reward[tss.won > 0] >= 1.0)
    assert np.all(tss.won[~tss.done] == 0)
    assert np.all(first_end[4:] == spec.time_limit - 1) and spec.time_limit == 101
    assert not tss.terminated[4:, first_end[4:]].any() and not tss.won[4:].any()


def test_unknown_env_id_lists_close_matches_first():
    with pytest.raises(ValueError) as err:
        adapter.make_env("rware-tiny-2agg")
    msg = str(err.value)
    listed, own = msg.split("closest first: ")[1].split("; or ")
    listed = listed.split(", ")
    assert own == "module:function for your own environment"
    assert sorted(listed) == sorted(adapter.ENV_IDS)
    close = difflib.get_close_matches("rware-tiny-2agg", adapter.ENV_IDS, n=5, cutoff=0.4)
    assert listed[: len(close)] == close and listed[0] == "rware-tiny-2ag"
    with pytest.raises(ValueError, match="smax-2s3z"):
        adapter.make_env("smax-2s3y")


def test_all_paper_tasks_build():
    tasks = json.load(open(TASKS_JSON))
    assert len(tasks) == 44
    assert sorted(_env_id(k) for k in tasks) == sorted(adapter.ENV_IDS)
    for key, task in tasks.items():
        env_id = _env_id(key)
        cfg, kw = task["task_config"], task["env_kwargs"]
        name = task["task"]
        # the adapter's task tables agree with the authors' scenario configs
        if task["suite"] == "rware":
            assert adapter._RWARE[name] == (cfg["shelf_rows"], cfg["shelf_columns"],
                                            cfg["num_agents"], cfg["request_queue_size"])
            assert cfg["column_height"] == 8 and cfg["sensor_range"] == 1 and kw["time_limit"] == 500
        elif task["suite"] == "lbf":
            assert adapter._LBF[name] == (cfg["grid_size"], cfg["fov"], cfg["num_agents"],
                                          cfg["num_food"], cfg["force_coop"])
            assert cfg["max_agent_level"] == 2 and kw["time_limit"] == 100
        elif task["suite"] == "connector":
            assert adapter._CONNECTOR[name] == (cfg["grid_size"], cfg["num_agents"], kw["time_limit"])
        elif task["suite"] == "mpe":
            assert adapter._MPE[name] == cfg["num_agents"] == cfg["num_landmarks"]
            assert cfg["local_ratio"] == 0.5 and kw == {"action_type": "Continuous", "max_steps": 25}
        elif task["suite"] == "smax":
            assert name in adapter._SMAX and cfg["map_name"] == name
            assert kw == {"attack_mode": "closest", "see_enemy_actions": True, "walls_cause_death": True}
        else:
            assert name in adapter._COORDSUM
            assert coordsum.parse_task(name) == (cfg["num_agents"], cfg["num_actions"], cfg["maxval"])
            assert kw["time_limit"] == 100
        spec = adapter.make_env(env_id)
        assert spec.env_id == env_id and spec.obs_dim > spec.num_agents and spec.state_dim > 0
        if "num_agents" in cfg:
            assert spec.num_agents == cfg["num_agents"]
    # one real reset for the largest Connector and SMAX tasks
    for env_id in ("con-15x15x23a", "smax-27m_vs_30m"):
        spec = adapter.make_env(env_id)
        _, ts = jax.jit(spec.reset)(jax.random.PRNGKey(1))
        assert ts.obs.shape == (spec.num_agents, spec.obs_dim)
        assert ts.state.shape == (spec.state_dim,) and ts.action_mask.any(-1).all()


def test_any_coordsum_size_builds():
    spec = adapter.make_env("coordsum-4x6")
    assert (spec.num_agents, spec.num_actions, spec.obs_dim) == (4, 6, 5)
    with pytest.raises(ValueError, match="closest first"):
        adapter.make_env("coordsum-4y6")
