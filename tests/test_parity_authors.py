"""Parity with the authors' code (liyheng/MAGPO at d2ac38b, built on Mava): the same parameters and
data in, the same numbers out.

The fixtures in tests/fixtures/parity/ were written by benchmark/parity/export_authors.py, which ran
the authors' own networks, loss functions, optimiser and environments (README, "Parity with the
authors' code"). These tests need only the fixtures. Each maps the authors' parameter tree onto this
project's (one small function per network), runs this project's code and compares: losses to rtol 1e-5,
gradients and parameters after one optimiser step to 5e-5 of each leaf's norm, environment traces
exactly."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ctds
import ippo
import magpo_mat as mm
import magpo_sable as ms
import mappo
from conftest import ROOT

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "parity")
LOSS_RTOL = 1e-5
LEAF_TOL = 5e-5


@pytest.fixture(autouse=True)
def exact_matmuls():
    """Both sides in full float32 (the export ran with the same setting)."""
    with jax.default_matmul_precision("highest"):
        yield


def load(name):
    """A fixture as a nested dict: 'a/b/c' keys become d['a']['b']['c']."""
    tree = {}
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        for key in data.files:
            *path, leaf = key.split("/")
            node = tree
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = data[key]
    return tree


# --------------------------------------------------------------------------------------------------
# Parameter maps: the authors' trees -> this project's. Linear (renames and concatenations), so the
# same maps carry the authors' gradients over for comparison.
# --------------------------------------------------------------------------------------------------
def gru_net(pre, post, head, gru):
    """Mava's RecurrentActor / RecurrentValueNet -> RecurrentNet. flax's GRUCell keeps one Dense per
    gate (ir, iz, in on the input; hr, hz, hn on the state); RecurrentNet fuses them as [r | z | n]."""
    cat = lambda *xs: np.concatenate(xs, axis=-1)  # noqa: E731
    return {"params": {
        "pre_torso": pre, "post_torso": post, "output": head,
        "gru_input": {"kernel": cat(gru["ir"]["kernel"], gru["iz"]["kernel"], gru["in"]["kernel"]),
                      "bias": cat(gru["ir"]["bias"], gru["iz"]["bias"], gru["in"]["bias"])},
        "gru_hidden": {"kernel": cat(gru["hr"]["kernel"], gru["hz"]["kernel"], gru["hn"]["kernel"])},
        "gru_hidden_bias_n": gru["hn"]["bias"],
    }}


def gru_cell(tree):
    rnn = tree["ScannedRNN_0"]
    (cell,) = [v for k, v in rnn.items() if k.startswith("GRUCell")]
    return cell


def actor_from_authors(tree):
    p = tree["params"]
    head = p["action_head"]
    if "mean" in head:  # ContinuousActionHead: the Gaussian's mean and its state-independent log_std
        params = gru_net(p["pre_torso"]["Dense_0"], p["post_torso"]["Dense_0"], head["mean"], gru_cell(p))
        params["params"]["log_std"] = head["log_std"]
        return params
    return gru_net(p["pre_torso"]["Dense_0"], p["post_torso"]["Dense_0"], head["Dense_0"], gru_cell(p))


def critic_from_authors(tree):
    p = tree["params"]
    return gru_net(p["pre_torso"]["Dense_0"], p["post_torso"]["Dense_0"], p["Dense_0"], gru_cell(p))


def retention_from_authors(r, n_head):
    """Mava keeps one [embed, head_size] projection per head; Retention one [embed, embed] for all heads."""
    heads = [r[f"retention_heads_{h}"] for h in range(n_head)]
    out = {w: np.concatenate([h[w] for h in heads], axis=-1) for w in ("w_q", "w_k", "w_v")}
    return {**out, "w_g": r["w_g"], "w_o": r["w_o"], "head_norm": r["group_norm"]}


def sable_from_authors(tree, n_block, n_head):
    """Mava's SableNetwork -> Sable. Its SwiGLU feed-forwards (`ffn`) are left out (see Sable)."""
    enc, dec = tree["params"]["encoder"], tree["params"]["decoder"]
    params = {
        "obs_norm": enc["obs_encoder"]["layers_0"], "obs_embed": enc["obs_encoder"]["layers_1"],
        "block_norm": enc["ln"],
        "value_hidden": enc["head"]["layers_0"], "value_norm": enc["head"]["layers_2"],
        "value_out": enc["head"]["layers_3"],
        "action_embed": dec["action_encoder"]["layers_0"], "action_norm": dec["ln"],
        "policy_hidden": dec["head"]["layers_0"], "policy_norm": dec["head"]["layers_2"],
        "policy_out": dec["head"]["layers_3"],
    }
    for i in range(n_block):
        e, d = enc[f"encoder_block_{i}"], dec[f"decoder_block_{i}"]
        params[f"encoder_blocks_{i}"] = {"retention": retention_from_authors(e["retn"], n_head),
                                         "norm1": e["ln1"], "norm2": e["ln2"]}
        params[f"decoder_blocks_{i}"] = {"self_retention": retention_from_authors(d["retn1"], n_head),
                                         "cross_retention": retention_from_authors(d["retn2"], n_head),
                                         "norm1": d["ln1"], "norm2": d["ln2"], "norm3": d["ln3"]}
    if "log_std" in dec:
        params["log_std"] = dec["log_std"]
    return {"params": params}


