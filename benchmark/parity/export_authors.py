"""Export parity fixtures from the authors' code: numbers only, none of their code.

Run inside the authors' virtualenv, from a copy of their repository (benchmark/authors/README.md):

    PYTHONPATH=$AUTHORS_SRC $AUTHORS_VENV/bin/python benchmark/parity/export_authors.py \
        --authors-src $AUTHORS_SRC --out tests/fixtures/parity

It builds the authors' networks (Mava's SableNetwork, RecurrentActor, RecurrentValueNet, MAT), draws
parameters and a batch, runs their loss functions (the nested `_guider_loss_fn`, `_actor_loss_fn` and
`_critic_loss_fn` of rec_magpo.py, rec_ippo.py, rec_mappo.py and mat.py, taken from their source
text with `ast` and evaluated in the namespace of their module, so no line of theirs is copied),
their gradients and one optimiser step, their acting step and their environments; and writes
every input and output to one .npz per component. tests/test_parity_authors.py feeds the same
inputs to this project's scripts and compares.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import pathlib
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np

AUTHORS_COMMIT = "d2ac38b"  # liyheng/MAGPO, the code the paper's numbers come from


def check_commit(src: pathlib.Path):
    """The fixtures are tied to one commit of the authors' code: refuse any other."""
    stamp = src / ".authors_commit"
    commit = stamp.read_text().strip() if stamp.exists() else None
    if commit is None and (src / ".git").exists():
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    if not commit or not commit.startswith(AUTHORS_COMMIT):
        sys.exit(f"error: --authors-src must hold liyheng/MAGPO at commit {AUTHORS_COMMIT} "
                 f"(found {commit or 'no commit stamp'}); benchmark/authors/setup.sh writes .authors_commit")


import jax  # noqa: E402  (after the commit check's imports, so a wrong venv fails on jax, not on mava)
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import tensorflow_probability.substrates.jax.distributions as tfd  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def nested_function(module, name: str, **closure):
    """The nested function `name` of an authors' module, compiled from their source in the namespace
    of that module plus `closure` (the variables it closes over in their code)."""
    source = pathlib.Path(module.__file__).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            namespace = {**vars(module), **closure}
            exec(compile(textwrap.dedent(ast.get_source_segment(source, node)), module.__file__, "exec"), namespace)
            return namespace[name]
    raise LookupError(f"{name} not in {module.__file__}")


def flatten(tree, prefix: str) -> dict:
    """Pytree of arrays -> {'prefix/key/subkey': array} (dicts by key, sequences by index)."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict) or hasattr(node, "items"):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, (tuple, list)):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
        elif node is not None:
            out[path] = np.asarray(node)

    walk(tree, prefix)
    return out


def one_adam_step(params, grads, lr, max_grad_norm):
    """The authors' optimiser (clip by global norm, Adam with eps 1e-5) from a fresh state."""
    opt = optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))
    updates, _ = opt.update(grads, opt.init(params))
    return optax.apply_updates(params, updates)


