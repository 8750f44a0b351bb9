"""PPO pieces shared by the recurrent baselines: GAE, losses, GRU resets (same inputs, every script)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SCRIPTS = ["ippo", "mappo", "magpo_sable", "ctds", "magpo_mat"]


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def gae_reference(rewards, values, dones, last_value, gamma, lam):
    """Plain Python loop over time, one environment at a time."""
    T, E = rewards.shape
    adv = np.zeros((T, E))
    for e in range(E):
        running, next_value = 0.0, last_value[e]
        for t in reversed(range(T)):
            not_done = 1.0 - dones[t, e]
            delta = rewards[t, e] + gamma * next_value * not_done - values[t, e]
            running = delta + gamma * lam * not_done * running
            adv[t, e] = running
            next_value = values[t, e]
    return adv


def test_gae_matches_python_loop(script):
    rng = np.random.default_rng(0)
    T, E = 9, 4
    rewards, values = rng.normal(size=(T, E)), rng.normal(size=(T, E))
    dones = rng.random((T, E)) < 0.25
    last_value = rng.normal(size=E)
    adv, target = script.gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(dones),
                             jnp.asarray(last_value, jnp.float32), 0.97, 0.9)
    expected = gae_reference(rewards, values, dones.astype(float), last_value, 0.97, 0.9)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, expected + values, rtol=1e-5, atol=1e-5)


def test_gae_single_step_by_hand(script):
    # delta = r + gamma * V' - V = 1 + 0.5 * 2 - 0.5 = 1.5 ; with done the bootstrap is cut: 1 - 0.5 = 0.5
    adv, _ = script.gae(jnp.array([[1.0, 1.0]]), jnp.array([[0.5, 0.5]]), jnp.array([[False, True]]),
                        jnp.array([2.0, 2.0]), 0.5, 0.9)
    np.testing.assert_allclose(adv, [[1.5, 0.5]])


def test_ppo_actor_loss_by_hand(script):
    # advantages [1,-1,2] normalise to [0.26726, -1.33631, 1.06904]; ratios [1.5, 0.5, 1.1] clip to
    # [1.2, 0.8, 1.1]; the pessimistic terms are [0.32071, -1.06904, 1.17595], mean 0.14254.
    log_prob = jnp.log(jnp.array([1.5, 0.5, 1.1]))
    loss = script.ppo_actor_loss(log_prob, jnp.zeros(3), jnp.array([1.0, -1.0, 2.0]), 0.2)
    assert float(loss) == pytest.approx(-0.1425393, abs=1e-5)


def test_ppo_value_loss_by_hand(script):
    # clipped values [0.7, 2.3]; squared errors plain [1, 4], clipped [1.69, 5.29]; 0.5 * mean(max) = 1.745
    loss = script.ppo_value_loss(jnp.array([1.0, 2.0]), jnp.array([0.5, 2.5]), jnp.array([2.0, 0.0]), 0.2)
    assert float(loss) == pytest.approx(1.745, abs=1e-6)


def test_gru_state_resets_where_an_episode_starts(script):
    actor = script.RecurrentNet(out_size=5, out_scale=0.01, layer_size=8, gru_size=6)
    T, B, D = 6, 3, 4
    obs = jax.random.normal(jax.random.PRNGKey(0), (T, B, D))
    start = jnp.zeros((T, B), bool).at[0].set(True).at[3, 1].set(True)
    h0 = jax.random.normal(jax.random.PRNGKey(1), (B, 6))  # a stale state must be wiped at t=0
    params = actor.init(jax.random.PRNGKey(2), h0, obs[0], start[0])

    def unroll(h, obs, start):
        return script.replay((actor,), (params,), (h,), (obs,), start)[1][0]

    logits = unroll(h0, obs, start)
    # Env 1 restarts at t=3: its outputs from there equal a fresh run on obs[3:] from a zero state.
    fresh = unroll(jnp.zeros((B, 6)), obs[3:], start[3:].at[0].set(True))
    np.testing.assert_allclose(logits[3:, 1], fresh[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, unroll(jnp.zeros((B, 6)), obs, start), rtol=1e-5, atol=1e-6)
    # Env 0 does not restart: its state carries over, so the outputs differ from the fresh run.
    assert not np.allclose(logits[3:, 0], fresh[:, 0], atol=1e-4)


def test_fused_gru_is_flax_gru_cell(script):
    """RecurrentNet keeps the GRU's gates in one [H, 3H] kernel (so that training's scan has one matmul
    per step); with GRUCell's weights placed in it, it must compute what flax.linen.GRUCell computes,
    and its initial recurrent kernel must be GRUCell's: an orthogonal block per gate."""
    import flax.linen as nn

    H, D, B = 6, 8, 4
    net = script.RecurrentNet(out_size=3, out_scale=0.01, layer_size=D, gru_size=H)
    ours = net.init(jax.random.PRNGKey(0), jnp.zeros((B, H)), jnp.zeros((B, 5)), jnp.zeros((B,), bool))["params"]
    cell = nn.GRUCell(H)
    theirs = cell.init(jax.random.PRNGKey(1), jnp.zeros((B, H)), jnp.zeros((B, D)))["params"]
    params = {**ours,
              "gru_input": {"kernel": jnp.concatenate([theirs[g]["kernel"] for g in ("ir", "iz", "in")], -1),
                            "bias": jnp.concatenate([theirs[g]["bias"] for g in ("ir", "iz", "in")], -1)},
              "gru_hidden": {"kernel": jnp.concatenate([theirs[g]["kernel"] for g in ("hr", "hz", "hn")], -1)},
              "gru_hidden_bias_n": theirs["hn"]["bias"]}
    h, x = jax.random.normal(jax.random.PRNGKey(2), (B, H)), jax.random.normal(jax.random.PRNGKey(3), (B, D))
    start = jnp.array([False, True, False, False])  # env 1 starts an episode: its state is zeroed first
    gru_in = x @ params["gru_input"]["kernel"] + params["gru_input"]["bias"]  # what `embed` hands the GRU
    new_h, _ = net.apply({"params": params}, h, gru_in, start, method="recur")
    expected, _ = cell.apply({"params": theirs}, jnp.where(start[:, None], 0.0, h), x)
    np.testing.assert_allclose(new_h, expected, rtol=1e-5, atol=1e-6)
    kernel = np.asarray(ours["gru_hidden"]["kernel"])
    for gate in range(3):
        block = kernel[:, gate * H:(gate + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    assert not np.allclose(kernel[:, :H], kernel[:, H:2 * H])


def test_replay_of_two_nets_equals_stepping_each_alone(script):
    """Training replays actor and critic side by side in one scan; that must equal stepping each
    net on its own, one time step after another, as the rollout does."""
    actor = script.RecurrentNet(out_size=4, out_scale=0.01, layer_size=8, gru_size=6)
    critic = script.RecurrentNet(out_size=1, out_scale=1.0, layer_size=8, gru_size=5)
    T, B = 5, 2
    obs, state = jax.random.normal(jax.random.PRNGKey(0), (T, B, 3)), jax.random.normal(jax.random.PRNGKey(1), (T, B, 7))
    start = jnp.zeros((T, B), bool).at[2, 0].set(True)
    pa = actor.init(jax.random.PRNGKey(2), jnp.zeros((B, 6)), obs[0], start[0])
    pc = critic.init(jax.random.PRNGKey(3), jnp.zeros((B, 5)), state[0], start[0])
    (ha, hc), (logits, values) = script.replay((actor, critic), (pa, pc), (jnp.ones((B, 6)), jnp.ones((B, 5))),
                                               (obs, state), start)
    h_a, h_c = jnp.ones((B, 6)), jnp.ones((B, 5))
    for t in range(T):
        h_a, logit_t = actor.apply(pa, h_a, obs[t], start[t])
        h_c, value_t = critic.apply(pc, h_c, state[t], start[t])
        np.testing.assert_allclose(logits[t], logit_t, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(values[t], value_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ha, h_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hc, h_c, rtol=1e-5, atol=1e-6)


def test_replay_gradients_equal_stepping_gradients(script):
    """replay's scan is checkpointed (its backward pass recomputes each step): the gradients of a
    loss over the sequence, for both nets' parameters and the initial GRU states, must equal those
    of stepping the nets in a Python loop."""
    actor = script.RecurrentNet(out_size=4, out_scale=0.5, layer_size=8, gru_size=6)
    critic = script.RecurrentNet(out_size=1, out_scale=1.0, layer_size=8, gru_size=5)
    T, B = 6, 3
    obs, state = jax.random.normal(jax.random.PRNGKey(0), (T, B, 3)), jax.random.normal(jax.random.PRNGKey(1), (T, B, 7))
    start = jnp.zeros((T, B), bool).at[3, 1].set(True)
    weights = jax.random.normal(jax.random.PRNGKey(4), (T, B, 4))
    pa = actor.init(jax.random.PRNGKey(2), jnp.zeros((B, 6)), obs[0], start[0])
    pc = critic.init(jax.random.PRNGKey(3), jnp.zeros((B, 5)), state[0], start[0])
    h0 = (0.3 * jnp.ones((B, 6)), -0.2 * jnp.ones((B, 5)))

    def loss(logits, values):
        return (jax.nn.log_softmax(logits) * weights).sum() + (values[..., 0] ** 2).sum()

    def through_replay(pa, pc, h0):
        _, (logits, values) = script.replay((actor, critic), (pa, pc), h0, (obs, state), start)
        return loss(logits, values)

    def stepping(pa, pc, h0):
        (h_a, h_c), logits, values = h0, [], []
        for t in range(T):
            h_a, logit_t = actor.apply(pa, h_a, obs[t], start[t])
            h_c, value_t = critic.apply(pc, h_c, state[t], start[t])
            logits.append(logit_t), values.append(value_t)
        return loss(jnp.stack(logits), jnp.stack(values))

    got = jax.grad(through_replay, argnums=(0, 1, 2))(pa, pc, h0)
    want = jax.grad(stepping, argnums=(0, 1, 2))(pa, pc, h0)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.abs(w).max() > 0  # every parameter gets a gradient
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_masked_actions_are_never_sampled_and_have_zero_probability(script):
    actor = script.RecurrentNet(out_size=4, out_scale=0.01, layer_size=8, gru_size=6)
    obs = jax.random.normal(jax.random.PRNGKey(0), (512, 3))
    mask = jnp.broadcast_to(jnp.array([False, True, False, True]), (512, 4))
    start = jnp.ones((512,), bool)
    params = actor.init(jax.random.PRNGKey(1), jnp.zeros((512, 6)), obs, start)
    _, out = actor.apply(params, jnp.zeros((512, 6)), obs, start)
    logits = script.mask_logits(out, mask, False)
    action, log_prob, _ = script.sample_action(jax.random.PRNGKey(2), logits, False)
    assert set(np.unique(action)) <= {1, 3}
    lp, entropy = script.log_prob_entropy(logits, jnp.zeros(512, jnp.int32), False)
    assert np.all(np.asarray(lp) < -1e8) and np.all(np.isfinite(entropy)) and np.all(entropy <= np.log(2) + 1e-6)


def test_tanh_gaussian_log_prob_matches_change_of_variables(script):
    # log p(tanh(x)) = log N(x) - log(1 - tanh(x)^2), per dimension, summed.
    loc, log_std = jnp.array([[0.3, -1.0]]), jnp.array([[0.1, -0.5]])
    raw = jnp.array([[0.7, -2.5]])
    lp, _ = script.log_prob_entropy((loc, log_std), raw, True)
    std = np.log1p(np.exp(np.asarray(log_std))) + 1e-3  # softplus + 1e-3, Mava's scale
    normal = -0.5 * ((np.asarray(raw) - np.asarray(loc)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = (normal - np.log(1 - np.tanh(np.asarray(raw)) ** 2)).sum()
    assert float(lp[0]) == pytest.approx(expected, rel=1e-4)