def guider_state_from_authors(state, module=ms):
    """Mava's retention states are [B, n_head, n_block, d, d]; GuiderState's [B, n_block, n_head, d, d]."""
    swap = lambda x: jnp.swapaxes(jnp.asarray(x), 1, 2)  # noqa: E731
    return module.GuiderState(*(swap(state[k]) for k in ("encoder", "decoder_self_retn", "decoder_cross_retn")))


def assert_trees_close(ours, theirs, tol=LEAF_TOL, what=""):
    """Per leaf: |ours - theirs| <= tol * |theirs| in the Euclidean norm of the whole leaf (plus 1e-6 per
    element for leaves near zero). Float32 sums in another order differ by about 1e-6 of a leaf; a
    single element of a deep network's gradient can differ by a few 1e-4 of its own size (Sable's
    per-head normalisation divides by the spread of a few features), which a norm per leaf absorbs and
    any real difference in what is computed does not."""
    ours_flat = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
    theirs_flat = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    assert ours_flat.keys() == theirs_flat.keys(), f"{what}: the parameter trees differ"
    for path, leaf in ours_flat.items():
        a, b = np.asarray(leaf, np.float64), np.asarray(theirs_flat[path], np.float64)
        assert a.shape == b.shape, f"{what} {jax.tree_util.keystr(path)}: shapes {a.shape} and {b.shape}"
        error, size = np.linalg.norm(a - b), np.linalg.norm(b)
        assert error <= tol * size + 1e-6 * np.sqrt(b.size), (
            f"{what} {jax.tree_util.keystr(path)}: |ours - theirs| = {error:.3g}, |theirs| = {size:.3g}")


def ffn_leaves(tree):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if "ffn" in jax.tree_util.keystr(path)]


# --------------------------------------------------------------------------------------------------
# MAGPO (rec_magpo.py): Eq. 8-11, gradients of both networks, one optimiser step.
# --------------------------------------------------------------------------------------------------
def magpo_case(index):
    fx = load(f"magpo_sable_{index}")
    n_block, n_head, embed, decay, delta, alpha, clip_eps, ent_coef, vf_coef, lr, max_grad_norm = fx["config"]
    n_block, n_head, embed = int(n_block), int(n_head), int(embed)
    b = fx["batch"]
    T, B, A = b["action"].shape
    args = ms.Args(env_id=f"coordsum-{A}x{b['action_mask'].shape[-1]}", num_envs=B, rollout_length=T,
                   total_timesteps=B * T, num_evaluations=1, n_block=n_block, n_head=n_head, embed_dim=embed,
                   decay_scaling_factor=float(decay), layer_size=b["h0"].shape[-1], gru_size=b["h0"].shape[-1],
                   delta=float(delta), alpha=float(alpha), clip_eps=float(clip_eps), ent_coef=float(ent_coef),
                   vf_coef=float(vf_coef), lr=float(lr), max_grad_norm=float(max_grad_norm))
    trainer = ms.make_train(args, ms.make_env(args.env_id))
    traj = ms.Transition(obs=b["obs"], step=b["step"], start=b["start"], action_mask=b["action_mask"],
                         action=b["action"], log_prob=b["log_prob"], value=b["value"],
                         reward=np.zeros((T, B), np.float32), done=np.zeros((T, B), bool))
    batch = (traj, guider_state_from_authors(fx["guider_state"]), jnp.asarray(b["h0"]), b["advantage"], b["target"])
    params = (sable_from_authors(fx["guider_params"], n_block, n_head), actor_from_authors(fx["actor_params"]))
    return fx, args, trainer, batch, params


