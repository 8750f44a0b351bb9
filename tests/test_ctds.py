"""ctds.py: the teacher trains by plain Sable PPO (magpo_sable.py's guider at delta = inf), the
student by the KL alone (magpo_sable.py's learner at lambda = 0), and nothing else ties them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctds
import magpo_sable

TINY = dict(num_envs=4, rollout_length=8, total_timesteps=32, num_evaluations=1, num_minibatches=1,
            embed_dim=16, layer_size=16, gru_size=16)


def batch_from_a_rollout(module, env_id, seed=0):
    """Trainer, initial runner and one training batch (the whole rollout) of `module` on `env_id`."""
    args = module.Args(env_id=env_id, **TINY)
    trainer = module.make_train(args, module.make_env(env_id))
    hp = module.hparams_from_args(args)
    runner = trainer.init(jax.random.PRNGKey(seed), hp)
    # Move the states off zero first, so that the batch's starting states matter.
    runner, *_ = jax.jit(trainer.rollout)(runner)
    runner2, traj, last_value, _ = jax.jit(trainer.rollout)(runner)
    rewards = jnp.broadcast_to(traj.reward[..., None], traj.value.shape)
    dones = jnp.broadcast_to(traj.done[..., None], traj.value.shape)
    advantage, target = module.gae(rewards, traj.value, dones, last_value, hp["gamma"], hp["gae_lambda"])
    return trainer, runner, hp, (traj, runner.guider_state, runner.actor_h, advantage, target)


def loss_and_grads(trainer, runner, batch, hp):
    grad_fn = jax.jit(jax.value_and_grad(trainer.loss, argnums=(0, 1), has_aux=True))
    return grad_fn(runner.guider_params, runner.actor_params, batch, hp)


@pytest.mark.parametrize("env_id", ["coordsum-3x10", "mpe-simple_spread_3ag"])
def test_ctds_losses_are_magpo_sable_at_delta_inf_and_alpha_0(env_id):
    """Same seed -> same networks and rollout in both scripts; then CTDS's loss, its parts and both
    networks' gradients equal magpo_sable.py's with the band removed and no RL term for the learner."""
    trainer, runner, hp, batch = batch_from_a_rollout(ctds, env_id)
    m_trainer, m_runner, m_hp, m_batch = batch_from_a_rollout(magpo_sable, env_id)
    jax.tree.map(np.testing.assert_array_equal, (runner.guider_params, runner.actor_params),
                 (m_runner.guider_params, m_runner.actor_params))
    # The teacher acts exactly as the guider (compared as plain arrays: each script has its own NamedTuples).
    for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(m_batch), strict=True):
        np.testing.assert_array_equal(a, b)
    m_hp = {**m_hp, "delta": jnp.float32(np.inf), "alpha": jnp.float32(0.0)}
    (total, stats), grads = loss_and_grads(trainer, runner, batch, hp)
    (m_total, m_stats), m_grads = loss_and_grads(m_trainer, m_runner, m_batch, m_hp)
    assert float(m_stats["kl_loss"]) == 0.0 and float(m_stats["outside_band"]) == 0.0
    for name in ("guider_loss", "value_loss", "entropy", "distill_loss"):
        np.testing.assert_allclose(stats[name], m_stats[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(total, m_total, rtol=1e-6, atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, m_grads)
    # The teacher's part is plain PPO: clipped surrogate - entropy bonus + value loss (Sable's loss).
    expected = stats["guider_loss"] - hp["ent_coef"] * stats["entropy"] + hp["vf_coef"] * stats["value_loss"]
    np.testing.assert_allclose(total - stats["distill_loss"], expected, rtol=1e-5, atol=1e-6)


def test_student_learns_from_the_kl_alone_and_the_teacher_ignores_the_student():
    trainer, runner, hp, batch = batch_from_a_rollout(ctds, "coordsum-3x10")
    traj, guider_state, actor_h, advantage, target = batch
    _, (teacher_grad, student_grad) = loss_and_grads(trainer, runner, batch, hp)
    # Other rewards (advantages and value targets): the student's gradient is unchanged, the teacher's is not.
    other = (traj, guider_state, actor_h, -3.0 * advantage + 1.0, target + 5.0)
    _, (teacher_grad2, student_grad2) = loss_and_grads(trainer, runner, other, hp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), student_grad, student_grad2)
    assert not all(jax.tree.leaves(jax.tree.map(np.allclose, teacher_grad, teacher_grad2)))
    # Another student: the teacher's gradient is unchanged (no band, no KL towards the student).
    perturbed = jax.tree.map(lambda x: x + 0.1, runner.actor_params)
    _, (teacher_grad3, student_grad3) = loss_and_grads(trainer, runner._replace(actor_params=perturbed), batch, hp)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), teacher_grad, teacher_grad3)
    assert not all(jax.tree.leaves(jax.tree.map(np.allclose, student_grad, student_grad3)))


@pytest.mark.parametrize("direction, kls", [
    # teacher [0.5, 0.5] vs student [0.25, 0.75]; teacher [0.8, 0.2] vs student [0.8, 0.2]
    ("guider-learner", [0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0), 0.0]),  # KL(teacher || student)
    ("learner-guider", [0.25 * np.log(0.5) + 0.75 * np.log(1.5), 0.0]),  # KL(student || teacher)
])
def test_student_loss_is_the_mean_kl_by_hand(direction, kls):
    teacher = jnp.log(jnp.array([[0.5, 0.5], [0.8, 0.2]]))
    student = jnp.log(jnp.array([[0.25, 0.75], [0.8, 0.2]]))
    kl = ctds.distillation_kl(teacher, student, False, direction)
    np.testing.assert_allclose(kl, kls, atol=1e-6)
    loss, grad_teacher = jax.value_and_grad(
        lambda t: ctds.student_loss(ctds.distillation_kl(t, student, False, direction)))(teacher)
    assert float(loss) == pytest.approx(np.mean(kls), abs=1e-6)
    np.testing.assert_array_equal(grad_teacher, 0.0)  # the teacher is held fixed


def test_teacher_loss_by_hand():
    # Surrogate as in test_ppo's hand case: 0.1425393 to minimise -> -0.1425393. Values [1, 2] vs old
    # [0, 2], targets [0.5, 2.5], clip 0.2: plain errors [0.25, 0.25], clipped [0.09, 0.25] -> 0.125.
    # Entropy mean 1.5. Total: -0.1425393 - 0.01 * 1.5 + 0.5 * 0.125 = -0.0950393.
    log_prob = jnp.log(jnp.array([1.5, 0.5, 1.1]))
    total, surrogate, value_loss = ctds.teacher_loss(
        log_prob, jnp.zeros(3), jnp.array([1.0, -1.0, 2.0]), jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0]),
        jnp.array([0.5, 2.5]), jnp.array([1.0, 2.0]), 0.2, 0.01, 0.5)
    assert float(surrogate) == pytest.approx(-0.1425393, abs=1e-5)
    assert float(value_loss) == pytest.approx(0.125, abs=1e-6)
    assert float(total) == pytest.approx(-0.0950393, abs=1e-5)
