"""magpo_mat.py: the MAT guider's auto-regression, acting vs training, plain MAT at delta = inf and
lambda = 0, and the parts it shares with magpo_sable.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import magpo_mat as mm
import magpo_sable as ms

N = 4  # agents


@pytest.mark.parametrize("continuous", [False, True])
def test_decoder_output_for_agent_j_ignores_actions_of_agents_j_and_later(continuous):
    net, n_act = mm.MAT(5, continuous, n_block=2, n_head=2, embed_dim=8), 5
    key = jax.random.PRNGKey(0)
    obs = jax.random.normal(key, (3, N, 6))
    if continuous:
        actions = jax.random.normal(jax.random.PRNGKey(1), (3, N, n_act))
    else:
        actions = jax.random.randint(jax.random.PRNGKey(1), (3, N), 0, n_act)
    params = net.init(key, obs, mm.decoder_inputs(actions, n_act, continuous))
    # Random weights: MAT's 0.01-scale initialisation makes agent j+1's dependence on agent j about 1e-6,
    # too close to rounding to check.
    leaves, tree = jax.tree.flatten(params)
    params = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) * 0.5
                                       for k, x in zip(jax.random.split(key, len(leaves)), leaves)])

    def outputs(actions):
        _, out = net.apply(params, obs, mm.decoder_inputs(actions, n_act, continuous))
        return np.asarray(out[0] if continuous else out)

    base = outputs(actions)
    for j in range(N):
        later = actions[:, j:]
        out = outputs(actions.at[:, j:].set(later + 0.9 if continuous else (later + 1) % n_act))
        np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])  # agents <= j do not see j and later
        if j + 1 < N:
            # Agent j+1 does see agent j. Unchanged inputs give bitwise-equal outputs (as for agents <= j);
            # the change itself is small, since each block's cross-attention adds it onto the observation.
            assert not np.array_equal(out[:, j + 1], base[:, j + 1])


def make(env_id, **overrides):
    args = mm.Args(env_id=env_id, **{**dict(num_envs=4, rollout_length=32, total_timesteps=128, num_evaluations=1,
                                            n_block=2, n_head=2, embed_dim=16, layer_size=16, gru_size=16), **overrides})
    trainer = mm.make_train(args, mm.make_env(env_id))
    hp = mm.hparams_from_args(args)
    return args, trainer, trainer.init(jax.random.PRNGKey(0), hp), hp


@pytest.mark.parametrize("env_id", ["lbf-2s-8x8-2p-2f-coop", "mpe-simple_spread_3ag"])
def test_training_pass_reproduces_the_log_probs_and_values_of_acting(env_id):
    """Acting samples agent after agent; training runs the decoder once on all agents, teacher-forced.
    Both must give the same numbers (LBF: with action masks; MPE: continuous)."""
    _, trainer, runner, _ = make(env_id)
    runner = runner._replace(guider_params=jax.tree.map(lambda x: x * 4.0, runner.guider_params))  # sharper policy
    _, traj, _, _ = jax.jit(trainer.rollout)(runner)
    value, out = jax.jit(trainer.guider_train_pass)(runner.guider_params, traj)
    continuous = env_id.startswith("mpe")
    log_prob, _ = mm.log_prob_entropy(mm.mask_logits(out, traj.action_mask, continuous), traj.action, continuous)
    assert np.asarray(traj.log_prob).std() > 0.1  # the actions' probabilities differ: a real check
    np.testing.assert_allclose(log_prob, traj.log_prob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, traj.value, rtol=1e-5, atol=1e-5)
    if not continuous:  # masked actions are never taken
        taken = np.take_along_axis(np.asarray(traj.action_mask), np.asarray(traj.action)[..., None], -1)
        assert taken.all() and not np.asarray(traj.action_mask).all()


def plain_mat_loss(value, log_prob, entropy, traj, advantage, target, clip_eps, ent_coef, vf_coef):
    """MAT's PPO loss (Mava's mat.py), written out here independently of the script."""
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    ratio = jnp.exp(log_prob - traj.log_prob)
    policy = -jnp.mean(jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantage))
    clipped = traj.value + jnp.clip(value - traj.value, -clip_eps, clip_eps)
    value_loss = 0.5 * jnp.mean(jnp.maximum((value - target) ** 2, (clipped - target) ** 2))
    return policy - ent_coef * entropy.mean() + vf_coef * value_loss, policy


@pytest.mark.parametrize("env_id", ["coordsum-3x10", "mpe-simple_spread_3ag"])
def test_delta_inf_and_alpha_0_give_exactly_plain_mat(env_id):
    args, trainer, runner, hp = make(env_id, rollout_length=8, total_timesteps=32)
    hp = {**hp, "delta": jnp.float32(np.inf), "alpha": jnp.float32(0.0)}
    runner, *_ = jax.jit(trainer.rollout)(runner)  # the learner's GRU state off zero
    runner2, traj, last_value, _ = jax.jit(trainer.rollout)(runner)
    rewards = jnp.broadcast_to(traj.reward[..., None], traj.value.shape)
    dones = jnp.broadcast_to(traj.done[..., None], traj.value.shape)
    advantage, target = mm.gae(rewards, traj.value, dones, last_value, hp["gamma"], hp["gae_lambda"])
    batch = (traj, runner.actor_h, advantage, target)
    continuous = env_id.startswith("mpe")
    # Parameters moved away from those that acted, so that ratios differ from 1 and the loss is not ~0.
    params = jax.tree.map(lambda x: x * 1.5, runner.guider_params)
    (_, stats), (guider_grad, _) = jax.jit(jax.value_and_grad(trainer.loss, argnums=(0, 1), has_aux=True))(
        params, runner.actor_params, batch, hp)

    def mat_loss(params):
        value, out = trainer.guider_train_pass(params, traj)
        log_prob, entropy = mm.log_prob_entropy(mm.mask_logits(out, traj.action_mask, continuous), traj.action,
                                                continuous)
        return plain_mat_loss(value, log_prob, entropy, traj, advantage, target, hp["clip_eps"], hp["ent_coef"],
                              hp["vf_coef"])

    (_, policy), expected_grad = jax.jit(jax.value_and_grad(mat_loss, has_aux=True))(params)
    assert float(stats["kl_loss"]) == 0.0 and abs(float(policy)) > 1e-4
    np.testing.assert_allclose(stats["guider_loss"], policy, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), guider_grad, expected_grad)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(guider_grad)) > 1e-4  # a real gradient


def test_losses_agree_with_magpo_sable_on_the_same_log_probs():
    keys = jax.random.split(jax.random.PRNGKey(3), 8)
    log_mu, log_pi, old = (jax.random.normal(k, (5, 4, 3)) * 0.5 - 1.0 for k in keys[:3])
    adv, kl = jax.random.normal(keys[3], (5, 4, 3)), jax.random.uniform(keys[4], (5, 4, 3))
    for delta in (1.2, 1.5, jnp.inf):
        for a, b in zip(mm.guider_policy_loss(log_mu, log_pi, old, adv, kl, 0.2, delta),
                        ms.guider_policy_loss(log_mu, log_pi, old, adv, kl, 0.2, delta)):
            assert float(a) == float(b)
    logits_mu, logits_pi = jax.random.normal(keys[5], (5, 4, 3, 6)), jax.random.normal(keys[6], (5, 4, 3, 6))
    for direction in ("guider-learner", "learner-guider"):
        np.testing.assert_array_equal(mm.distillation_kl(logits_mu, logits_pi, False, direction),
                                      ms.distillation_kl(logits_mu, logits_pi, False, direction))
    distill = mm.distillation_kl(logits_mu, logits_pi, False, "guider-learner")
    for a, b in zip(mm.learner_loss(distill, log_pi, old, adv, 0.2, 2.0), ms.learner_loss(distill, log_pi, old, adv, 0.2, 2.0)):
        assert float(a) == float(b)
    rewards, values = jax.random.normal(keys[7], (2, 9, 4))
    dones = values > 1.0
    np.testing.assert_array_equal(mm.gae(rewards, values, dones, values[0], 0.99, 0.9),
                                  ms.gae(rewards, values, dones, values[0], 0.99, 0.9))


def test_embed_dim_must_divide_into_heads():
    with pytest.raises(mm.UsageError, match=r"--embed-dim \(30\) must be divisible by --n-head \(4\)"):
        mm.validate(mm.Args(env_id="coordsum-3x10", embed_dim=30, n_head=4))
    mm.validate(mm.Args(env_id="coordsum-3x10", embed_dim=12, n_head=4))  # no Sable-style evenness needed