def perturb(params, key, scale, skip=("ffn",)):
    """Random offsets on every leaf (zero-initialised biases included), so that the fixtures test
    more than initial values. Leaves under `skip` (Sable's zero-initialised SwiGLU) stay as they are."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        names = [str(getattr(p, "key", p)) for p in path]
        new.append(leaf if any(s in names for s in skip) else leaf + scale * jax.random.normal(k, leaf.shape))
    return jax.tree_util.tree_unflatten(treedef, new)


# ------------------------------------------------------------------------------------------------
# Shared batch: T timesteps x B environments x A agents, episode starts inside the sequences,
# masked actions, behaviour log-probabilities off the current policy (so ratios clip).
# ------------------------------------------------------------------------------------------------
T, B, A, OBS, ACTIONS, HIDDEN = 8, 4, 3, 6, 5, 16


def make_batch(key, obs_dim=OBS, critic_dim=None):
    k = jax.random.split(key, 8)
    start = np.zeros((T, B), bool)
    start[0, 0] = start[3, 0] = True  # env 0: an episode starts at t=0 and again at t=3
    start[5, 1] = True  # env 1: one start inside
    start[2, 2] = start[6, 2] = True  # env 2: two starts; env 3: none (the carried state matters)
    step = np.zeros((T, B), np.int32)
    for b in range(B):
        count = 7 * b + 2
        for t in range(T):
            count = 0 if start[t, b] else count + 1
            step[t, b] = count
    mask = np.array(jax.random.bernoulli(k[0], 0.75, (T, B, A, ACTIONS)))
    mask[..., 0] = True  # at least one legal action
    logits = np.where(mask, np.asarray(jax.random.normal(k[1], mask.shape)), -np.inf)
    action = np.asarray(jax.random.categorical(k[2], logits), np.int32)  # always a legal action
    batch = {
        "obs": np.asarray(jax.random.normal(k[3], (T, B, A, obs_dim))),
        "start": start, "step": step, "action_mask": mask, "action": action,
        "value": np.asarray(jax.random.normal(k[4], (T, B, A))),
        "advantage": np.asarray(jax.random.normal(k[5], (T, B, A))) * 2 + 0.3,
        "target": np.asarray(jax.random.normal(k[6], (T, B, A))),
        "h0": np.asarray(jax.random.normal(k[7], (B, A, HIDDEN))) * 0.5,
    }
    if critic_dim:
        batch["critic_in"] = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (T, B, A, critic_dim)))
        batch["critic_h0"] = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (B, A, HIDDEN))) * 0.5
    return batch


def concat_time_and_agents(x):  # [T, B, A, ...] -> [B, T * A, ...], as the authors' minibatches are laid out
    x = jnp.moveaxis(jnp.asarray(x), 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def mava_actor(action_dim, hidden=HIDDEN):
    from mava.networks import RecurrentActor
    from mava.networks.heads import DiscreteActionHead
    from mava.networks.torsos import MLPTorso

    return RecurrentActor(MLPTorso([hidden]), MLPTorso([hidden]), DiscreteActionHead(action_dim), hidden)


def mava_critic(centralised, hidden=HIDDEN):
    from mava.networks import RecurrentValueNet
    from mava.networks.torsos import MLPTorso

    return RecurrentValueNet(MLPTorso([hidden]), MLPTorso([hidden]), centralised, hidden)


def init_actor(actor, key, obs_dim):
    from mava.types import Observation

    obs = Observation(jnp.zeros((1, B, A, obs_dim)), jnp.ones((1, B, A, ACTIONS), bool))
    return actor.init(key, jnp.zeros((B, A, HIDDEN)), (obs, jnp.zeros((1, B, A), bool)))


# ------------------------------------------------------------------------------------------------
# MAGPO (rec_magpo.py): both losses, their gradients, one optimiser step.
# ------------------------------------------------------------------------------------------------
SABLE_CONFIGS = [  # (n_block, n_head, embed_dim, decay_scaling_factor, delta, alpha)
    (1, 1, 16, 0.8, 1.5, 1.0),
    (2, 2, 16, 1.0, 1.3, 2.0),
    (1, 4, 64, 0.5, 1.2, 0.5),  # 4 heads of 16: Sable normalises each head in 4 groups of 4 features
]


def sable_network(n_block, n_head, embed, decay, chunk_timesteps=T):
    from mava.networks import SableNetwork

    net = OmegaConf.create({"n_block": n_block, "n_head": n_head, "embed_dim": embed})
    mem = OmegaConf.create({"type": "rec_sable", "decay_scaling_factor": decay, "timestep_positional_encoding": True,
                            "timestep_chunk_size": None, "chunk_size": chunk_timesteps * A})
    return SableNetwork(n_agents=A, n_agents_per_chunk=A, action_dim=ACTIONS, net_config=net, memory_config=mem,
                        action_space_type="discrete"), net


def export_magpo(out: pathlib.Path):
    from mava.networks.utils.sable import get_init_hidden_state
    from mava.systems.gpo.anakin import rec_magpo
    from mava.systems.gpo.types import GPOTransition, HiddenStates, SableHiddenStates
    from mava.types import Observation

    for index, (n_block, n_head, embed, decay, delta, alpha) in enumerate(SABLE_CONFIGS):
        key = jax.random.PRNGKey(100 + index)
        k = jax.random.split(key, 8)
        sable, net_config = sable_network(n_block, n_head, embed, decay)
        actor = mava_actor(ACTIONS)
        obs0 = Observation(jnp.zeros((1, A, OBS)), jnp.ones((1, A, ACTIONS), bool), jnp.zeros((1, A), jnp.int32))
        guider_params = sable.init(k[0], obs0, get_init_hidden_state(net_config, 1), k[1], method="get_actions")
        guider_params = perturb(guider_params, k[2], 0.15)
        actor_params = perturb(init_actor(actor, k[3], OBS), k[4], 0.3)
        batch = make_batch(k[5])
        hs_shape = (B, n_head, n_block, embed // n_head, embed // n_head)
        prev = SableHiddenStates(*(0.3 * jax.random.normal(kk, hs_shape) for kk in jax.random.split(k[6], 3)))
        # Behaviour log-probabilities: the guider's own, shifted, so that PPO ratios clip on both sides.
        obs = Observation(*(concat_time_and_agents(batch[n]) for n in ("obs", "action_mask")),
                          concat_time_and_agents(np.broadcast_to(batch["step"][..., None], (T, B, A))))
        start = concat_time_and_agents(np.broadcast_to(batch["start"][..., None], (T, B, A)))
        action = concat_time_and_agents(batch["action"])
        _, guider_log_prob, _, _ = sable.apply(guider_params, obs, action, prev, start, k[7])
        shift = 0.4 * jax.random.normal(jax.random.fold_in(key, 9), guider_log_prob.shape)
        old_log_prob = np.asarray(jnp.moveaxis((guider_log_prob + shift).reshape(B, T, A), 0, 1))
        batch["log_prob"] = old_log_prob

        config = SimpleNamespace(system=SimpleNamespace(clip_gpo=delta, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5))
        apply = dict(sable_apply_fn=sable.apply, actor_apply_fn=actor.apply, config=config, n_agents=A, alpha=alpha,
                     prev_hstates=prev)
        guider_loss_fn = nested_function(rec_magpo, "_guider_loss_fn", **apply)
        actor_loss_fn = nested_function(rec_magpo, "_actor_loss_fn", **apply)
        sable_dummy = SableHiddenStates(*(jnp.zeros((T, B, A)),) * 3)  # stored in the batch, unused by the losses
        traj = GPOTransition(
            done=np.broadcast_to(batch["start"][..., None], (T, B, A)), action=batch["action"], value=batch["value"],
            reward=np.zeros((T, B, A)), log_prob=old_log_prob,
            obs=Observation(batch["obs"], batch["action_mask"], np.broadcast_to(batch["step"][..., None], (T, B, A))),
            hstates=HiddenStates(sable_dummy, np.broadcast_to(batch["h0"], (T, B, A, HIDDEN))))
        traj = jax.tree.map(concat_time_and_agents, traj)  # the authors' minibatch layout [B, T * A, ...]
        gae, targets = concat_time_and_agents(batch["advantage"]), concat_time_and_agents(batch["target"])
        (g_total, (g_surrogate, g_entropy, g_value, g_kl)), g_grads = jax.value_and_grad(guider_loss_fn, has_aux=True)(
            guider_params, actor_params, traj, gae, targets, prev, k[7])
        (a_total, (a_ppo, a_kl)), a_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
            actor_params, guider_params, traj, gae, k[7])
        # How many samples left the delta band (both sides must have some inside and some outside).
        _, actor_policy = actor.apply(actor_params, jnp.asarray(batch["h0"]),
                                      (Observation(batch["obs"], batch["action_mask"]),
                                       np.broadcast_to(batch["start"][..., None], (T, B, A))))
        actor_log_prob = concat_time_and_agents(actor_policy.log_prob(batch["action"]))
        _, guider_log_prob, _, _ = sable.apply(guider_params, obs, action, prev, start, k[7])
        outside = float(jnp.mean(jnp.abs(guider_log_prob - actor_log_prob) > jnp.log(delta)))
        assert 0.05 < outside < 0.95, f"config {index}: {outside:.2f} of the samples outside the band"
        lr, max_grad_norm = 2.5e-4, 0.5
        arrays = {
            **{f"batch/{n}": v for n, v in batch.items()},
            **flatten(prev._asdict(), "guider_state"),
            **flatten(guider_params, "guider_params"), **flatten(actor_params, "actor_params"),
            **flatten(g_grads, "guider_grads"), **flatten(a_grads, "actor_grads"),
            **flatten(one_adam_step(guider_params, g_grads, lr, max_grad_norm), "guider_params_after"),
            **flatten(one_adam_step(actor_params, a_grads, lr, max_grad_norm), "actor_params_after"),
            "loss/guider_total": g_total, "loss/guider_loss": g_surrogate, "loss/entropy": g_entropy,
            "loss/value_loss": g_value, "loss/kl_loss": g_kl, "loss/learner_total": a_total,
            "loss/actor_loss": a_ppo, "loss/distill_loss": a_kl, "loss/outside_band": outside,
            "config": np.array([n_block, n_head, embed, decay, delta, alpha, 0.2, 0.01, 0.5, lr, max_grad_norm]),
        }
        np.savez_compressed(out / f"magpo_sable_{index}.npz", **arrays)
        print(f"magpo_sable_{index}: guider {float(g_total):.6f}, learner {float(a_total):.6f}, "
              f"outside band {outside:.2f}")


# ------------------------------------------------------------------------------------------------
# Sable acting (get_actions): several steps with an episode reset between them.
# ------------------------------------------------------------------------------------------------
def export_sable_acting(out: pathlib.Path):
    from mava.networks.utils.sable import get_init_hidden_state
    from mava.types import Observation

    n_block, n_head, embed, decay = 2, 2, 16, 0.8
    key = jax.random.PRNGKey(7)
    k = jax.random.split(key, 6)
    sable, net_config = sable_network(n_block, n_head, embed, decay)
    obs0 = Observation(jnp.zeros((1, A, OBS)), jnp.ones((1, A, ACTIONS), bool), jnp.zeros((1, A), jnp.int32))
    params = perturb(sable.init(k[0], obs0, get_init_hidden_state(net_config, 1), k[1], method="get_actions"),
                     k[2], 0.3)
    steps = 5
    obs = np.asarray(jax.random.normal(k[3], (steps, B, A, OBS)))
    mask = np.array(jax.random.bernoulli(k[4], 0.7, (steps, B, A, ACTIONS)))
    mask[..., 2] = True
    start = np.zeros((steps, B), bool)
    start[0] = True  # every environment starts an episode at step 0
    start[3, 1] = start[2, 3] = True  # and two start again later: their retention states restart
    step_count = np.zeros((steps, B), np.int32)
    for t in range(1, steps):
        step_count[t] = np.where(start[t], 0, step_count[t - 1] + 1)
    hstates = get_init_hidden_state(net_config, B)
    actions, log_probs, values = [], [], []
    for t in range(steps):
        hstates = jax.tree.map(lambda h: jnp.where(start[t][:, None, None, None, None], 0.0, h), hstates)
        ob = Observation(obs[t], mask[t], np.broadcast_to(step_count[t][:, None], (B, A)))
        act, logp, value, hstates = sable.apply(params, ob, hstates, jax.random.fold_in(k[5], t),
                                                method="get_actions")
        actions.append(act), log_probs.append(logp), values.append(value)
    np.savez_compressed(out / "sable_acting.npz", **flatten(params, "params"), obs=obs, action_mask=mask,
                        start=start, step=step_count, action=np.stack(actions), log_prob=np.stack(log_probs),
                        value=np.stack(values), **flatten(hstates._asdict(), "final_state"),
                        config=np.array([n_block, n_head, embed, decay]))
    print(f"sable_acting: {steps} steps, actions {np.stack(actions)[:, 0].tolist()}")


# ------------------------------------------------------------------------------------------------
# rec_ippo.py / rec_mappo.py: actor and critic losses and gradients, and GAE.
# ------------------------------------------------------------------------------------------------
def export_ppo(out: pathlib.Path, system: str):
    from mava.systems.ppo.types import HiddenStates, RNNPPOTransition
    from mava.types import Observation, ObservationGlobalState
    from mava.utils.multistep import calculate_gae

    module = importlib.import_module(f"mava.systems.ppo.anakin.{system}")
    centralised = system == "rec_mappo"
    key = jax.random.PRNGKey(11 if centralised else 10)
    k = jax.random.split(key, 6)
    critic_dim = A * 5 if centralised else OBS
    batch = make_batch(k[0], critic_dim=critic_dim)
    actor, critic = mava_actor(ACTIONS), mava_critic(centralised)
    actor_params = perturb(init_actor(actor, k[1], OBS), k[2], 0.3)
    if centralised:
        obs_c = ObservationGlobalState(jnp.zeros((1, B, A, OBS)), jnp.ones((1, B, A, ACTIONS), bool),
                                       jnp.zeros((1, B, A, critic_dim)))
    else:
        obs_c = Observation(jnp.zeros((1, B, A, OBS)), jnp.ones((1, B, A, ACTIONS), bool))
    critic_params = perturb(critic.init(k[3], jnp.zeros((B, A, HIDDEN)), (obs_c, jnp.zeros((1, B, A), bool))),
                            k[4], 0.3)
    done = np.broadcast_to(batch["start"][..., None], (T, B, A))
    if centralised:
        obs = ObservationGlobalState(batch["obs"], batch["action_mask"], batch["critic_in"])
    else:  # IPPO's critic reads the agent's own view; the fixture's critic_in is that view
        batch["critic_in"] = batch["obs"]
        obs = Observation(batch["obs"], batch["action_mask"])
    _, policy = actor.apply(actor_params, jnp.asarray(batch["h0"]), (obs, done))
    batch["log_prob"] = np.asarray(policy.log_prob(batch["action"]) + 0.4 * jax.random.normal(k[5], (T, B, A)))
    traj = RNNPPOTransition(done=done, action=batch["action"], value=batch["value"], reward=np.zeros((T, B, A)),
                            log_prob=batch["log_prob"], obs=obs,
                            hstates=HiddenStates(np.broadcast_to(batch["h0"], (T, B, A, HIDDEN)),
                                                 np.broadcast_to(batch["critic_h0"], (T, B, A, HIDDEN))))
    config = SimpleNamespace(system=SimpleNamespace(clip_eps=0.2, ent_coef=0.01, vf_coef=0.5))
    fns = dict(actor_apply_fn=actor.apply, critic_apply_fn=critic.apply, config=config)
    actor_loss_fn = nested_function(module, "_actor_loss_fn", **fns)
    critic_loss_fn = nested_function(module, "_critic_loss_fn", **fns)
    (a_total, (a_loss, entropy)), a_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
        actor_params, traj, batch["advantage"], k[5])
    (c_total, value_loss), c_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(critic_params, traj,
                                                                                     batch["target"])
    # GAE over a rollout with episode ends inside (the authors' transition.done is the *start* flag).
    reward = np.asarray(jax.random.normal(jax.random.fold_in(key, 3), (T, B, A)))
    last_value = np.asarray(jax.random.normal(jax.random.fold_in(key, 4), (B, A)))
    last_done = np.array([True, False, False, True])[:, None].repeat(A, 1)
    gae_traj = RNNPPOTransition(done=done, action=None, value=batch["value"], reward=reward, log_prob=None,
                                obs=None, hstates=None)
    advantages, targets = calculate_gae(gae_traj, last_value, last_done, 0.99, 0.95)
    lr, max_grad_norm = 2.5e-4, 0.5
    np.savez_compressed(
        out / f"{system}.npz", **{f"batch/{n}": v for n, v in batch.items()},
        **flatten(actor_params, "actor_params"), **flatten(critic_params, "critic_params"),
        **flatten(a_grads, "actor_grads"), **flatten(c_grads, "critic_grads"),
        **flatten(one_adam_step(actor_params, a_grads, lr, max_grad_norm), "actor_params_after"),
        **flatten(one_adam_step(critic_params, c_grads, lr, max_grad_norm), "critic_params_after"),
        **{"loss/actor_total": a_total, "loss/actor_loss": a_loss, "loss/entropy": entropy,
           "loss/critic_total": c_total, "loss/value_loss": value_loss},
        **{"gae/reward": reward, "gae/last_value": last_value, "gae/last_done": last_done,
           "gae/advantage": advantages, "gae/target": targets},
        config=np.array([0.2, 0.01, 0.5, 0.99, 0.95, lr, max_grad_norm]))
    print(f"{system}: actor {float(a_total):.6f}, critic {float(c_total):.6f}")


# ------------------------------------------------------------------------------------------------
# Environments, as the authors' systems see them (Mava's wrappers: agent id, global state, auto-reset,
# episode metrics). One episode each, from a given reset key, with actions drawn from the action mask.
# ------------------------------------------------------------------------------------------------
ENV_TRACES = {  # name: (env config, scenario, reset key, steps to record at most)
    "coordsum-3x10": ("coordsum", "3x10-30", 3, 100),
    "coordsum-8x15": ("coordsum", "8x15-100", 4, 100),
    "rware-tiny-2ag": ("rware", "tiny-2ag", None, 500),  # key searched for: an episode that earns reward
    "lbf-2s-8x8-2p-2f-coop": ("lbf", "2s-8x8-2p-2f-coop", None, 100),  # key searched for: food eaten
    "con-5x5x3a": ("vector-connector", "con-5x5x3a", 6, 25),
}


def authors_env(env_config, scenario):
    from hydra import compose, initialize_config_dir
    from mava.utils import make_env as environments

    with initialize_config_dir(config_dir=str(pathlib.Path("mava/configs/default").resolve()), version_base="1.2"):
        config = compose("rec_mappo.yaml", overrides=[f"env={env_config}", f"env/scenario={scenario}"])
    OmegaConf.set_struct(config, False)
    env, _ = environments.make(config, add_global_state=True)
    return env


def scripted_actions(key, mask, num_steps, target=None):
    """Random legal actions; on CoordSum half of the steps aim at the target (so that rewards of 1 and
    2 both occur)."""
    k1, k2 = jax.random.split(key)
    logits = jnp.where(mask, 0.0, -jnp.inf)
    actions = jax.random.categorical(k1, logits)
    if target is None:
        return actions
    n_agents, n_actions = mask.shape
    rest = jnp.clip(target - jnp.sum(actions[1:]), 0, n_actions - 1)
    return jnp.where(jax.random.bernoulli(k2), actions.at[0].set(rest), actions)


def inner_state(state):
    while not hasattr(state, "target"):  # the wrappers' states hold the env's as `env_state`
        state = state.env_state
    return state


def run_episode(env, reset_key, action_key, num_steps, coordsum):
    state, ts = env.reset(reset_key)

    def one_step(carry, key):
        state, ts = carry
        target = inner_state(state).target[inner_state(state).step_count] if coordsum else None
        action = scripted_actions(key, ts.observation.action_mask, num_steps, target)
        state, next_ts = env.step(state, action)
        record = dict(action=action, obs=next_ts.observation.agents_view, mask=next_ts.observation.action_mask,
                      global_state=next_ts.observation.global_state, reward=next_ts.reward, done=next_ts.last(),
                      step_count=next_ts.observation.step_count,
                      episode_return=next_ts.extras["episode_metrics"]["episode_return"])
        return (state, next_ts), record

    _, trace = jax.lax.scan(one_step, (state, ts), jax.random.split(action_key, num_steps))
    first = dict(obs=ts.observation.agents_view, mask=ts.observation.action_mask,
                 global_state=ts.observation.global_state, step_count=ts.observation.step_count)
    return first, trace, (inner_state(state).target if coordsum else None)


def export_envs(out: pathlib.Path):
    arrays = {}
    for name, (env_config, scenario, seed, num_steps) in ENV_TRACES.items():
        env = authors_env(env_config, scenario)
        coordsum = env_config == "coordsum"
        run = jax.jit(lambda rk, ak: run_episode(env, rk, ak, num_steps, coordsum))
        if seed is None:  # search reset keys for an episode whose reward is not all zero before it ends
            for seed in range(1000):
                _, trace, _ = run(jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1))
                ended = np.cumsum(np.asarray(trace["done"])) > 0
                earned = np.asarray(trace["reward"]).reshape(num_steps, -1)[:, 0] != 0
                if earned[~ended | np.asarray(trace["done"])].any():
                    break
        first, trace, targets = run(jax.random.PRNGKey(seed), jax.random.PRNGKey(seed + 1))
        # Mava's RecordEpisodeMetrics wrapper resets the environment with split(key)[1]: the inner key.
        arrays.update({f"{name}/inner_reset_key": np.asarray(jax.random.split(jax.random.PRNGKey(seed))[1]),
                       **flatten(first, f"{name}/first"), **flatten(trace, f"{name}/trace")})
        if targets is not None:
            arrays[f"{name}/targets"] = targets
        done = np.asarray(trace["done"])
        reward = np.asarray(trace["reward"]).reshape(num_steps, -1)[:, 0]
        print(f"{name}: reset key {seed}, first episode end at step {int(np.argmax(done)) + 1 if done.any() else None}, "
              f"rewards {sorted(set(np.round(reward, 3).tolist()))[:6]}")
    np.savez_compressed(out / "environments.npz", **arrays)


# ------------------------------------------------------------------------------------------------
# MAT (Mava's mat.py, the guider of magpo_mat.py): forward outputs, PPO loss, gradients, one step.
# ------------------------------------------------------------------------------------------------
def export_mat(out: pathlib.Path):
    from mava.networks.mat_network import MultiAgentTransformer
    from mava.systems.mat.anakin import mat
    from mava.systems.ppo.types import PPOTransition
    from mava.types import Observation

    n_block, n_head, embed = 2, 2, 16
    key = jax.random.PRNGKey(21)
    k = jax.random.split(key, 6)
    net_config = OmegaConf.create({"n_block": n_block, "n_head": n_head, "embed_dim": embed, "use_rmsnorm": False,
                                   "use_swiglu": False})
    network = MultiAgentTransformer(action_dim=ACTIONS, n_agent=A, net_config=net_config, action_space_type="discrete")
    obs0 = Observation(jnp.zeros((1, A, OBS)), jnp.ones((1, A, ACTIONS), bool))
    params = perturb(network.init(k[0], obs0, k[1], method="get_actions"), k[2], 0.15)
    batch = make_batch(k[3])
    flat = lambda x: jnp.asarray(x).reshape(T * B, *np.shape(x)[2:])  # noqa: E731  MAT sees single timesteps
    obs = Observation(flat(batch["obs"]), flat(batch["action_mask"]))
    log_prob, value, entropy = network.apply(params, obs, flat(batch["action"]), k[4])
    batch["log_prob"] = np.asarray((log_prob + 0.3 * jax.random.normal(k[5], log_prob.shape)).reshape(T, B, A))
    clip_eps, ent_coef, vf_coef, lr, max_grad_norm = 0.1, 0.01, 0.5, 5e-4, 5.0
    config = SimpleNamespace(system=SimpleNamespace(clip_eps=clip_eps, ent_coef=ent_coef, vf_coef=vf_coef))
    loss_fn = nested_function(mat, "_loss_fn", actor_apply_fn=network.apply, config=config)
    traj = PPOTransition(done=None, action=flat(batch["action"]), value=flat(batch["value"]), reward=None,
                         log_prob=flat(batch["log_prob"]), obs=obs)
    (total, (actor_loss, entropy_mean, value_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, traj, flat(batch["advantage"]), flat(batch["target"]), k[4])
    np.savez_compressed(
        out / "mat.npz", **{f"batch/{n}": v for n, v in batch.items()}, **flatten(params, "params"),
        **flatten(grads, "grads"), **flatten(one_adam_step(params, grads, lr, max_grad_norm), "params_after"),
        **{"forward/log_prob": log_prob.reshape(T, B, A), "forward/value": value.reshape(T, B, A),
           "forward/entropy": entropy.reshape(T, B, A)},
        **{"loss/total": total, "loss/actor_loss": actor_loss, "loss/entropy": entropy_mean,
           "loss/value_loss": value_loss},
        config=np.array([n_block, n_head, embed, clip_eps, ent_coef, vf_coef, lr, max_grad_norm]))
    print(f"mat: total {float(total):.6f}")


# ------------------------------------------------------------------------------------------------
# The continuous (MPE) actor head: Mava's ContinuousActionHead in a RecurrentActor, log-probabilities of
# squashed actions and its KL (the term MAGPO's distillation uses).
# ------------------------------------------------------------------------------------------------
def export_continuous_head(out: pathlib.Path):
    from mava.networks import RecurrentActor
    from mava.networks.heads import ContinuousActionHead
    from mava.networks.torsos import MLPTorso
    from mava.types import Observation

    dim = 2
    key = jax.random.PRNGKey(31)
    k = jax.random.split(key, 6)
    actor = RecurrentActor(MLPTorso([HIDDEN]), MLPTorso([HIDDEN]), ContinuousActionHead(dim), HIDDEN)
    batch = make_batch(k[0])
    obs = Observation(batch["obs"], np.ones((T, B, A, dim), bool))
    done = np.broadcast_to(batch["start"][..., None], (T, B, A))
    params = [perturb(actor.init(kk, jnp.zeros((B, A, HIDDEN)), (obs, done)), jax.random.fold_in(kk, 1), 0.3)
              for kk in k[1:3]]
    _, policy = actor.apply(params[0], jnp.asarray(batch["h0"]), (obs, done))
    _, other = actor.apply(params[1], jnp.asarray(batch["h0"]), (obs, done))
    action = 0.95 * jnp.tanh(jax.random.normal(k[3], (T, B, A, dim)))  # inside (-0.999, 0.999)
    kl = tfd.kl_divergence(policy.distribution, other.distribution) if hasattr(policy, "distribution") else \
        tfd.kl_divergence(policy, other)
    np.savez_compressed(out / "continuous_head.npz", **flatten(params[0], "params"), **flatten(params[1], "other"),
                        obs=batch["obs"], start=batch["start"], h0=batch["h0"], action=np.asarray(action),
                        log_prob=np.asarray(policy.log_prob(action)), kl=np.asarray(kl))
    print(f"continuous_head: mean log-prob {float(jnp.mean(policy.log_prob(action))):.4f}")


# ------------------------------------------------------------------------------------------------
# Plain Sable (rec_sable.py): its PPO loss, gradient and one step; magpo_sable.py at --delta inf
# --alpha 0 and ctds.py's teacher must compute it.
# ------------------------------------------------------------------------------------------------
def export_sable(out: pathlib.Path):
    from mava.networks.utils.sable import get_init_hidden_state
    from mava.systems.ppo.types import PPOTransition
    from mava.systems.sable.anakin import rec_sable
    from mava.systems.sable.types import HiddenStates
    from mava.types import Observation

    n_block, n_head, embed, decay = 2, 2, 16, 0.8
    key = jax.random.PRNGKey(41)
    k = jax.random.split(key, 8)
    sable, net_config = sable_network(n_block, n_head, embed, decay)
    obs0 = Observation(jnp.zeros((1, A, OBS)), jnp.ones((1, A, ACTIONS), bool), jnp.zeros((1, A), jnp.int32))
    params = perturb(sable.init(k[0], obs0, get_init_hidden_state(net_config, 1), k[1], method="get_actions"),
                     k[2], 0.15)
    batch = make_batch(k[3])
    hs_shape = (B, n_head, n_block, embed // n_head, embed // n_head)
    prev = HiddenStates(*(0.3 * jax.random.normal(kk, hs_shape) for kk in jax.random.split(k[4], 3)))
    step = np.broadcast_to(batch["step"][..., None], (T, B, A))
    obs = Observation(*(concat_time_and_agents(batch[n]) for n in ("obs", "action_mask")), concat_time_and_agents(step))
    start = concat_time_and_agents(np.broadcast_to(batch["start"][..., None], (T, B, A)))
    action = concat_time_and_agents(batch["action"])
    _, log_prob, _, _ = sable.apply(params, obs, action, prev, start, k[5])
    log_prob = log_prob + 0.3 * jax.random.normal(k[6], log_prob.shape)
    batch["log_prob"] = np.asarray(jnp.moveaxis(log_prob.reshape(B, T, A), 0, 1))
    clip_eps, ent_coef, vf_coef, lr, max_grad_norm = 0.2, 0.01, 0.5, 2.5e-4, 0.5
    config = SimpleNamespace(system=SimpleNamespace(clip_eps=clip_eps, ent_coef=ent_coef, vf_coef=vf_coef))
    loss_fn = nested_function(rec_sable, "_loss_fn", sable_apply_fn=sable.apply, config=config)
    traj = PPOTransition(done=start, action=action, value=concat_time_and_agents(batch["value"]), reward=None,
                         log_prob=log_prob, obs=obs)
    (total, (actor_loss, entropy, value_loss)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, traj, concat_time_and_agents(batch["advantage"]), concat_time_and_agents(batch["target"]), prev, k[7])
    np.savez_compressed(
        out / "rec_sable.npz", **{f"batch/{n}": v for n, v in batch.items()}, **flatten(prev._asdict(), "guider_state"),
        **flatten(params, "params"), **flatten(grads, "grads"),
        **flatten(one_adam_step(params, grads, lr, max_grad_norm), "params_after"),
        **{"loss/total": total, "loss/actor_loss": actor_loss, "loss/entropy": entropy, "loss/value_loss": value_loss},
        config=np.array([n_block, n_head, embed, decay, clip_eps, ent_coef, vf_coef, lr, max_grad_norm]))
    print(f"rec_sable: total {float(total):.6f}")


EXPORTS = {
    "magpo": export_magpo,
    "sable_acting": export_sable_acting,
    "ippo": lambda out: export_ppo(out, "rec_ippo"),
    "mappo": lambda out: export_ppo(out, "rec_mappo"),
    "sable": export_sable,
    "mat": export_mat,
    "continuous_head": export_continuous_head,
    "envs": export_envs,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-src", required=True, type=pathlib.Path)
    parser.add_argument("--out", default="tests/fixtures/parity", type=pathlib.Path)
    parser.add_argument("--only", nargs="*", choices=sorted(EXPORTS), help="export only these components")
    args = parser.parse_args()
    check_commit(args.authors_src)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(args.authors_src.resolve()))
    os.chdir(args.authors_src)  # hydra's config search path is relative to their repository
    jax.config.update("jax_default_matmul_precision", "highest")
    for name in args.only or EXPORTS:
        EXPORTS[name](out)


if __name__ == "__main__":
    main()
