"""magpo_sable.py: the Sable guider's retention forms, its auto-regression, and the MAGPO losses
(Eq. 8-11) on hand-made inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import magpo_sable as ms


# --------------------------------------------------------------------------------------------
# Retention: recurrent (step by step), parallel (one chunk) and chunkwise forms agree.
# --------------------------------------------------------------------------------------------
B, T, N, H, D = 3, 8, 3, 2, 4
KAPPA = jnp.asarray(ms.decay_rates(H, 0.8), jnp.float32)


def random_inputs(seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v = (jax.random.normal(key, (B, T * N, H, D)) for key in keys[:3])
    state = jax.random.normal(keys[3], (B, H, D, D))
    start = np.zeros((B, T), bool)
    start[0, 3] = True  # an episode starts inside the sequence
    start[1, 0] = True  # ... at its first step
    start[2, 2] = start[2, 6] = True  # twice
    return q, k, v, state, jnp.asarray(start)


def recurrent(q, k, v, state, start, causal):
    outs = []
    for t in range(T):
        decay = jnp.where(start[:, t, None], 0.0, KAPPA[None])
        tokens = slice(t * N, (t + 1) * N)
        if causal:  # the decoder: one agent after another, decaying once per timestep
            for a in range(N):
                i = slice(t * N + a, t * N + a + 1)
                out, state = ms.retention_step(q[:, i], k[:, i], v[:, i], state, decay if a == 0 else jnp.ones_like(decay))
                outs.append(out)
        else:  # the encoder: all agents of the timestep at once
            out, state = ms.retention_step(q[:, tokens], k[:, tokens], v[:, tokens], state, decay)
            outs.append(out)
    return jnp.concatenate(outs, axis=1), state


def chunkwise(q, k, v, state, start, causal, chunk):
    outs = []
    for c in range(T // chunk):
        tokens = slice(c * chunk * N, (c + 1) * chunk * N)
        out, state = ms.retention_chunk(q[:, tokens], k[:, tokens], v[:, tokens], state, KAPPA,
                                        start[:, c * chunk:(c + 1) * chunk], N, causal)
        outs.append(out)
    return jnp.concatenate(outs, axis=1), state


@pytest.mark.parametrize("causal", [False, True])
def test_recurrent_parallel_and_chunkwise_retention_agree(causal):
    q, k, v, state, start = random_inputs()
    out_rec, state_rec = recurrent(q, k, v, state, start, causal)
    for chunk in (T, 4, 2, 1):  # T: the parallel form, one chunk over everything
        out, final = chunkwise(q, k, v, state, start, causal, chunk)
        np.testing.assert_allclose(out, out_rec, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(final, state_rec, rtol=1e-4, atol=1e-4)


def test_retention_forgets_everything_before_an_episode_start():
    q, k, v, state, start = random_inputs()
    out, _ = ms.retention_chunk(q, k, v, state, KAPPA, start, N, causal=False)
    # Environment 0 starts an episode at t=3: from there on, nothing before t=3 may matter.
    k2 = k.at[0, :3 * N].set(7.0)
    state2 = state.at[0].set(-5.0)
    out2, _ = ms.retention_chunk(q, k2, v, state2, KAPPA, start, N, causal=False)
    np.testing.assert_array_equal(out[0, 3 * N:], out2[0, 3 * N:])
    assert not np.allclose(out[0, :3 * N], out2[0, :3 * N])


def test_decay_rates_follow_sable():
    np.testing.assert_allclose(ms.decay_rates(1, 0.8), [(1 - 1 / 32) * 0.8])
    np.testing.assert_allclose(ms.decay_rates(3, 1.0), [1 - 1 / 32, 1 - 1 / 128, 1 - 1 / 512], rtol=1e-6)


def test_positional_encoding_is_sinusoidal():
    pe = ms.positional_encoding(jnp.array([0, 5]), 6)
    freq = 10000.0 ** (-np.arange(0, 6, 2) / 6)
    expected = np.zeros((2, 6))
    expected[:, 0::2] = np.sin(np.array([[0], [5]]) * freq)
    expected[:, 1::2] = np.cos(np.array([[0], [5]]) * freq)
    np.testing.assert_allclose(pe, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The Sable network: auto-regression, and training log-probs equal to those of acting.
# --------------------------------------------------------------------------------------------
def small_sable(continuous=False, n_actions=5):
    return ms.Sable(n_actions, continuous, n_block=2, n_head=2, embed_dim=8, decay_scaling_factor=0.9)


def zeros_state(batch):
    return ms.GuiderState(*[jnp.zeros((batch, 2, 2, 4, 4))] * 3)


@pytest.mark.parametrize("continuous", [False, True])
def test_decoder_output_for_agent_j_ignores_actions_of_agents_j_and_later(continuous):
    net, n_act, steps = small_sable(continuous), 5, 3
    key = jax.random.PRNGKey(0)
    obs = jax.random.normal(key, (2, steps, N, 6))
    if continuous:
        actions = jax.random.normal(jax.random.PRNGKey(1), (2, steps, N, n_act))
    else:
        actions = jax.random.randint(jax.random.PRNGKey(1), (2, steps, N), 0, n_act)
    step = jnp.broadcast_to(jnp.arange(steps)[None, :, None], (2, steps, N)).reshape(2, -1)
    start = jnp.zeros((2, steps), bool).at[:, 0].set(True)

    def outputs(actions):
        action_in = ms.decoder_inputs(actions, n_act, continuous).reshape(2, steps * N, -1)
        params = net.init(key, obs.reshape(2, steps * N, 6), action_in, step, zeros_state(2), start, N)
        _, out, _ = net.apply(params, obs.reshape(2, steps * N, 6), action_in, step, zeros_state(2), start, N)
        return np.asarray(out[0] if continuous else out).reshape(2, steps, N, n_act)

    base = outputs(actions)
    t = 1
    for j in range(N):
        later = actions[:, t, j:]
        changed = actions.at[:, t, j:].set(later + 0.9 if continuous else (later + 1) % n_act)
        out = outputs(changed)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])  # the past does not see the future
        np.testing.assert_array_equal(out[:, t, :j + 1], base[:, t, :j + 1])  # agents <= j do not see j..
        if j + 1 < N:
            assert not np.allclose(out[:, t, j + 1], base[:, t, j + 1])  # agent j+1 does see agent j


@pytest.mark.parametrize("env_id, rollout, chunk", [("coordsum-3x10", 104, 8), ("mpe-simple_spread_3ag", 32, 32)])
def test_training_pass_reproduces_the_log_probs_and_values_of_acting(env_id, rollout, chunk):
    """Rollouts act step by step and agent by agent; training replays them chunkwise in parallel.
    Both must give the same numbers, across episode ends (CoordSum ends at step 100, MPE at 26)."""
    args = ms.Args(env_id=env_id, num_envs=4, rollout_length=rollout, total_timesteps=4 * rollout, num_evaluations=1,
                   chunk_size=chunk, n_block=2, n_head=2, embed_dim=16, layer_size=16, gru_size=16)
    trainer = ms.make_train(args, ms.make_env(env_id))
    runner = trainer.init(jax.random.PRNGKey(0), ms.hparams_from_args(args))
    runner = runner._replace(guider_params=jax.tree.map(lambda x: x * 8.0, runner.guider_params))  # sharper policy
    rollout = jax.jit(trainer.rollout)
    for _ in range(2):  # so that the checked rollout starts mid-episode, from non-zero retention states
        runner, _, _, _ = rollout(runner)
    state0 = runner.guider_state
    assert all(np.abs(np.asarray(s)).max() > 0 for s in state0)
    _, traj, _, _ = rollout(runner)
    assert traj.start[1:].any()  # an episode ends inside the rollout
    value, out = jax.jit(trainer.guider_train_pass)(runner.guider_params, state0, traj)
    continuous = env_id.startswith("mpe")
    log_prob, _ = ms.log_prob_entropy(ms.mask_logits(out, traj.action_mask, continuous), traj.action, continuous)
    # float32 sums in another order over ~100 steps of sharpened weights: up to 4e-4 apart (XLA -O0);
    # a wrong mask or decay moves log-probs by orders of magnitude more.
    np.testing.assert_allclose(log_prob, traj.log_prob, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(value, traj.value, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Losses (Eq. 8-11) by hand.
# --------------------------------------------------------------------------------------------
def test_guider_loss_by_hand():
    # (mu, pi, mu_old, advantage) per sample; advantages [1, -1, 1, -1] stay the same after normalisation.
    mu = np.array([0.5, 0.9, 0.2, 0.6])
    pi = np.array([0.5, 0.3, 0.5, 0.5])
    old = np.array([0.4, 0.6, 0.25, 0.5])
    adv = np.array([1.0, -1.0, 1.0, -1.0])
    kl = np.array([0.1, 0.2, 0.3, 0.4])
    surrogate, kl_loss = ms.guider_policy_loss(jnp.log(mu), jnp.log(pi), jnp.log(old), adv, kl, 0.2, 1.5)
    # 0: mu/pi = 1, inside; ratio 1.25 -> min(1.25, clip 1.2) = 1.2
    # 1: mu/pi = 3, outside; ratio 1.5; inner clip -> 1.5 * 0.3 / 0.6 = 0.75 -> 0.8; min(-1.5, -0.8) = -1.5
    # 2: mu/pi = 0.4, outside; ratio 0.8; inner clip -> (1/1.5) * 0.5 / 0.25 = 1.33 -> 1.2; min(0.8, 1.2) = 0.8
    # 3: mu/pi = 1.2, inside; ratio 1.2 -> min(-1.2, -1.2) = -1.2
    assert float(surrogate) == pytest.approx(-(1.2 - 1.5 + 0.8 - 1.2) / 4, abs=1e-6)
    assert float(kl_loss) == pytest.approx((0.2 + 0.3) / 4, abs=1e-7)  # KL only where outside the band


def test_guider_gets_no_gradient_from_the_clipped_branch_where_the_inner_clip_is_active():
    # Sample 0: mu/pi = 3 (outside delta 1.5); ratio 1.125; inner-clipped ratio 1.5 * 0.3 / 0.8 = 0.5625 -> 0.8,
    # so with a positive advantage min() takes the clipped branch, which the inner clip holds constant.
    log_mu = jnp.log(jnp.array([0.9, 0.5]))
    args = (jnp.log(jnp.array([0.3, 0.5])), jnp.log(jnp.array([0.8, 0.5])), jnp.array([1.0, -1.0]), jnp.zeros(2), 0.2)

    def surrogate(log_mu, delta):
        return ms.guider_policy_loss(log_mu, *args, delta)[0]

    grad = jax.grad(surrogate)(log_mu, 1.5)
    assert float(grad[0]) == 0.0
    # Without the band (delta = inf) the same sample is inside PPO's clip range and gets -ratio * A / n.
    grad_free = jax.grad(surrogate)(log_mu, jnp.inf)
    assert float(grad_free[0]) == pytest.approx(-1.125 / 2, rel=1e-5)


def test_delta_inf_gives_exactly_the_ppo_loss_and_no_kl():
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    log_mu, log_pi, old = (jax.random.normal(k, (64,)) * 0.5 - 1.0 for k in keys[:3])
    adv, kl = jax.random.normal(keys[3], (64,)), jax.random.uniform(keys[4], (64,))
    surrogate, kl_loss = ms.guider_policy_loss(log_mu, log_pi, old, adv, kl, 0.2, jnp.inf)
    assert float(surrogate) == float(ms.ppo_actor_loss(log_mu, old, adv, 0.2))
    assert float(kl_loss) == 0.0


@pytest.mark.parametrize("direction, kl", [("guider-learner", 0.5 * np.log(0.5 / 0.8) + 0.5 * np.log(0.5 / 0.2)),
                                           ("learner-guider", 0.8 * np.log(0.8 / 0.5) + 0.2 * np.log(0.2 / 0.5))])
def test_learner_loss_by_hand_in_both_kl_directions(direction, kl):
    mu_logits = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
    pi_logits = jnp.log(jnp.array([[0.8, 0.2], [0.8, 0.2]]))
    distill = ms.distillation_kl(mu_logits, pi_logits, False, direction)
    np.testing.assert_allclose(distill, [kl, kl], rtol=1e-5)
    # PPO term: ratios [1.1, 0.7], normalised advantages [1, -1] -> -mean(min(1.1, 1.1), min(-0.7, -0.8)) = -0.15
    log_prob, old = jnp.log(jnp.array([0.55, 0.35])), jnp.log(jnp.array([0.5, 0.5]))
    total, ppo = ms.learner_loss(distill, log_prob, old, jnp.array([3.0, 1.0]), 0.2, 2.0)
    assert float(ppo) == pytest.approx(-0.15, abs=1e-6)
    assert float(total) == pytest.approx(kl + 2.0 * -0.15, abs=1e-5)
    # The guider is held fixed: the distillation term sends it no gradient.
    grad_mu = jax.grad(lambda m: ms.distillation_kl(m, pi_logits, False, direction).sum())(mu_logits)
    assert np.all(np.asarray(grad_mu) == 0.0)


def test_continuous_kl_is_the_closed_form_gaussian_kl():
    def log_std(scale):  # the head's parameter for a given scale: softplus(log_std) + 1e-3 = scale
        return jnp.log(jnp.expm1(jnp.array(scale) - 1e-3))

    mu = (jnp.array([[0.0, 1.0]]), log_std([[1.0, 2.0]]))
    pi = (jnp.array([[1.0, 1.0]]), log_std([[2.0, 1.0]]))
    expected = sum(np.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5
                   for m1, s1, m2, s2 in ((0.0, 1.0, 1.0, 2.0), (1.0, 2.0, 1.0, 1.0)))
    np.testing.assert_allclose(ms.distillation_kl(mu, pi, True, "guider-learner"), [expected], rtol=1e-5)


@pytest.mark.parametrize("env_id", ["mpe-simple_spread_3ag", "smax-2s3z", "rware-tiny-2ag"])
def test_sable_reads_the_steps_taken_in_the_episode_on_every_suite(env_id):
    """Sable's positional encoding sees 0 at an episode's first observation, then 1, 2, ... on every suite
    (Mava's jaxmarl wrapper gives SMAX and MPE 0, 0, 1, 2, ...: a deliberate difference, README)."""
    env = ms.make_env(env_id)
    step = jax.jit(env.step)
    state, ts = env.reset(jax.random.PRNGKey(0))
    start, counts = jnp.ones((), bool), []
    for t in range(env.time_limit + 2):
        counts.append(int(ms.step_count(ts, start)))
        if env.continuous:
            actions = jnp.zeros((env.num_agents, env.num_actions))
        else:
            actions = jnp.argmax(ts.action_mask, axis=-1)  # the first legal action
        state, ts = step(jax.random.PRNGKey(t), state, actions)
        start = ts.done
        if ts.done:
            counts.append(int(ms.step_count(ts, start)))
            break
    assert counts[:-1] == list(range(len(counts) - 1)) and counts[-1] == 0  # and 0 again after the end