@pytest.mark.parametrize("index", [0, 1, 2])
def test_magpo_losses_gradients_and_step_match_rec_magpo(index):
    fx, args, trainer, batch, (guider, actor) = magpo_case(index)
    hp = ms.hparams_from_args(args)
    (total, stats), (guider_grad, actor_grad) = jax.value_and_grad(trainer.loss, argnums=(0, 1), has_aux=True)(
        guider, actor, batch, hp)
    loss = fx["loss"]
    # The authors log Eq. 8's surrogate as guider_loss and Eq. 11's clipped PPO term as actor_loss.
    for name in ("guider_loss", "kl_loss", "value_loss", "entropy", "actor_loss", "distill_loss", "outside_band"):
        np.testing.assert_allclose(stats[name], loss[name], rtol=LOSS_RTOL, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(total, loss["guider_total"] + loss["learner_total"], rtol=LOSS_RTOL)
    assert 0 < loss["outside_band"] < 1  # the fixture has samples inside and outside the delta band
    # The authors' SwiGLU feed-forwards get exactly zero gradient: leaving them out changes nothing.
    assert all(np.all(g == 0) for g in ffn_leaves(fx["guider_grads"]))
    assert_trees_close(guider_grad, sable_from_authors(fx["guider_grads"], args.n_block, args.n_head),
                       what="guider gradient")
    assert_trees_close(actor_grad, actor_from_authors(fx["actor_grads"]), what="learner gradient")
    opt = ms.optimiser(hp["lr"], hp["max_grad_norm"])
    for ours, grad, theirs, what in (
            (guider, guider_grad, sable_from_authors(fx["guider_params_after"], args.n_block, args.n_head), "guider"),
            (actor, actor_grad, actor_from_authors(fx["actor_params_after"]), "learner")):
        updates, _ = opt.update(grad, opt.init(ours))
        assert_trees_close(jax.tree.map(jnp.add, ours, updates), theirs, what=f"{what} after one step")


@pytest.mark.parametrize("module", [ms, ctds])
def test_plain_sable_loss_gradient_and_step_match_rec_sable(module):
    """Plain Sable (rec_sable.py): magpo_sable.py's guider at --delta inf --alpha 0, and ctds.py's teacher."""
    fx = load("rec_sable")
    n_block, n_head, embed = (int(x) for x in fx["config"][:3])
    decay, clip_eps, ent_coef, vf_coef, lr, max_grad_norm = (float(x) for x in fx["config"][3:])
    b = fx["batch"]
    T, B, A = b["action"].shape
    extra = {"delta": float("inf"), "alpha": 0.0} if module is ms else {}
    args = module.Args(env_id=f"coordsum-{A}x{b['action_mask'].shape[-1]}", num_envs=B, rollout_length=T,
                       total_timesteps=B * T, num_evaluations=1, n_block=n_block, n_head=n_head, embed_dim=embed,
                       decay_scaling_factor=decay, layer_size=b["h0"].shape[-1], gru_size=b["h0"].shape[-1],
                       clip_eps=clip_eps, ent_coef=ent_coef, vf_coef=vf_coef, lr=lr, max_grad_norm=max_grad_norm,
                       **extra)
    trainer = module.make_train(args, module.make_env(args.env_id))
    learner = module.RecurrentNet(b["action_mask"].shape[-1], 0.01, args.layer_size, args.gru_size).init(
        jax.random.PRNGKey(0), jnp.asarray(b["h0"][:1]), jnp.asarray(b["obs"][0, :1]), jnp.ones((1, A), bool))
    traj = module.Transition(obs=b["obs"], step=b["step"], start=b["start"], action_mask=b["action_mask"],
                             action=b["action"], log_prob=b["log_prob"], value=b["value"],
                             reward=np.zeros((T, B), np.float32), done=np.zeros((T, B), bool))
    state = guider_state_from_authors(fx["guider_state"], module)
    batch = (traj, state, jnp.asarray(b["h0"]), b["advantage"], b["target"])
    hp = module.hparams_from_args(args)

    def guider_total(guider):  # the guider's (teacher's) terms only
        _, s = trainer.loss(guider, learner, batch, hp)
        return s["guider_loss"] + s.get("kl_loss", 0.0) - ent_coef * s["entropy"] + vf_coef * s["value_loss"], s

    guider = sable_from_authors(fx["params"], n_block, n_head)
    (total, stats), grad = jax.value_and_grad(guider_total, has_aux=True)(guider)
    loss = fx["loss"]
    np.testing.assert_allclose(total, loss["total"], rtol=LOSS_RTOL)
    for ours, theirs in (("guider_loss", "actor_loss"), ("value_loss", "value_loss"), ("entropy", "entropy")):
        np.testing.assert_allclose(stats[ours], loss[theirs], rtol=LOSS_RTOL, err_msg=ours)
    assert_trees_close(grad, sable_from_authors(fx["grads"], n_block, n_head), what="Sable gradient")
    opt = module.optimiser(lr, max_grad_norm)
    updates, _ = opt.update(grad, opt.init(guider))
    assert_trees_close(jax.tree.map(jnp.add, guider, updates), sable_from_authors(fx["params_after"], n_block, n_head),
                       what="Sable after one step")


def test_sable_acting_matches_get_actions():
    """The guider's recurrent acting form, agent after agent, over five steps with episode restarts:
    the same actions from the same key, log-probabilities, values and retention states."""
    fx = load("sable_acting")
    n_block, n_head, embed, decay = (int(x) if i < 3 else float(x) for i, x in enumerate(fx["config"]))
    steps, B, A, obs_dim = fx["obs"].shape
    args = ms.Args(env_id=f"coordsum-{A}x{fx['action_mask'].shape[-1]}", num_envs=B, rollout_length=steps,
                   total_timesteps=B * steps, num_evaluations=1, n_block=n_block, n_head=n_head, embed_dim=embed,
                   decay_scaling_factor=decay)
    trainer = ms.make_train(args, ms.make_env(args.env_id))
    params = sable_from_authors(fx["params"], n_block, n_head)
    state = ms.GuiderState(*[jnp.zeros((B, n_block, n_head, embed // n_head, embed // n_head))] * 3)
    key = np.asarray(jax.random.PRNGKey(7))  # the export's acting keys: fold_in(split(key, 6)[5], t)
    key = jax.random.split(key, 6)[5]
    for t in range(steps):
        ts = ms.TimeStep(obs=fx["obs"][t], action_mask=fx["action_mask"][t], state=None, reward=None, done=None,
                         terminated=None, episode_return=None, episode_length=fx["step"][t], won=None)
        state, action, log_prob, _, value = trainer.guider_act(params, state, ts, fx["start"][t],
                                                               jax.random.fold_in(key, t))
        np.testing.assert_array_equal(action, fx["action"][t], err_msg=f"step {t}")
        np.testing.assert_allclose(log_prob, fx["log_prob"][t], rtol=LOSS_RTOL, atol=1e-6, err_msg=f"step {t}")
        np.testing.assert_allclose(value, fx["value"][t], rtol=LOSS_RTOL, atol=1e-6, err_msg=f"step {t}")
    final = guider_state_from_authors(fx["final_state"])
    for ours, theirs in zip(state, final):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=LEAF_TOL)


def continuous_outputs(module, fx):
    T, B, A, dim = fx["action"].shape
    net = module.RecurrentNet(dim, 0.01, fx["h0"].shape[-1], fx["h0"].shape[-1], gaussian_policy=True)
    start = np.broadcast_to(fx["start"][..., None], (T, B, A))
    return [module.replay((net,), (actor_from_authors(fx[name]),), (jnp.asarray(fx["h0"]),), (fx["obs"],),
                          start)[1][0] for name in ("params", "other")]


@pytest.mark.parametrize("module", [ippo, mappo, ms, ctds, mm])
def test_continuous_head_log_prob_matches_mava(module):
    """MPE's actor head, Mava's ContinuousActionHead: a Gaussian with scale softplus(log_std) + 1e-3,
    squashed by tanh. This project stores the action before the tanh, so it is compared at
    arctanh(action), with actions inside Mava's clipping threshold of 0.999 (beyond it Mava uses the
    tail mass instead: README, "How this follows the authors' code")."""
    fx = load("continuous_head")
    policy, _ = continuous_outputs(module, fx)
    log_prob, _ = module.log_prob_entropy(policy, jnp.arctanh(jnp.asarray(fx["action"], jnp.float32)), True)
    np.testing.assert_allclose(log_prob, fx["log_prob"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", [ms, ctds, mm])
def test_continuous_kl_matches_mava(module):
    """The KL between two such heads, as MAGPO's distillation and guider terms use it (the tanh is a
    bijection, so both sides take the pre-tanh Gaussians' KL)."""
    fx = load("continuous_head")
    policy, other = continuous_outputs(module, fx)
    np.testing.assert_allclose(module.kl_divergence(policy, other, True), fx["kl"].sum(-1), rtol=1e-5, atol=1e-6)

# --------------------------------------------------------------------------------------------------
# rec_ippo.py / rec_mappo.py: actor and critic losses, gradients, one step, GAE.
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, system", [(ippo, "rec_ippo"), (mappo, "rec_mappo")])
def test_ppo_losses_gradients_and_step_match(module, system):
    fx = load(system)
    clip_eps, ent_coef, vf_coef, gamma, gae_lambda, lr, max_grad_norm = (float(x) for x in fx["config"])
    b = fx["batch"]
    T, B, A = b["action"].shape
    args = module.Args(env_id=f"coordsum-{A}x{b['action_mask'].shape[-1]}", num_envs=B, rollout_length=T,
                       total_timesteps=B * T, num_evaluations=1, layer_size=b["h0"].shape[-1],
                       gru_size=b["h0"].shape[-1], clip_eps=clip_eps, ent_coef=ent_coef, vf_coef=vf_coef,
                       gamma=gamma, gae_lambda=gae_lambda, actor_lr=lr, critic_lr=lr, max_grad_norm=max_grad_norm)
    trainer = module.make_train(args, module.make_env(args.env_id))
    traj = module.Transition(obs=b["obs"], critic_in=b["critic_in"], start=b["start"], action_mask=b["action_mask"],
                             action=b["action"], log_prob=b["log_prob"], value=b["value"],
                             reward=np.zeros((T, B), np.float32), done=np.zeros((T, B), bool))
    batch = (traj, jnp.asarray(b["h0"]), jnp.asarray(b["critic_h0"]), b["advantage"], b["target"])
    actor, critic = actor_from_authors(fx["actor_params"]), critic_from_authors(fx["critic_params"])
    hp = module.hparams_from_args(args)
    (total, stats), (actor_grad, critic_grad) = jax.value_and_grad(trainer.loss, argnums=(0, 1), has_aux=True)(
        actor, critic, batch, hp)
    loss = fx["loss"]
    for name in ("actor_loss", "entropy", "value_loss"):
        np.testing.assert_allclose(stats[name], loss[name], rtol=LOSS_RTOL, err_msg=name)
    np.testing.assert_allclose(total, loss["actor_total"] + loss["critic_total"], rtol=LOSS_RTOL)
    assert_trees_close(actor_grad, actor_from_authors(fx["actor_grads"]), what="actor gradient")
    assert_trees_close(critic_grad, critic_from_authors(fx["critic_grads"]), what="critic gradient")
    opt = module.optimiser(lr, max_grad_norm)
    for ours, grad, theirs, what in ((actor, actor_grad, actor_from_authors(fx["actor_params_after"]), "actor"),
                                     (critic, critic_grad, critic_from_authors(fx["critic_params_after"]), "critic")):
        updates, _ = opt.update(grad, opt.init(ours))
        assert_trees_close(jax.tree.map(jnp.add, ours, updates), theirs, what=f"{what} after one step")
    # GAE: the authors' transition.done marks the step's observation as an episode's first, and
    # last_done the final one's; this project's done[t] ends the episode at transition t.
    g = fx["gae"]
    dones = np.concatenate([b["start"][1:], g["last_done"][None, :, 0]], axis=0)
    dones = np.broadcast_to(dones[..., None], b["value"].shape)
    advantage, target = module.gae(g["reward"], b["value"], dones, g["last_value"], gamma, gae_lambda)
    np.testing.assert_allclose(advantage, g["advantage"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target, g["target"], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# MAT (Mava's mat.py), magpo_mat.py's guider: at --delta inf --alpha 0 its loss is MAT's PPO loss.
# --------------------------------------------------------------------------------------------------
def attention_from_authors(a):
    return {"w_q": a["query"], "w_k": a["key"], "w_v": a["value"], "w_o": a["proj"]}


def feed_forward_from_authors(m):
    return {"Dense_0": m["layers_0"], "Dense_1": m["layers_2"]}


def mat_from_authors(tree, n_block):
    enc, dec = tree["params"]["encoder"], tree["params"]["decoder"]
    params = {
        "obs_norm": enc["obs_encoder"]["layers_0"], "obs_embed": enc["obs_encoder"]["layers_1"],
        "block_norm": enc["ln"], "value_hidden": enc["head"]["layers_0"], "value_norm": enc["head"]["layers_2"],
        "value_out": enc["head"]["layers_3"], "action_embed": dec["action_encoder"]["layers_0"],
        "action_norm": dec["ln"], "policy_hidden": dec["head"]["layers_0"], "policy_norm": dec["head"]["layers_2"],
        "policy_out": dec["head"]["layers_3"],
    }
    for i in range(n_block):
        e, d = enc["blocks"][f"layers_{i}"], dec[f"cross_attention_block_{i}"]
        params[f"encoder_blocks_{i}"] = {"attention": attention_from_authors(e["attn"]),
                                         "feed_forward": feed_forward_from_authors(e["mlp"]),
                                         "norm1": e["ln1"], "norm2": e["ln2"]}
        params[f"decoder_blocks_{i}"] = {"self_attention": attention_from_authors(d["attn1"]),
                                         "cross_attention": attention_from_authors(d["attn2"]),
                                         "feed_forward": feed_forward_from_authors(d["mlp"]),
                                         "norm1": d["ln1"], "norm2": d["ln2"], "norm3": d["ln3"]}
    return {"params": params}


def test_mat_forward_loss_gradient_and_step_match_mava_mat():
    fx = load("mat")
    n_block, n_head, embed = (int(x) for x in fx["config"][:3])
    clip_eps, ent_coef, vf_coef, lr, max_grad_norm = (float(x) for x in fx["config"][3:])
    b = fx["batch"]
    T, B, A = b["action"].shape
    args = mm.Args(env_id=f"coordsum-{A}x{b['action_mask'].shape[-1]}", num_envs=B, rollout_length=T,
                   total_timesteps=B * T, num_evaluations=1, n_block=n_block, n_head=n_head, embed_dim=embed,
                   layer_size=b["h0"].shape[-1], gru_size=b["h0"].shape[-1], delta=float("inf"), alpha=0.0,
                   clip_eps=clip_eps, ent_coef=ent_coef, vf_coef=vf_coef, lr=lr, max_grad_norm=max_grad_norm)
    trainer = mm.make_train(args, mm.make_env(args.env_id))
    guider = mat_from_authors(fx["params"], n_block)
    # Forward (the decoder teacher-forced with the actions taken): values and log-probabilities.
    value, out = trainer.guider_train_pass(guider, mm.Transition(
        obs=b["obs"], start=b["start"], action_mask=b["action_mask"], action=b["action"], log_prob=None,
        value=None, reward=None, done=None))
    log_prob, entropy = mm.log_prob_entropy(mm.mask_logits(out, b["action_mask"], False), b["action"], False)
    forward = fx["forward"]
    np.testing.assert_allclose(value, forward["value"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prob, forward["log_prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy, forward["entropy"], rtol=1e-5, atol=1e-6)
    # The loss: magpo_mat.py's guider terms at --delta inf --alpha 0 against mat.py's _loss_fn.
    learner = mm.RecurrentNet(b["action_mask"].shape[-1], 0.01, args.layer_size, args.gru_size).init(
        jax.random.PRNGKey(0), jnp.asarray(b["h0"][:1]), jnp.asarray(b["obs"][0, :1]), jnp.ones((1, A), bool))
    traj = mm.Transition(obs=b["obs"], start=b["start"], action_mask=b["action_mask"], action=b["action"],
                         log_prob=b["log_prob"], value=b["value"], reward=np.zeros((T, B), np.float32),
                         done=np.zeros((T, B), bool))
    batch = (traj, jnp.asarray(b["h0"]), b["advantage"], b["target"])
    hp = mm.hparams_from_args(args)

    def guider_total(guider):  # magpo_mat.py's guider loss (Eq. 8-9), the learner's terms left out
        _, s = trainer.loss(guider, learner, batch, hp)
        return s["guider_loss"] + s["kl_loss"] - ent_coef * s["entropy"] + vf_coef * s["value_loss"], s

    (total, stats), grad = jax.value_and_grad(guider_total, has_aux=True)(guider)
    loss = fx["loss"]
    np.testing.assert_allclose(total, loss["total"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(stats["guider_loss"], loss["actor_loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(stats["value_loss"], loss["value_loss"], rtol=LOSS_RTOL)
    np.testing.assert_allclose(stats["entropy"], loss["entropy"], rtol=LOSS_RTOL)
    assert stats["kl_loss"] == 0
    assert_trees_close(grad, mat_from_authors(fx["grads"], n_block), what="MAT gradient")
    opt = mm.optimiser(lr, max_grad_norm)
    updates, _ = opt.update(grad, opt.init(guider))
    assert_trees_close(jax.tree.map(jnp.add, guider, updates), mat_from_authors(fx["params_after"], n_block),
                       what="MAT after one step")


# --------------------------------------------------------------------------------------------------
# Environments: the adapter against Mava's wrapped environments, step by step over one episode.
# --------------------------------------------------------------------------------------------------
ENV_IDS = ["coordsum-3x10", "coordsum-8x15", "rware-tiny-2ag", "lbf-2s-8x8-2p-2f-coop", "con-5x5x3a"]


@pytest.fixture
def injected_targets(monkeypatch):
    """The authors' CoordSum draws an episode's targets at reset, this project's one per step from the
    step's key: the test hands both sides the same targets."""
    import coordsum

    schedule = {}
    reset, step = coordsum.CoordSum.reset, coordsum.CoordSum.step

    def reset_injected(self, key):
        state, _ = reset(self, key)
        state = state._replace(target=schedule["targets"][0])
        return state, self._obs(state)

    def step_injected(self, key, state, actions):
        state, _, reward, done = step(self, key, state, actions)
        state = state._replace(target=schedule["targets"][jnp.minimum(state.step_count, len(schedule["targets"]) - 1)])
        return state, self._obs(state), reward, done

    monkeypatch.setattr(coordsum.CoordSum, "reset", reset_injected)
    monkeypatch.setattr(coordsum.CoordSum, "step", step_injected)
    return schedule


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_environment_traces_match_mava(env_id, injected_targets):
    """Observations (agent id first), global state, action masks, step counts, team rewards, episode
    ends and returns, exactly, from the same reset key and actions. Past the episode's end the two
    sides reset from different keys, so the trace stops there."""
    fx = load("environments")[env_id]
    if "targets" in fx:
        injected_targets["targets"] = jnp.asarray(fx["targets"], jnp.int32)
    env = ms.make_env(env_id)
    step = jax.jit(env.step)
    state, ts = env.reset(jnp.asarray(fx["inner_reset_key"]))  # the key the jumanji env saw
    first = fx["first"]
    np.testing.assert_array_equal(ts.obs, first["obs"])
    np.testing.assert_array_equal(ts.action_mask, first["mask"])
    np.testing.assert_array_equal(ts.state, first["global_state"][0])
    trace = fx["trace"]
    num_steps = int(np.argmax(trace["done"])) + 1
    for t in range(num_steps):
        state, ts = step(jax.random.PRNGKey(t), state, jnp.asarray(trace["action"][t]))
        where = f"{env_id}, step {t + 1}"
        np.testing.assert_array_equal(ts.reward, trace["reward"][t].reshape(-1)[0], err_msg=where)
        assert bool(ts.done) == bool(trace["done"][t]), where
        if ts.done:  # the episode's end: its return; the observation is already the next episode's
            np.testing.assert_allclose(ts.episode_return, trace["episode_return"][t], rtol=1e-6, err_msg=where)
            break
        np.testing.assert_array_equal(ts.obs, trace["obs"][t], err_msg=where)
        np.testing.assert_array_equal(ts.action_mask, trace["mask"][t], err_msg=where)
        np.testing.assert_array_equal(ts.state, trace["global_state"][t][0], err_msg=where)
        np.testing.assert_array_equal(ts.episode_length, trace["step_count"][t].reshape(-1)[0], err_msg=where)
    assert t + 1 == num_steps
    assert np.any(trace["reward"][:num_steps] != 0), "the trace must earn some reward"
