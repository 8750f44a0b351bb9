"""MAGPO with a MAT guider: Multi-Agent Guided Policy Optimization (arXiv 2507.18059), Sec. 4 and Fig. 4a.

MAGPO works with any auto-regressive centralised guider; this file uses MAT, the Multi-Agent
Transformer (Wen et al. 2022), the paper's second one. Two policies train together on the same rollouts:
  * the guider mu (MAT: a transformer encoder over all agents' observations with the value head,
    and a decoder that picks the agents' actions one after another, each agent attending to the
    actions already chosen at this step; feed-forward over time: no memory). It is centralised
    and auto-regressive, acts in the environment during training and owns the critic;
  * the learner pi (the GRU actor of ippo.py, on each agent's own observation). It is what gets
    deployed: every evaluation in metrics.jsonl is the learner's, the guider's is logged beside it.
Each update:
  1. the guider rolls out `--rollout-length` steps in `--num-envs` environments; the learner's GRU
     runs along on the same observations so that its training sequences start from the right state;
  2. GAE on the guider's values;
  3. `--ppo-epochs` passes over `--num-minibatches` minibatches of whole environment sequences
     (whole sequences for the learner's GRU; MAT itself would not need them), minimising both
     losses at once from the same parameters:
       guider  (Eq. 8-9)   clipped PPO with the double clip clip(clip(mu/pi, 1/delta, delta) pi/mu_old,
                           1-eps, 1+eps), plus KL(mu || pi) where mu/pi leaves (1/delta, delta), plus
                           the clipped value loss and an entropy bonus; the learner is held fixed;
       learner (Eq. 10-11) KL between the learner and the guider (held fixed), plus lambda (`--alpha`)
                           times clipped PPO with the ratio pi/mu_old (the guider was the behaviour policy).
Search for "Eq. 8" ... "Eq. 11" to find each equation in the code. Everything but the guider's
network is magpo_sable.py's: `diff magpo_sable.py magpo_mat.py` shows the MAT guider and its defaults.

`--delta inf --alpha 0` makes the guider plain MAT (its loss is then exactly MAT's PPO loss and the
learner only imitates it).

Defaults: MAT's (Mava's mat.yaml, with the paper's Table 2 values: GAE 0.9, value coefficient 0.1)
plus MAGPO's delta 1.5 and lambda 1; the paper tunes only delta and lambda on top of the CTCE
method's values. The paper publishes no tuned magpo_mat values; on CoordSum-3x10 give the guider
MAT's tuned values for that task (benchmark/reference/paper_hyperparameters.csv):
    python magpo_mat.py --env-id coordsum-3x10 --num-seeds 10 --num-minibatches 1 --max-grad-norm 10 \\
        --embed-dim 64 --ppo-epochs 5 --clip-eps 0.2 --n-head 4 --ent-coef 0.001 --n-block 2 --lr 2.5e-4
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro
from flax import serialization, traverse_util
from flax.linen.initializers import constant
from flax.linen.initializers import orthogonal as flax_orthogonal

try:  # the environments live beside the scripts, in envs.py (PureJaxRL keeps its wrappers so)
    from envs import EnvSpec, TimeStep, eval_metric_names, headline_metric, make_env
except ModuleNotFoundError as error:
    if error.name != "envs":
        raise
    sys.exit(f"{os.path.basename(__file__)} needs envs.py beside it: copy envs.py from the repository "
             "(and coordsum.py for the CoordSum tasks)")

# XLA:CPU in jax 0.10 hands small matmuls to YNNPACK fusions, which made the many tiny steps of the GRU scans
# about 30% slower on a CPU (README, "JAX 0.6 to 0.10"); off unless XLA_FLAGS says otherwise. Read when the
# backend starts, not at import; jax before 0.10 does not know the flag.
_xla_flags = os.environ.get("XLA_FLAGS", "")
if tuple(int(v) for v in jax.__version__.split(".")[:2]) >= (0, 10) and "ynn_fusion" not in _xla_flags:
    os.environ["XLA_FLAGS"] = f"{_xla_flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


ALGORITHM = "magpo_mat"


@dataclass
class Args:
    env_id: str = "rware-tiny-2ag"
    """environment id `<suite>-<task>`, e.g. rware-tiny-2ag, lbf-2s-8x8-2p-2f-coop, con-5x5x3a,
    mpe-simple_spread_3ag, smax-2s3z, coordsum-3x10; or module:function, a factory of your own environment
    (README, "Your own environment")"""
    seed: int = 0
    """seed of the first run; the i-th of --num-seeds runs uses seed + i, the seed of a single run with
    --seed seed+i (README, "Many runs in one program": what equals what)"""
    num_seeds: int = 1
    """independent runs trained together in one compiled program (per grid point: the numeric hyperparameter
    flags take several values, e.g. --delta 1.2 1.5 inf --alpha 0 1, and their combinations train together)"""
    run_batching: Literal["auto", "vmap", "loop"] = "auto"
    """how that program holds its runs: vmap batches them into every array operation (fast on a GPU); loop
    runs them one after another inside it (on a CPU as fast as separate runs, each run exactly its single
    run); auto: loop on a CPU, vmap elsewhere"""
    total_timesteps: int = 19_988_480
    """environment steps per seed (every parallel environment's step counts once); the default is the
    paper's "20M": the 1,220 updates of 128 x 128 steps its runs made"""
    num_envs: int = 128
    """parallel environments per seed (the paper's 64 envs x Mava's update_batch_size 2 = 128 per update)"""
    rollout_length: int = 128
    """environment steps per environment between two updates"""
    num_evaluations: int = 122
    """evenly spaced evaluations over training"""
    num_eval_episodes: int = 32
    """episodes per evaluation, for the learner and for the guider; the final absolute metric uses 10x as many
    with the best parameters"""
    evaluation_greedy: bool = False
    """evaluate with the most likely action instead of a sampled one"""
    track: bool = False
    """log to Weights & Biases (WANDB_MODE=offline works without an account)"""
    wandb_project: str = "magpo-jax"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user)"""
    wandb_group: str | None = None
    """wandb group, e.g. one per experiment, so that its runs (several tasks, or commands) show together"""
    wandb_tags: tuple[str, ...] = ()
    """wandb tags, beside the script, --env-id and the number of seeds, which are always given"""
    save_model: bool = False
    """write the final and the best parameters of learner and guider as flax msgpack into the run directory"""
    output_dir: str = "runs"
    """where run directories are created"""
    distributed: bool = False
    """several hosts: call jax.distributed.initialize() first, which finds the other processes through the
    cluster's scheduler (SLURM, Open MPI, Kubernetes, Cloud TPU); the environments are split over every host's
    devices and process 0 writes the outputs"""
    resume: str | None = None
    """a run directory to continue from its last checkpoint; flags left out come from its args.json"""
    evaluate: str | None = None
    """a saved parameter file (actor_best.msgpack, or a guided script's guider_best.msgpack) to evaluate
    for --num-eval-episodes episodes per seed instead of training"""
    progress_seconds: float = 10.0
    """seconds between progress lines during training"""
    capture_video: bool = False
    """at the end of training, a GIF of one evaluation episode of the first seed's best policy in the run
    directory (logged to wandb with --track); with --evaluate FILE, of the file's first seed, beside it"""

    alpha: float | tuple[float, ...] = 1.0
    """lambda of Eq. 10: weight of the learner's RL auxiliary term (clipped PPO); 0 = pure distillation"""
    delta: float | tuple[float, ...] = 1.5
    """delta of Eq. 8-9 (> 1): the band (1/delta, delta) that mu/pi is held in; inf removes it (with --alpha
    0: plain MAT)"""
    kl_direction: Literal["guider-learner", "learner-guider"] = "guider-learner"
    """learner's distillation term: KL(mu || pi) as the authors' code computes it, or KL(pi || mu) as Eq. 10
    writes it"""
    shuffle_agents: bool = True
    """train the guider on a random agent order per epoch (as Mava's MAT does); acting uses 0..n-1"""
    ppo_epochs: int = 5
    """passes over the rollout per update"""
    num_minibatches: int = 1
    """minibatches per epoch; each holds num_envs / num_minibatches whole environment sequences"""
    gamma: float | tuple[float, ...] = 0.99
    """discount factor"""
    gae_lambda: float | tuple[float, ...] = 0.9
    """GAE lambda (paper Table 2)"""
    clip_eps: float | tuple[float, ...] = 0.1
    """PPO clipping range (epsilon of Eq. 8-11) for the policy ratios and the value function"""
    ent_coef: float | tuple[float, ...] = 0.01
    """guider entropy bonus coefficient (the learner gets none, as in the authors' code)"""
    vf_coef: float | tuple[float, ...] = 0.1
    """value loss coefficient (paper Table 2)"""
    max_grad_norm: float | tuple[float, ...] = 5.0
    """global gradient-norm clip, applied to guider and learner separately"""
    lr: float | tuple[float, ...] = 5e-4
    """Adam learning rate of both guider and learner (one rate, as in the authors' MAGPO code)"""
    n_block: int = 1
    """guider: transformer blocks in the encoder and in the decoder"""
    n_head: int = 1
    """guider: attention heads per block"""
    embed_dim: int = 64
    """guider: embedding width (divisible by n_head)"""
    layer_size: int = 128
    """learner: width of the dense layer before and after the GRU"""
    gru_size: int = 128
    """learner: GRU hidden size"""


# Continuous hyperparameters reach `train` as arrays, not constants baked into the trace, so that a grid of
# them (several values per flag, e.g. the paper's delta x lambda per task) trains in one compiled program like
# seeds do (the grid helpers below).
HPARAMS = ("gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm", "lr", "alpha", "delta")


# =============================================================================================
# Networks: the learner (the GRU actor of ippo.py) and the guider (MAT)
# =============================================================================================
# Learner network and distributions (identical in every script; tests/test_consistency.py holds them together)
def orthogonal(scale=1.0):
    """flax's orthogonal initialiser, computed one matrix at a time under vmap (same values). jaxlib 0.10's
    batched LAPACK QR waits for helpers on the thread pool it runs on: two of them at once (the actor's and
    the critic's, seeds vmapped) left a 2-core CPU waiting forever."""

    def init(key, shape, dtype=jnp.float32):
        one = jax.custom_batching.custom_vmap(lambda k: flax_orthogonal(scale)(k, shape, dtype))
        one.def_vmap(lambda axis_size, in_batched, keys: (jax.lax.map(one, keys), True))
        return one(key)

    return init


def stacked_orthogonal(key, shape, dtype=jnp.float32):
    """[H, k*H] kernel of k independent orthogonal [H, H] blocks: flax's GRUCell initialises each
    gate's recurrent kernel this way, and the fused kernel below keeps that."""
    keys = jax.random.split(key, shape[1] // shape[0])
    return jnp.concatenate([orthogonal()(k, (shape[0], shape[0]), dtype) for k in keys], axis=-1)


class RecurrentNet(nn.Module):
    """Dense -> GRU -> Dense with ReLU, then a linear head (the paper's Table 3 network): logits or a
    Gaussian's mean for an actor, a value for a critic. The GRU state is zeroed where an episode starts
    (`start`, before this step's input). `__call__` is one time step, as acting needs; `replay` runs
    `embed` and `head` on all steps at once and only `recur` step by step. The GRU is flax's GRUCell
    with its three gates' kernels fused (tests/test_ppo.py checks it against nn.GRUCell)."""

    out_size: int
    out_scale: float  # orthogonal init scale of the head: 0.01 for a policy, 1.0 for a value
    layer_size: int
    gru_size: int
    gaussian_policy: bool = False  # add a state-independent log-std (MPE's continuous actions)

    def setup(self):
        def dense(size, scale):
            return nn.Dense(size, kernel_init=orthogonal(scale), bias_init=constant(0.0))

        self.pre_torso, self.post_torso = (
            dense(self.layer_size, np.sqrt(2)),
            dense(self.layer_size, np.sqrt(2)),
        )
        self.output = dense(self.out_size, self.out_scale)
        # GRUCell's parameters, gates side by side in the order reset, update, candidate (r, z, n).
        self.gru_input = nn.Dense(3 * self.gru_size, bias_init=constant(0.0))  # W_i[rzn] x + b_i[rzn]
        self.gru_hidden = nn.Dense(3 * self.gru_size, use_bias=False,
                                   kernel_init=stacked_orthogonal)  # W_h[rzn] h
        self.gru_hidden_bias_n = self.param("gru_hidden_bias_n", constant(0.0), (self.gru_size,))  # b_hn
        if self.gaussian_policy:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.out_size,))

    def __call__(self, h, x, start):
        h, y = self.recur(h, self.embed(x), start)
        return h, self.head(y)

    def embed(self, x):
        return self.gru_input(nn.relu(self.pre_torso(x)))

    def recur(self, h, gru_in, start):
        h = jnp.where(start[..., None], jnp.zeros_like(h), h)
        in_r, in_z, in_n = jnp.split(gru_in, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(self.gru_hidden(h), 3, axis=-1)
        r, z = nn.sigmoid(in_r + h_r), nn.sigmoid(in_z + h_z)
        n = jnp.tanh(in_n + r * (h_n + self.gru_hidden_bias_n))
        h = (1.0 - z) * n + z * h
        return h, h

    def head(self, y):
        out = self.output(nn.relu(self.post_torso(y)))
        return (out, jnp.broadcast_to(self.log_std, out.shape)) if self.gaussian_policy else out


def replay(nets, params, hs, xs, start):
    """Run recurrent nets over [T, ...] sequences: `embed` and `head` on all steps at once, as 2-d
    [steps, features] matmuls, and the GRUs side by side in one scan over time, so that the scan does
    as little per step as it can (README, "Where the time goes"). Returns the final GRU states and
    each net's outputs for every step."""

    def on_all_steps(fn, x):  # [..., F] -> fn on [N, F] -> [..., F']
        y = fn(x.reshape(-1, x.shape[-1]))
        return jax.tree.map(lambda v: v.reshape(x.shape[:-1] + v.shape[-1:]), y)

    gru_ins = [
        on_all_steps(lambda v: net.apply(p, v, method="embed"), x) for net, p, x in zip(nets, params, xs)
    ]

    def one_step(hs, inputs):
        *gru_ins_t, start_t = inputs
        steps = [
            net.apply(p, h, g, start_t, method="recur") for net, p, h, g in zip(nets, params, hs, gru_ins_t)
        ]
        return tuple(h for h, _ in steps), tuple(y for _, y in steps)

    # Rematerialised: the backward pass recomputes each step's gates, cheaper on a CPU than saving them.
    hs, ys = jax.lax.scan(jax.checkpoint(one_step), tuple(hs), (*gru_ins, start))
    return hs, tuple(
        on_all_steps(lambda v: net.apply(p, v, method="head"), y) for net, p, y in zip(nets, params, ys)
    )


# A large finite number rather than -inf: masked actions get probability 0 and entropy stays finite.
MASKED_LOGIT = -1e9


def mask_logits(out, action_mask, continuous: bool):
    """Discrete heads: masked actions get MASKED_LOGIT; continuous heads pass through."""
    return out if continuous else jnp.where(action_mask, out, MASKED_LOGIT)


def policy_distribution(pi, continuous: bool) -> distrax.Distribution:
    """Discrete: masked categorical. Continuous: Gaussian over the *pre-tanh* action with scale
    softplus(log_std) + 1e-3 (Mava's parameterisation and name); the tanh squashing is applied on the
    way to the environment and its log-det in `log_prob_entropy`."""
    if continuous:
        loc, log_std = pi
        return distrax.MultivariateNormalDiag(loc, jax.nn.softplus(log_std) + 1e-3)
    return distrax.Categorical(logits=pi)


def tanh_log_det(raw: jax.Array) -> jax.Array:
    """sum log |d tanh(x)/dx| = sum log(1 - tanh(x)^2), in a form that is stable for large |x|."""
    return jnp.sum(2.0 * (jnp.log(2.0) - raw - jax.nn.softplus(-2.0 * raw)), axis=-1)


def action_log_prob(dist: distrax.Distribution, action: jax.Array, continuous: bool) -> jax.Array:
    """log pi(a); for the tanh-squashed Gaussian, of the squashed action (change of variables)."""
    log_prob = dist.log_prob(action)
    return log_prob - tanh_log_det(action) if continuous else log_prob


def sample_action(key, pi, continuous: bool, greedy=False):
    """Returns (stored action, log-probability, action for the environment). Continuous actions
    are stored before the tanh, so that their log-probability needs no atanh later."""
    dist = policy_distribution(pi, continuous)
    action = dist.mode() if greedy else dist.sample(seed=key)
    return action, action_log_prob(dist, action, continuous), jnp.tanh(action) if continuous else action


def log_prob_entropy(pi, action, continuous: bool):
    """Log-probability of stored actions and the policy's entropy (of the pre-tanh Gaussian where
    continuous: the squashed one has no closed form, and the two differ by the expected log-det)."""
    dist = policy_distribution(pi, continuous)
    return action_log_prob(dist, action, continuous), dist.entropy()
# End of the learner network and distributions.


# ---------------------------------------------------------------------------------------------
# The guider: MAT (Wen et al. 2022), as Mava builds it (mava/networks/mat_network.py). Feed-forward
# over time: the agents of one timestep form one sequence of tokens. The encoder attends over all
# agents' observations and gives each agent's value. The decoder is causal over agents: agent j's
# input is agent j-1's action (a start token for agent 0), its self-attention sees the tokens of
# agents <= j, and its cross-attention lets agent j's observation representation query them.
# ---------------------------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head scaled dot-product attention among the agents of each timestep."""

    embed_dim: int
    n_head: int
    causal: bool  # the decoder: token j attends to tokens <= j only

    def setup(self):
        self.w_q = nn.Dense(self.embed_dim, kernel_init=orthogonal(0.01))
        self.w_k = nn.Dense(self.embed_dim, kernel_init=orthogonal(0.01))
        self.w_v = nn.Dense(self.embed_dim, kernel_init=orthogonal(0.01))
        self.w_o = nn.Dense(self.embed_dim, kernel_init=orthogonal(0.01))

    def __call__(self, key_in, value_in, query_in, n_agents: int):
        """Flat tokens [B * n_agents, embed] (see `MAT`) -> [B * n_agents, embed]."""
        head_size = self.embed_dim // self.n_head

        def heads(x, dense):  # -> [B, heads, n_agents, head_size]
            return jnp.swapaxes(dense(x).reshape(-1, n_agents, self.n_head, head_size), 1, 2)

        q, k, v = heads(query_in, self.w_q), heads(key_in, self.w_k), heads(value_in, self.w_v)
        scores = q @ jnp.swapaxes(k, -1, -2) / np.sqrt(head_size)
        if self.causal:
            scores = jnp.where(
                jnp.tril(jnp.ones((n_agents, n_agents), bool)), scores, jnp.finfo(jnp.float32).min
            )
        out = jax.nn.softmax(scores, axis=-1) @ v
        return self.w_o(jnp.swapaxes(out, 1, 2).reshape(key_in.shape))


class FeedForward(nn.Module):
    embed_dim: int

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.embed_dim, kernel_init=orthogonal(0.01))(x)


class EncoderBlock(nn.Module):
    embed_dim: int
    n_head: int

    def setup(self):
        self.attention = Attention(self.embed_dim, self.n_head, causal=False)
        self.feed_forward = FeedForward(self.embed_dim)
        self.norm1, self.norm2 = nn.LayerNorm(), nn.LayerNorm()

    def __call__(self, x, n_agents):
        x = self.norm1(x + self.attention(x, x, x, n_agents))
        return self.norm2(x + self.feed_forward(x))


class DecoderBlock(nn.Module):
    embed_dim: int
    n_head: int

    def setup(self):
        self.self_attention = Attention(self.embed_dim, self.n_head, causal=True)
        self.cross_attention = Attention(self.embed_dim, self.n_head, causal=True)
        self.feed_forward = FeedForward(self.embed_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(), nn.LayerNorm(), nn.LayerNorm()

    def __call__(self, x, obs_rep, n_agents):
        x = self.norm1(x + self.self_attention(x, x, x, n_agents))
        # Cross-attention: agent j's observation representation queries the action tokens up to j.
        x = self.norm2(obs_rep + self.cross_attention(x, x, obs_rep, n_agents))
        return self.norm3(x + self.feed_forward(x))


class MAT(nn.Module):
    num_actions: int
    continuous: bool
    n_block: int
    n_head: int
    embed_dim: int

    def setup(self):
        blocks = range(self.n_block)
        self.obs_norm = nn.LayerNorm()
        self.obs_embed = nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))
        self.block_norm = nn.LayerNorm()  # once, before the encoder blocks
        self.encoder_blocks = [EncoderBlock(self.embed_dim, self.n_head) for _ in blocks]
        self.value_hidden = nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))
        self.value_norm = nn.LayerNorm()
        self.value_out = nn.Dense(1, kernel_init=orthogonal(0.01))
        self.action_embed = nn.Dense(
            self.embed_dim, use_bias=self.continuous, kernel_init=orthogonal(np.sqrt(2))
        )
        self.action_norm = nn.LayerNorm()
        self.decoder_blocks = [DecoderBlock(self.embed_dim, self.n_head) for _ in blocks]
        self.policy_hidden = nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))
        self.policy_norm = nn.LayerNorm()
        self.policy_out = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01))
        if self.continuous:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))

    # Between attentions the tokens travel flat, [B * agents, features]: XLA:CPU computes the dense
    # layers' weight gradients of a 3-d [B, agents, features] input through slow transposes.
    def encode(self, obs):
        """Observations [B, agents, obs_dim] -> (value [B, agents], representation [B, agents, embed])."""
        n_agents = obs.shape[1]
        x = self.block_norm(nn.gelu(self.obs_embed(self.obs_norm(obs.reshape(-1, obs.shape[-1])))))
        for block in self.encoder_blocks:
            x = block(x, n_agents)
        value = self.value_out(self.value_norm(nn.gelu(self.value_hidden(x))))
        return value.reshape(obs.shape[:2]), x.reshape(*obs.shape[:2], -1)

    def decode(self, action_in, obs_rep):
        """Each agent's decoder input (the previous agent's action) [B, agents, action_in] and the
        observation representation -> each agent's policy outputs."""
        n_agents = action_in.shape[1]
        x = self.action_norm(nn.gelu(self.action_embed(action_in.reshape(-1, action_in.shape[-1]))))
        obs_rep = obs_rep.reshape(x.shape)
        for block in self.decoder_blocks:
            x = block(x, obs_rep, n_agents)
        out = self.policy_out(self.policy_norm(nn.gelu(self.policy_hidden(x)))).reshape(
            *action_in.shape[:2], -1
        )
        if self.continuous:
            out = (out, jnp.broadcast_to(self.log_std, out.shape))
        return out

    def __call__(self, obs, action_in):
        """Parallel form (training): the decoder is teacher-forced with the actions taken."""
        value, obs_rep = self.encode(obs)
        return value, self.decode(action_in, obs_rep)


def action_token(action, num_actions: int, continuous: bool):
    """Decoder input carrying an agent's action to the next agent: one-hot with a leading
    start channel (discrete), the squashed action (continuous)."""
    return jnp.tanh(action) if continuous else jax.nn.one_hot(action + 1, num_actions + 1)


def start_token(shape, num_actions: int, continuous: bool):
    """Decoder input of the first agent of every timestep."""
    if continuous:
        return jnp.zeros((*shape, num_actions))
    return jnp.zeros((*shape, num_actions + 1)).at[..., 0].set(1.0)


def decoder_inputs(action, num_actions: int, continuous: bool):
    """Teacher forcing: actions [..., agents(, dim)] -> each agent's decoder input, the previous
    agent's action at the same timestep (the start token for agent 0)."""
    previous = action_token(action[..., :-1, :] if continuous else action[..., :-1], num_actions, continuous)
    first = start_token(previous.shape[:-2] + (1,), num_actions, continuous)
    return jnp.concatenate([first, previous], axis=-2)


# =============================================================================================
# Losses (pure functions on arrays; tests check them on hand-made inputs)
# =============================================================================================
def kl_divergence(pi_p, pi_q, continuous: bool) -> jax.Array:
    """KL(p || q) per agent. For the tanh-squashed Gaussians that of the pre-tanh Gaussians: a
    bijection leaves the KL unchanged."""
    return policy_distribution(pi_p, continuous).kl_divergence(policy_distribution(pi_q, continuous))


def gae(rewards, values, dones, last_value, gamma, gae_lambda):
    """Generalised advantage estimation, backwards over time (axis 0). `dones[t]` ends the episode
    at transition t: the authors' Mava code bootstraps nothing past it, time limits included."""

    def backwards(carry, x):
        next_advantage, next_value = carry
        reward, value, done = x
        not_done = 1.0 - done.astype(jnp.float32)
        delta = reward + gamma * next_value * not_done - value
        advantage = delta + gamma * gae_lambda * not_done * next_advantage
        return (advantage, value), advantage

    _, advantages = jax.lax.scan(
        backwards, (jnp.zeros_like(last_value), last_value), (rewards, values, dones), reverse=True
    )
    return advantages, advantages + values


def ppo_actor_loss(log_prob, old_log_prob, advantage, clip_eps):
    """Clipped surrogate objective (to minimise) with per-minibatch advantage normalisation."""
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    ratio = jnp.exp(log_prob - old_log_prob)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -jnp.minimum(ratio * advantage, clipped * advantage).mean()


def ppo_value_loss(value, old_value, target, clip_eps):
    """Clipped value loss: the larger of the plain and the clipped squared errors, halved."""
    clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    return 0.5 * jnp.maximum(jnp.square(value - target), jnp.square(clipped - target)).mean()



def guider_policy_loss(log_prob_guider, log_prob_learner, old_log_prob, advantage, kl, clip_eps, delta):
    """Eq. 8, the guider's policy terms (to minimise): the surrogate with Eq. 9's double clip and the
    KL masked to where mu/pi leaves (1/delta, delta). `log_prob_learner` and `kl` (= KL(mu || pi) per
    agent) must carry no gradient into the learner. Returns (surrogate loss, masked KL loss)."""
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    log_ratio = log_prob_guider - old_log_prob  # Eq. 8: r(phi) = mu / mu_old
    log_band = jnp.log(delta)
    guider_over_learner = log_prob_guider - log_prob_learner  # log mu / pi
    inside = jnp.abs(guider_over_learner) <= log_band
    # Eq. 9: clip(clip(mu/pi, 1/delta, delta) * pi/mu_old, 1-eps, 1+eps). Outside the band the inner clip
    # holds mu/pi constant, so there this branch gives the guider no gradient; inside, it is r(phi).
    clipped_band = jnp.clip(guider_over_learner, -log_band, log_band) + log_prob_learner - old_log_prob
    double_clipped = jnp.clip(
        jnp.exp(jnp.where(inside, log_ratio, clipped_band)), 1.0 - clip_eps, 1.0 + clip_eps
    )
    surrogate = -jnp.minimum(jnp.exp(log_ratio) * advantage, double_clipped * advantage).mean()  # Eq. 8
    # Eq. 8's mask m(delta): KL(mu || pi) only where the ratio left the band (mean over agents and steps).
    return surrogate, jnp.where(inside, 0.0, kl).mean()


def distillation_kl(pi_guider, pi_learner, continuous: bool, direction: str) -> jax.Array:
    """Eq. 10's behaviour-cloning term per agent, the guider held fixed: KL(mu || pi) by default
    (the authors' code), KL(pi || mu) as the paper writes it with `learner-guider`."""
    pi_guider = jax.lax.stop_gradient(pi_guider)
    if direction == "guider-learner":
        return kl_divergence(pi_guider, pi_learner, continuous)
    return kl_divergence(pi_learner, pi_guider, continuous)


def learner_loss(distill_kl, log_prob, old_log_prob, advantage, clip_eps, alpha):
    """Eq. 10 (to minimise): mean distillation KL + lambda * clipped PPO. Returns (total, PPO term)."""
    ppo = ppo_actor_loss(log_prob, old_log_prob, advantage, clip_eps)  # Eq. 11: r(theta) = pi / mu_old
    return distill_kl.mean() + alpha * ppo, ppo  # Eq. 10


# =============================================================================================
# Training
# =============================================================================================
class Transition(NamedTuple):
    obs: jax.Array  # [T, E, A, obs_dim]
    start: jax.Array  # [T, E] the observation opens an episode (the learner's GRU state resets)
    action_mask: jax.Array
    action: jax.Array
    log_prob: jax.Array  # [T, E, A] the guider's, i.e. the behaviour policy's (mu_old)
    value: jax.Array  # [T, E, A] the guider's
    reward: jax.Array  # [T, E]
    done: jax.Array  # [T, E]


class RunnerState(NamedTuple):
    guider_params: dict
    actor_params: dict  # the learner's
    guider_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    env_state: object
    timestep: TimeStep
    start: jax.Array  # [E] bool
    actor_h: jax.Array  # [E, A, gru]
    key: jax.Array
    best_score: jax.Array  # the learner's best evaluation score so far, and its parameters then
    best_actor_params: dict
    best_guider_score: jax.Array  # the same for the guider
    best_guider_params: dict


# The fields that the gradient steps change.
TRAINED = ("guider_params", "actor_params", "guider_opt_state", "actor_opt_state")


class Trainer(NamedTuple):
    init: Callable  # init(key, hp) -> RunnerState
    update: Callable  # update(runner, hp) -> (runner, stats): one rollout and its epochs
    evaluate_and_keep_best: Callable  # (runner) -> (runner, evaluation): the periodic one, best kept
    learn: Callable  # learn(runner, hp) -> (runner, metrics): the updates up to an evaluation, then it
    evaluate_actor: Callable  # (actor_params, key, num_episodes, keep_episode=False) -> the learner's metrics
    evaluate_guider: Callable  # (guider_params, key, num_episodes, keep_episode=False) -> the guider's
    # train(key, hp) -> (runner, metrics per evaluation): init, then a run's every update and evaluation in
    # one pure function (PureJaxRL's shape, to jit or vmap in your own code); main() makes the same
    # updates one compiled call each (tests/test_e2e.py holds the two equal)
    train: Callable
    num_updates_per_eval: int
    # Pieces, exposed for tests:
    rollout: Callable  # rollout(runner) -> (runner, trajectory, last value, episode ends)
    loss: Callable  # loss(guider_params, actor_params, batch, hp) -> (total, stats)
    guider_train_pass: Callable  # Guider.train_pass
    guider_act: Callable  # Guider.act


def optimiser(lr, max_grad_norm):
    """Clip by global gradient norm, then Adam with eps 1e-5 (the authors' optimiser)."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=1e-5))


def make_env_sharding() -> Callable:
    """Data parallelism over all devices: `shard_envs(tree, env_axis)` splits every array's
    environment axis across them (a no-op on one device). XLA's partitioner then runs each device's
    environments and sequences locally and sums the gradients of the mean losses with an all-reduce,
    so the result is the single-device one up to the order of floating-point sums."""
    devices = jax.devices()
    if len(devices) == 1:
        return lambda tree, env_axis=0: tree
    mesh = jax.sharding.Mesh(np.array(devices), ("envs",))

    def shard_envs(tree, env_axis=0):
        def constrain(x):
            spec = jax.sharding.PartitionSpec(*([None] * env_axis + ["envs"]))
            return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))

        return jax.tree.map(constrain, tree)

    return shard_envs


def per_agent(x, num_agents: int):
    """[..., E] -> [..., E, A]: a per-environment value for every agent of the environment."""
    return jnp.broadcast_to(x[..., None], x.shape + (num_agents,))


# The guider's two passes: acting, agent after agent, and training, teacher-forced.
class Guider(NamedTuple):
    """MAT as MAGPO uses it: the acting step (agent after agent) and the training pass (teacher-forced)."""

    init: Callable  # init(key, obs) -> params
    value: Callable  # value(params, ts) -> value [E, A] of this step's observations
    act: Callable  # act(params, ts, key, greedy) -> (action, log-prob, env action, value)
    train_pass: Callable  # train_pass(params, traj) -> (value, policy outputs), time-major


def make_guider(args, env) -> Guider:
    num_agents, num_actions, continuous = env.num_agents, env.num_actions, env.continuous
    mat = MAT(num_actions, continuous, args.n_block, args.n_head, args.embed_dim)

    def init(key, obs):
        dummy_action = jnp.zeros((1, num_agents, num_actions + (0 if continuous else 1)))
        return mat.init(key, obs[:1], dummy_action)

    def value(params, ts):
        return mat.apply(params, ts.obs, method=MAT.encode)[0]

    def act(params, ts, key, greedy=False):
        """Encode all agents, then decode their actions one after another. The decoder runs on the
        action tokens so far and agent j's output is read; it is causal, so the tokens not yet written
        change nothing."""
        value, obs_rep = mat.apply(params, ts.obs, method=MAT.encode)
        first = start_token((ts.obs.shape[0], 1), num_actions, continuous)
        tokens = jnp.concatenate(
            [first, jnp.zeros((ts.obs.shape[0], num_agents - 1, first.shape[-1]))], axis=1
        )

        def next_agent(tokens, inputs):
            j, key_j = inputs
            out = mat.apply(params, tokens, obs_rep, method=MAT.decode)
            pi = mask_logits(jax.tree.map(lambda x: x[:, j], out), ts.action_mask[:, j], continuous)
            action, log_prob, env_action = sample_action(key_j, pi, continuous, greedy)
            # Agent j's action is agent j+1's input (dropped after the last agent).
            tokens = tokens.at[:, j + 1].set(action_token(action, num_actions, continuous), mode="drop")
            return tokens, (action, log_prob, env_action)

        _, outputs = jax.lax.scan(
            next_agent, tokens, (jnp.arange(num_agents), jax.random.split(key, num_agents))
        )
        action, log_prob, env_action = (jnp.swapaxes(x, 0, 1) for x in outputs)
        return action, log_prob, env_action, value

    def train_pass(params, traj):
        """Teacher-forced pass over time-major [T, B, A, ...]: every timestep is its own sequence of
        agents (MAT has no memory)."""
        action_in = decoder_inputs(traj.action, num_actions, continuous)
        value, out = mat.apply(params, *(x.reshape(-1, *x.shape[2:]) for x in (traj.obs, action_in)))
        return jax.tree.map(lambda x: x.reshape(*traj.obs.shape[:2], *x.shape[1:]), (value, out))

    return Guider(init, value, act, train_pass)


# ---------------------------------------------------------------------------------------------
# Evaluation: the paper's protocol (README, "What a run writes")
# ---------------------------------------------------------------------------------------------
def zeros_h(batch: int, num_agents: int, gru_size: int) -> jax.Array:
    return jnp.zeros((batch, num_agents, gru_size), jnp.float32)


def keep_best(score, best_score, params, best_params):
    """The better of (score, params) and (best_score, best_params)."""
    better = score > best_score
    return jnp.where(better, score, best_score), jax.tree.map(lambda new, old: jnp.where(better, new, old),
                                                              params, best_params)


def make_evaluators(args, env, actor, guider: Guider):
    """-> (evaluate the learner, evaluate the guider): each (params, key, num_episodes) -> metrics of
    `num_episodes` episodes, one per environment, run for the time limit; only each environment's
    first episode counts."""
    num_agents, continuous = env.num_agents, env.continuous

    def run_episodes(policy_step, policy_state, key, num_episodes, keep_episode):
        """policy_step(state, ts, start, key) -> (state, env action). With `keep_episode`, also the first
        environment's steps, for env.animate."""
        key_reset, key_run = jax.random.split(key)
        env_state, ts = jax.vmap(env.reset)(jax.random.split(key_reset, num_episodes))
        zero_f = jnp.zeros((num_episodes,), jnp.float32)
        carry = (
            env_state,
            ts,
            jnp.ones((num_episodes,), bool),
            policy_state,
            jnp.zeros((num_episodes,), bool),
            zero_f,
            jnp.zeros((num_episodes,), jnp.int32),
            zero_f,
        )

        def one_step(carry, key):
            env_state, ts, start, policy_state, finished, ret, length, won = carry
            key_action, key_env = jax.random.split(key)
            policy_state, env_action = policy_step(policy_state, ts, start, key_action)
            env_state, ts = env.step_many(jax.random.split(key_env, num_episodes), env_state, env_action)
            first_end = ts.done & ~finished
            ret = jnp.where(first_end, ts.episode_return, ret)
            length = jnp.where(first_end, ts.episode_length, length)
            won = jnp.where(first_end, ts.won, won)
            step = {"inner": jax.tree.map(lambda x: x[0], carry[0].inner), "action": env_action[0],
                    "reward": ts.reward[0], "done": ts.done[0]} if keep_episode else None
            return (env_state, ts, ts.done, policy_state, finished | ts.done, ret, length, won), step

        carry, episode = jax.lax.scan(one_step, carry, jax.random.split(key_run, env.time_limit))
        _, _, _, _, _, ret, length, won = carry
        metrics = {"episode_return": ret, "episode_length": length.astype(jnp.float32), "win_rate": won}
        metrics = {name: metrics[name] for name in eval_metric_names(env.suite)}
        return (metrics, episode) if keep_episode else metrics

    def evaluate(actor_params, key, num_episodes, keep_episode=False):
        """The learner, the deployable policy: each agent acts on its own observation only."""
        def policy_step(h, ts, start, key):
            h, out = actor.apply(actor_params, h, ts.obs, per_agent(start, num_agents))
            pi = mask_logits(out, ts.action_mask, continuous)
            return h, sample_action(key, pi, continuous, args.evaluation_greedy)[2]

        h = zeros_h(num_episodes, num_agents, args.gru_size)
        return run_episodes(policy_step, h, key, num_episodes, keep_episode)

    def evaluate_guider(guider_params, key, num_episodes, keep_episode=False):
        """The guider, centralised: reported beside the learner, never in its place."""
        def policy_step(state, ts, start, key):
            return state, guider.act(guider_params, ts, key, args.evaluation_greedy)[2]  # no state: no memory

        return run_episodes(policy_step, (), key, num_episodes, keep_episode)

    return evaluate, evaluate_guider


def make_train(args: Args, env: EnvSpec) -> Trainer:
    num_agents, num_actions, continuous = env.num_agents, env.num_actions, env.continuous
    steps_per_update = args.num_envs * args.rollout_length
    num_updates_per_eval = args.total_timesteps // steps_per_update // args.num_evaluations
    envs_per_minibatch = args.num_envs // args.num_minibatches
    actor = RecurrentNet(num_actions, 0.01, args.layer_size, args.gru_size, gaussian_policy=continuous)
    guider = make_guider(args, env)
    evaluate, evaluate_guider = make_evaluators(args, env, actor, guider)
    shard_envs = make_env_sharding()

    def init(key, hp):
        key, key_actor, key_guider, key_env = jax.random.split(key, 4)
        env_state, ts = shard_envs(jax.vmap(env.reset)(jax.random.split(key_env, args.num_envs)))
        actor_params = actor.init(key_actor, zeros_h(1, num_agents, args.gru_size), ts.obs[:1],
                                  jnp.ones((1, num_agents), bool))
        guider_params = guider.init(key_guider, ts.obs)
        opt = optimiser(hp["lr"], hp["max_grad_norm"])
        start, actor_h = shard_envs((jnp.ones((args.num_envs,), bool),
                                     zeros_h(args.num_envs, num_agents, args.gru_size)))
        return RunnerState(
            guider_params=guider_params, actor_params=actor_params, guider_opt_state=opt.init(guider_params),
            actor_opt_state=opt.init(actor_params), env_state=env_state, timestep=ts, start=start,
            actor_h=actor_h, key=key, best_score=jnp.array(-jnp.inf, jnp.float32),
            best_actor_params=actor_params, best_guider_score=jnp.array(-jnp.inf, jnp.float32),
            best_guider_params=guider_params)

    def rollout(runner: RunnerState):
        """The guider acts; the learner's GRU runs along on the same observations, so that its state is
        right when training replays its sequences."""
        def one_step(carry, key):
            env_state, ts, start, actor_h = carry
            key_action, key_env = jax.random.split(key)
            action, log_prob, env_action, value = guider.act(runner.guider_params, ts, key_action)
            actor_h, _ = actor.apply(runner.actor_params, actor_h, ts.obs, per_agent(start, num_agents))
            env_keys = jax.random.split(key_env, args.num_envs)
            env_state, next_ts = env.step_many(env_keys, env_state, env_action)
            transition = Transition(obs=ts.obs, start=start, action_mask=ts.action_mask, action=action,
                                    log_prob=log_prob, value=value, reward=next_ts.reward, done=next_ts.done)
            episode = (next_ts.done, next_ts.episode_return, next_ts.won)
            return shard_envs((env_state, next_ts, next_ts.done, actor_h)), (transition, episode)

        key, key_rollout = jax.random.split(runner.key)
        carry = (runner.env_state, runner.timestep, runner.start, runner.actor_h)
        keys = jax.random.split(key_rollout, args.rollout_length)
        carry, (traj, episodes) = jax.lax.scan(one_step, carry, keys)
        env_state, ts, start, actor_h = carry
        last_value = guider.value(runner.guider_params, ts)
        runner = runner._replace(env_state=env_state, timestep=ts, start=start, actor_h=actor_h, key=key)
        return runner, traj, last_value, episodes

    def loss_fn(guider_params, actor_params, batch, hp):
        """Both losses from the same parameters; each stops the gradient into the other network, so
        one backward pass gives the guider the gradient of Eq. 8 and the learner that of Eq. 10."""
        traj, actor_h0, advantage, target = batch
        value, guider_out = guider.train_pass(guider_params, traj)
        _, (learner_out,) = replay((actor,), (actor_params,), (actor_h0,), (traj.obs,),
                                   per_agent(traj.start, num_agents))
        pi_guider = mask_logits(guider_out, traj.action_mask, continuous)
        pi_learner = mask_logits(learner_out, traj.action_mask, continuous)
        log_prob_guider, entropy = log_prob_entropy(pi_guider, traj.action, continuous)
        log_prob_learner, _ = log_prob_entropy(pi_learner, traj.action, continuous)
        sg = jax.lax.stop_gradient
        # Eq. 8: the guider, the learner held fixed; plus the value loss and an entropy bonus.
        guider_kl = kl_divergence(pi_guider, sg(pi_learner), continuous)
        surrogate, kl_loss = guider_policy_loss(log_prob_guider, sg(log_prob_learner), traj.log_prob,
                                                advantage, guider_kl, hp["clip_eps"], hp["delta"])
        value_loss = ppo_value_loss(value, traj.value, target, hp["clip_eps"])
        entropy = entropy.mean()
        guider_total = surrogate + kl_loss - hp["ent_coef"] * entropy + hp["vf_coef"] * value_loss
        # Eq. 10: the learner, the guider held fixed.
        distill = distillation_kl(pi_guider, pi_learner, continuous, args.kl_direction)
        learner_total, actor_loss = learner_loss(distill, log_prob_learner, traj.log_prob, advantage,
                                                 hp["clip_eps"], hp["alpha"])
        outside = jnp.abs(log_prob_guider - log_prob_learner) > jnp.log(hp["delta"])
        return guider_total + learner_total, {
            "guider_loss": surrogate, "kl_loss": kl_loss, "value_loss": value_loss, "entropy": entropy,
            "distill_loss": distill.mean(), "actor_loss": actor_loss, "outside_band": outside.mean()}

    def permute_agents(batch, order):
        """The agents in another order (the guider then decodes in that order)."""
        traj, actor_h0, advantage, target = batch
        traj = traj._replace(**{name: jnp.take(getattr(traj, name), order, axis=2)
                                for name in ("obs", "action_mask", "action", "log_prob", "value")})
        return (traj, jnp.take(actor_h0, order, axis=1), jnp.take(advantage, order, axis=2),
                jnp.take(target, order, axis=2))

    def update(runner: RunnerState, hp):
        # ROLLOUT
        actor_h0 = runner.actor_h
        runner, traj, last_value, episodes = rollout(runner)
        # ADVANTAGES, from the guider's values
        rewards = jnp.broadcast_to(traj.reward[..., None], traj.value.shape)
        dones = jnp.broadcast_to(traj.done[..., None], traj.value.shape)
        advantage, target = gae(rewards, traj.value, dones, last_value, hp["gamma"], hp["gae_lambda"])
        # EPOCHS of minibatches; each minibatch holds whole environment sequences, so that it replays
        # them from the recurrent states the rollout started with.
        opt = optimiser(hp["lr"], hp["max_grad_norm"])
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

        def minibatch(trained, batch):
            (_, stats), (guider_grad, actor_grad) = grad_fn(trained["guider_params"], trained["actor_params"],
                                                            batch, hp)
            guider_updates, guider_opt_state = opt.update(guider_grad, trained["guider_opt_state"])
            actor_updates, actor_opt_state = opt.update(actor_grad, trained["actor_opt_state"])
            return {"guider_params": optax.apply_updates(trained["guider_params"], guider_updates),
                    "actor_params": optax.apply_updates(trained["actor_params"], actor_updates),
                    "guider_opt_state": guider_opt_state, "actor_opt_state": actor_opt_state}, stats

        def epoch(trained, key):
            key_envs, key_agents = jax.random.split(key)
            perm = jax.random.permutation(key_envs, args.num_envs)

            def split(x, env_axis):  # [..., E, ...] -> [minibatches, ..., E / minibatches, ...], shuffled
                x = jnp.take(x, perm, axis=env_axis)
                x = x.reshape(x.shape[:env_axis] + (args.num_minibatches, envs_per_minibatch)
                              + x.shape[env_axis + 1:])
                return shard_envs(jnp.moveaxis(x, env_axis, 0), env_axis + 1)

            batch = (traj, actor_h0, advantage, target)
            if args.shuffle_agents:  # one agent order per epoch, as Sable and MAT train
                batch = permute_agents(batch, jax.random.permutation(key_agents, num_agents))
            env_axes = (1, 0, 1, 1)  # where each part keeps its environments
            batches = tuple(jax.tree.map(lambda x, a=a: split(x, a), p) for p, a in zip(batch, env_axes))
            return jax.lax.scan(minibatch, trained, batches)

        key, key_epochs = jax.random.split(runner.key)
        trained = {name: getattr(runner, name) for name in TRAINED}
        trained, stats = jax.lax.scan(epoch, trained, jax.random.split(key_epochs, args.ppo_epochs))
        runner = runner._replace(key=key, **trained)
        done, episode_return, won = episodes
        stats = jax.tree.map(jnp.mean, stats)
        n_done = jnp.maximum(done.sum(), 1)
        stats["train_episode_return"] = jnp.where(done, episode_return, 0.0).sum() / n_done
        stats["train_episodes"] = done.sum()
        return runner, stats

    def evaluate_and_keep_best(runner: RunnerState):
        key, key_eval, key_guider = jax.random.split(runner.key, 3)
        evaluation = evaluate(runner.actor_params, key_eval, args.num_eval_episodes)
        guider_evaluation = evaluate_guider(runner.guider_params, key_guider, args.num_eval_episodes)
        # The best parameters by evaluation return on every suite, as the authors' code picks them.
        best_score, best_actor = keep_best(evaluation["episode_return"].mean(), runner.best_score,
                                           runner.actor_params, runner.best_actor_params)
        best_guider_score, best_guider = keep_best(guider_evaluation["episode_return"].mean(),
                                                   runner.best_guider_score, runner.guider_params,
                                                   runner.best_guider_params)
        runner = runner._replace(key=key, best_score=best_score, best_actor_params=best_actor,
                                 best_guider_score=best_guider_score, best_guider_params=best_guider)
        return runner, {"eval": evaluation, "guider_eval": guider_evaluation}

    def learn(runner: RunnerState, hp):
        runner, stats = jax.lax.scan(lambda r, _: update(r, hp), runner, None, num_updates_per_eval)
        runner, evaluations = evaluate_and_keep_best(runner)
        return runner, {**evaluations, "train": stats}

    def train(key, hp):
        runner = init(key, hp)
        return jax.lax.scan(lambda r, _: learn(r, hp), runner, None, args.num_evaluations)

    return Trainer(init=init, update=update, evaluate_and_keep_best=evaluate_and_keep_best, learn=learn,
                   evaluate_actor=evaluate, evaluate_guider=evaluate_guider, train=train,
                   num_updates_per_eval=num_updates_per_eval, rollout=rollout, loss=loss_fn,
                   guider_train_pass=guider.train_pass, guider_act=guider.act)


# =============================================================================================
# Many runs in one program: seeds and hyperparameter grids (identical in every script)
# =============================================================================================
def flag_values(args: Args, name: str) -> tuple[float, ...]:
    """A HPARAMS flag's values: one, or several for a grid."""
    value = getattr(args, name)
    return tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)


def each_value(args: Args, names: tuple[str, ...]):
    """(flag, value) for every value of these HPARAMS flags, so that validate() checks each grid value."""
    return [(f"--{name.replace('_', '-')}", value) for name in names for value in flag_values(args, name)]


def grid_points(args: Args) -> list[dict[str, float]]:
    """Every combination of the HPARAMS flags given several values, the last flag varying fastest; [{}] for a
    run without a grid."""
    names = [name for name in HPARAMS if len(flag_values(args, name)) > 1]
    return [dict(zip(names, values)) for values in itertools.product(*(flag_values(args, n) for n in names))]


def point_name(point: dict[str, float]) -> str:
    """A grid point's suffix to the algorithm's name in summary.json, metrics.jsonl, wandb and file names: its
    flags as a command line sets them, values as %g writes them (`ippo--actor_lr=0.001--clip_eps=0.1`,
    `actor_best--actor_lr=0.001--clip_eps=0.1.msgpack`); '' without a grid. marl-eval refuses a comma in an
    algorithm's name and lower-cases every key; a shell treats [ ] ; specially; no flag or value holds "--"."""
    return "".join(f"--{name}={value:g}" for name, value in point.items())


def hparams_from_args(args: Args, point: dict[str, float] | None = None) -> dict[str, jax.Array]:
    """One run's traced hyperparameters: the flags' values, with a grid point's where one is given."""
    point = point or {}
    return {name: jnp.asarray(point.get(name, flag_values(args, name)[0]), jnp.float32) for name in HPARAMS}


def run_inputs(args: Args, seed_offset: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Every run's key and hyperparameters, grid point by grid point: run p * num_seeds + i is point p with
    seed --seed + i, the seed a single run with the point's values and --seed + i would use."""
    points = grid_points(args)
    seeds = np.tile(args.seed + seed_offset + np.arange(args.num_seeds), len(points))
    hp = jax.tree.map(lambda *xs: jnp.repeat(jnp.stack(xs), args.num_seeds, axis=0),
                      *(hparams_from_args(args, point) for point in points))
    return jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds)), hp


def point_runs(args: Args, p: int) -> slice:
    """Grid point p's runs (its seeds) along the runs' axis."""
    return slice(p * args.num_seeds, (p + 1) * args.num_seeds)


def run_batching(args: Args) -> str:
    """--run-batching auto: a loop on a CPU, where batching the runs buys no speed (README, "Many runs in one
    program"), vmap on an accelerator, where it is what makes many runs cheap."""
    if args.run_batching != "auto":
        return args.run_batching
    return "loop" if jax.default_backend() == "cpu" else "vmap"


def over_runs(fn: Callable, args: Args, in_axes: tuple) -> Callable:
    """fn over the runs' leading axis (arguments whose in_axes is None are shared by every run). vmap batches
    the runs into every array operation; loop (lax.map) runs them one after another inside the program,
    each computing exactly what it computes alone."""
    if run_batching(args) == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def looped(*xs):
        def one_run(mapped):
            mapped = iter(mapped)
            return fn(*(next(mapped) if axis == 0 else x for x, axis in zip(xs, in_axes)))

        return jax.lax.map(one_run, [x for x, axis in zip(xs, in_axes) if axis == 0])

    return looped


def rollout_bytes(args: Args, env: EnvSpec) -> int:
    """A lower bound on the memory of all runs: the rollout every update keeps whole (observations, action
    masks, global states) for all seeds and grid points, split over the devices. The update and the networks
    need more."""
    per_step = env.num_agents * (4 * env.obs_dim + env.num_actions) + 4 * env.state_dim
    runs = args.num_seeds * len(grid_points(args))
    return runs * args.num_envs * args.rollout_length * per_step // jax.device_count()


def free_bytes() -> int | None:
    """Free memory of this host's first device: an accelerator's own, else the host's (MemAvailable)."""
    stats = jax.local_devices()[0].memory_stats() or {}  # another host's device has none to give
    if "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


FIELDS = {field.name for field in dataclasses.fields(Args)}


def check_single_values(argv: list[str]):
    """A flag outside HPARAMS given several values gets one line, before tyro's box: it changes the arrays'
    shapes (sizes, epochs, minibatches) or is not a number, so a grid over it cannot share one program."""
    for i, token in enumerate(argv):
        name = token[2:].replace("-", "_")
        if not token.startswith("--") or "=" in token or name in HPARAMS or name not in FIELDS:
            continue
        values = list(itertools.takewhile(lambda t: not t.startswith("--"), argv[i + 1:]))
        if len(values) > 1:
            grid = ", ".join(f"--{n.replace('_', '-')}" for n in HPARAMS)
            sys.exit(f"error: {token} takes one value, got {len(values)} ({' '.join(values)}): only {grid} "
                     f"take several (a grid, trained in one program); run one command per {token} value")
# End of the grid helpers.


# =============================================================================================
# Command line: what this script reports, and every flag checked before anything compiles
# =============================================================================================
# The policies a run trains and reports: the prefix of their metrics -> (their name in messages, the
# RunnerState field of their parameters and their saved files' name, the Trainer's evaluator).
POLICIES = {"": ("learner", "actor", "evaluate_actor"), "guider_": ("guider", "guider", "evaluate_guider")}
# Its losses, watched for non-finite values and divergence.
LOSSES = ("guider_loss", "kl_loss", "value_loss", "entropy", "distill_loss", "actor_loss")


class UsageError(ValueError):
    """A bad command-line value; the message names the flag and what it accepts."""


def validate(args: Args) -> EnvSpec:
    """Check every flag before anything compiles; returns the environment."""
    for name in (
        "num_seeds",
        "total_timesteps",
        "num_envs",
        "rollout_length",
        "num_evaluations",
        "num_eval_episodes",
        "ppo_epochs",
        "num_minibatches",
        "layer_size",
        "gru_size",
        "n_block",
        "n_head",
        "embed_dim",
    ):
        if getattr(args, name) < 1:
            raise UsageError(
                f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}"
            )
    for flag, value in each_value(args, ("gamma", "gae_lambda")):
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} must be in [0, 1], got {value}")
    for flag, value in each_value(args, ("clip_eps", "max_grad_norm", "lr")):
        if not value > 0.0 or not math.isfinite(value):
            raise UsageError(f"{flag} must be a positive number, got {value}")
    for flag, value in each_value(args, ("ent_coef", "vf_coef", "alpha")):
        if not value >= 0.0 or not math.isfinite(value):
            raise UsageError(f"{flag} must be >= 0, got {value}")
    for _, delta in each_value(args, ("delta",)):
        if not delta > 1.0:  # also rejects nan
            raise UsageError(f"--delta must be > 1 (the band is (1/delta, delta); inf removes it), got "
                             f"{delta}")
    if args.embed_dim % args.n_head:
        raise UsageError(f"--embed-dim ({args.embed_dim}) must be divisible by --n-head ({args.n_head})")
    if args.num_envs % args.num_minibatches:
        raise UsageError(f"--num-envs ({args.num_envs}) must be divisible by --num-minibatches "
                         f"({args.num_minibatches}): minibatches hold whole environments")
    if not args.progress_seconds > 0:
        raise UsageError(
            f"--progress-seconds must be a positive number of seconds, got {args.progress_seconds}"
        )
    if args.distributed and not jax.distributed.is_initialized():
        try:  # before the first device query below, which starts the backend
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as error:
            raise UsageError(
                f"--distributed found no cluster to join ({error}): start one process per host "
                "under SLURM, Open MPI, Kubernetes or Cloud TPU, or leave the flag off"
            ) from None
    devices = jax.device_count()
    if (args.num_envs // args.num_minibatches) % devices:
        raise UsageError(
            f"--num-envs / --num-minibatches ({args.num_envs // args.num_minibatches} environments per "
            f"minibatch) must be a multiple of the {devices} devices: each device takes an equal share"
        )
    steps_per_update = args.num_envs * args.rollout_length
    if args.total_timesteps < steps_per_update * args.num_evaluations:
        raise UsageError(
            f"--total-timesteps ({args.total_timesteps}) is too small for --num-evaluations "
            f"({args.num_evaluations}): each evaluation needs at least one update of --num-envs x "
            f"--rollout-length = {steps_per_update} steps, so use at least "
            f"{steps_per_update * args.num_evaluations} or fewer evaluations"
        )
    for name in HPARAMS:
        values = flag_values(args, name)
        if len(set(values)) < len(values):
            raise UsageError(f"--{name.replace('_', '-')} lists a value twice "
                             f"({' '.join(f'{v:g}' for v in values)}): each grid point trains once")
    try:
        env = make_env(args.env_id)
    except ValueError as error:
        raise UsageError(str(error)) from None
    need, free = rollout_bytes(args, env), free_bytes()
    if free is not None and need > free:
        raise UsageError(
            f"{args.env_id} with --num-envs {args.num_envs} x --rollout-length {args.rollout_length} x "
            f"--num-seeds {args.num_seeds} x {len(grid_points(args))} grid point(s) needs at least "
            f"{need / 2**30:,.1f} GiB for its rollout alone, more than the {free / 2**30:,.1f} GiB free: "
            "lower --num-envs, --rollout-length, --num-seeds or the grid"
        )
    return env


# =============================================================================================
# Outputs: run directory, metrics lines, marl-eval summary, parameter files, wandb (identical in every script)
# =============================================================================================
def make_run_dir(args: Args) -> str:
    """A new directory of its own: created exclusively, with a suffix when another run (e.g. one started in
    the same second by a `&`-parallel sweep) already took the name, so no two runs ever share one."""
    env_name = re.sub(r"[^\w.-]", "_", args.env_id)  # module:function for a user's own environment
    base = os.path.join(args.output_dir, f"{env_name}__{ALGORITHM}__{args.seed}__{int(time.time())}")
    run_dir, suffix = base, 1
    while True:
        try:
            os.makedirs(run_dir)
            break
        except FileExistsError:
            suffix += 1
            run_dir = f"{base}_{suffix}"
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump({**dataclasses.asdict(args), "algorithm": ALGORITHM}, f, indent=2)
    return run_dir


def summarise(evaluation: dict) -> dict:
    """Per-seed mean and std (over episodes) of every evaluation metric ([seeds, episodes] arrays)."""
    out = {}
    for name, values in evaluation.items():
        values = np.asarray(values, np.float64)
        out[f"{name}_mean"] = values.mean(axis=-1).tolist()
        out[f"{name}_std"] = values.std(axis=-1).tolist()
    return out


def evaluation_records(args: Args, points: list[dict[str, float]], out: dict, common: dict) -> list[dict]:
    """metrics.jsonl's lines for one evaluation, one per grid point: per-seed evaluation metrics and training
    statistics and, in a grid, the point's name (as in summary.json) and values."""
    records = []
    for p, point in enumerate(points):
        runs = point_runs(args, p)
        record = {**common, **({"algorithm": ALGORITHM + point_name(point), **point} if point else {})}
        for prefix in POLICIES:
            evaluation = {k: np.asarray(v)[runs] for k, v in out[f"{prefix}eval"].items()}
            record.update({f"{prefix}{k}": v for k, v in summarise(evaluation).items()})
        record.update({k: np.asarray(v)[runs].mean(axis=-1).tolist() for k, v in out["train"].items()})
        records.append(record)
    return records


def marl_eval_summary(env: EnvSpec, args: Args, evaluations: list, absolute: dict | None,
                      algorithm: str = ALGORITHM, eval_key: str = "eval", runs: slice = slice(None)) -> dict:
    """marl-eval's JSON layout: env -> task -> algorithm -> seed -> step_i / absolute_metrics; `runs`: the
    grid point's seeds among the [runs, ...] arrays."""
    task = env.env_id.split("-", 1)[-1] if env.suite not in ("connector", "custom") else env.env_id
    by_seed = {}
    for s in range(args.num_seeds):
        run = {
            f"step_{i}": {
                "step_count": c["env_steps"],
                **{k: [float(x) for x in np.asarray(v)[runs][s]] for k, v in c[eval_key].items()},
            }
            for i, c in enumerate(evaluations)
        }
        if absolute is not None:
            run["absolute_metrics"] = {k: [float(x) for x in np.asarray(v)[runs][s]]
                                       for k, v in absolute.items()}
        by_seed[f"seed_{args.seed + s}"] = run
    return {env.suite: {task: {algorithm: by_seed}}}


def write_summary(run_dir: str, env: EnvSpec, args: Args, points: list, evaluations: list, absolute: dict):
    """summary.json: the deployable policy under this script's name, each other policy under a suffix."""
    summary = {}
    for (p, point), prefix in itertools.product(enumerate(points), POLICIES):
        algorithm = (f"{ALGORITHM}_{prefix[:-1]}" if prefix else ALGORITHM) + point_name(point)
        part = marl_eval_summary(env, args, evaluations, absolute.get(prefix), algorithm, f"{prefix}eval",
                                 point_runs(args, p))
        for task, algorithms in part[env.suite].items():
            summary.setdefault(env.suite, {}).setdefault(task, {}).update(algorithms)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f)


def save_parameters(args: Args, points: list[dict[str, float]], runner, run_dir: str):
    """--save-model: every policy's final and best parameters ([seeds, ...] arrays), one file per grid point
    (`actor_best--actor_lr=0.001.msgpack`), which --evaluate reads back."""
    for (p, point), (_, field, _) in itertools.product(enumerate(points), POLICIES.values()):
        for which in ("final", "best"):
            params = getattr(runner, f"{field}_params" if which == "final" else f"best_{field}_params")
            params = jax.tree.map(lambda x: x[point_runs(args, p)], params)
            with open(os.path.join(run_dir, f"{field}_{which}{point_name(point)}.msgpack"), "wb") as f:
                f.write(serialization.to_bytes(jax.device_get(params)))


def start_wandb(args: Args, run_dir: str):
    """--track: one wandb run for the whole program (every seed and grid point), grouped by --wandb-group."""
    import wandb

    return wandb.init(project=args.wandb_project, entity=args.wandb_entity, config=dataclasses.asdict(args),
                      name=os.path.basename(os.path.normpath(run_dir)), dir=run_dir, group=args.wandb_group,
                      tags=[ALGORITHM, args.env_id, f"{args.num_seeds} seeds", *args.wandb_tags])


def wandb_values(args: Args, records: list[dict], grid: bool) -> dict:
    """What one evaluation logs: each metric's mean over the seeds (`episode_return_mean`) and every seed's own
    curve (`seed_3/episode_return_mean`); in a grid under the point's name (`ippo--actor_lr=0.001/...`)."""
    values = {}
    for record in records:
        prefix = record["algorithm"] + "/" if grid else ""
        for key, per_seed in record.items():
            if isinstance(per_seed, list):
                values[f"{prefix}{key}"] = float(np.mean(per_seed))
                values.update({f"{prefix}seed_{args.seed + s}/{key}": float(v) for s, v in enumerate(per_seed)})
            elif key in ("sps", "wall_time"):
                values[key] = record[key]
    return values


def first_non_finite(train_stats: dict) -> tuple[int, list[int]] | None:
    """The first update (since the last evaluation) whose losses are not finite, and the runs where they are
    not."""
    losses = np.stack([np.asarray(train_stats[k]) for k in LOSSES], axis=-1)
    finite = np.isfinite(losses).all(axis=-1)  # [runs, updates]
    if finite.all():
        return None
    update = int(np.argmax(~finite.all(axis=0)))
    return update, np.flatnonzero(~finite[:, update]).tolist()


# A loss this large is finite, but the run has diverged (a value loss of 5e31 at a learning rate of 1e6).
LOSS_WARNING = 1e8


def exploded_loss(train_stats: dict) -> tuple[str, float] | None:
    """The first of LOSSES whose magnitude passed LOSS_WARNING since the last evaluation, with its largest
    value."""
    for name in LOSSES:
        peak = float(np.nanmax(np.abs(np.asarray(train_stats[name]))))
        if peak > LOSS_WARNING:
            return name, peak
    return None


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def spread(std: float, count: int, unit: str) -> str:
    """What a mean's ± is over: ` ± 0.297 (sd over 5 seeds)`, ` ± 4.256 (sd over 32 episodes)`; ` (1 seed)`."""
    counted = f"{count} {unit}{'s' if count != 1 else ''}"
    return f" ± {std:.3f} (sd over {counted})" if count > 1 else f" ({counted})"
# End of the output helpers.


# =============================================================================================
# Long runs: checkpoints, resuming, stopping, progress, saved policies (identical in every script)
# =============================================================================================
# Flags that may change when a run is resumed; every other one is the run's own, from its args.json.
RESUME_FREE = ("resume", "evaluate", "progress_seconds", "track", "wandb_group", "wandb_tags", "output_dir",
               "capture_video")


def update_then_evaluate(trainer: Trainer) -> Callable:
    """(runner, hp, evaluate) -> (runner, stats, evaluation): one update, then, where `evaluate` holds, the
    evaluation (a cond: zeros, and nothing run, elsewhere). One compiled program for both runs the update
    itself faster than a program of the update alone (README, "Long runs")."""

    def update_and_maybe_evaluate(runner, hp, evaluate):
        runner, stats = trainer.update(runner, hp)
        shapes = jax.eval_shape(trainer.evaluate_and_keep_best, runner)[1]

        def skip(runner):
            return runner, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        runner, evaluation = jax.lax.cond(evaluate, trainer.evaluate_and_keep_best, skip, runner)
        return runner, stats, evaluation

    return update_and_maybe_evaluate


class RunFinished(Exception):
    """--resume of a run that has nothing left to do."""


def args_json(run_dir: str) -> dict | None:
    """A run directory's args.json (a grid's values as tuples, as Args holds them), or None."""
    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}


def wrote_absolute_metric(run_dir: str) -> bool:
    """The run wrote its absolute metric, the last thing a run that trained to the end writes."""
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            return "absolute_metrics" in f.read()
    except OSError:
        return False


def latest_checkpoint(run_dir: str) -> int | None:
    """The number of evaluations behind the run's last complete checkpoint (orbax names them by it), if any."""
    try:
        steps = [int(d) for d in os.listdir(os.path.join(run_dir, "checkpoint")) if d.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def resumed_args(args: Args) -> Args:
    """--resume RUN_DIR: the run's flags from its args.json. A flag left at the script's default takes the
    run's value; one given with a value of its own must equal the run's."""
    if args.resume is None:
        return args
    if args.evaluate is not None:
        raise UsageError("--resume and --evaluate exclude each other: resume a run, or evaluate a saved "
                         "policy")
    saved = args_json(args.resume)
    if saved is None:
        raise UsageError(f"--resume {args.resume!r} is not a run directory (no readable args.json in it)")
    if saved.get("algorithm") != ALGORITHM:
        raise UsageError(f"--resume {args.resume!r} is a run of {saved.get('algorithm')}.py: resume it with "
                         f"that script, not {ALGORITHM}.py")
    done = latest_checkpoint(args.resume)
    if done is None:
        raise UsageError(f"--resume {args.resume!r} holds no checkpoint (it stopped before its first "
                         "evaluation): there is nothing to resume; start the run again")
    if done >= saved.get("num_evaluations", done + 1) and wrote_absolute_metric(args.resume):
        raise RunFinished(f"{args.resume} is finished (all {done} evaluations and the absolute metric are in its "
                          "summary.json): nothing to resume")
    defaults, names = Args(), [f.name for f in dataclasses.fields(Args) if f.name not in RESUME_FREE]
    differ = [n for n in names
              if getattr(args, n) != getattr(defaults, n) and getattr(args, n) != saved.get(n)]
    if differ:
        raise UsageError("--resume continues a run with its own flags, but " + "; ".join(
            f"--{n.replace('_', '-')} is {getattr(args, n)!r} here and {saved.get(n)!r} in the run"
            for n in differ))
    return dataclasses.replace(args, **{n: saved[n] for n in names if n in saved})


def checkpoint_manager(run_dir: str):
    """orbax writes each checkpoint into a temporary folder and renames it when complete, so a write cut short
    is never read back; only the latest is kept (the best parameters are part of it)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, "checkpoint")), options=options)


def save_checkpoint(manager, done: int, runner, wall_time: float, warned: bool, evaluations: list):
    """The whole training state (parameters, optimiser, environment and recurrent states, keys, the best
    so far) and, as JSON, the count of evaluations done and each one's results for summary.json. The JSON's
    keys ("interval", "checkpoints") are those of earlier versions, whose run directories still resume."""
    import orbax.checkpoint as ocp

    progress = {"interval": done, "wall_time": wall_time, "warned": warned, "checkpoints": [
        {k: v if k == "env_steps" else {m: np.asarray(x).tolist() for m, x in v.items()}
         for k, v in c.items()} for c in evaluations]}
    manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(jax.device_get(runner)),
                                               progress=ocp.args.JsonSave(progress)))


def restore_checkpoint(manager, like):
    """The latest checkpoint, placed on the devices the way `like` (a fresh runner) is: (runner, evaluations
    done, wall time, warned, evaluations)."""
    import orbax.checkpoint as ocp

    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.device_get(like)), progress=ocp.args.JsonRestore()))
    runner = jax.tree.map(lambda x, y: jax.device_put(x, y.sharding), restored.state, like)
    progress = restored.progress
    evaluations = [{k: v if k == "env_steps" else {m: np.asarray(x, np.float32) for m, x in v.items()}
                    for k, v in c.items()} for c in progress["checkpoints"]]
    return runner, progress["interval"], progress["wall_time"], progress["warned"], evaluations


def keep_first_lines(path: str, count: int):
    """metrics.jsonl as it was at the checkpoint: lines written after it (the run was killed before the next
    checkpoint was saved) are written again by the resumed run."""
    with open(path) as f:
        lines = [line for line in f.readlines() if line.endswith("\n")][:count]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


class StopRequest:
    """Ctrl-C during training: the first finishes the update under way and stops (the run stays resumable
    from its last checkpoint); a second stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this update (Ctrl-C again to stop at once)", flush=True)

    def release(self):
        signal.signal(signal.SIGINT, self.previous)


class Progress:
    """A progress line every --progress-seconds between evaluations, printed by a thread of its own, so that
    it keeps coming while the main thread waits inside one long update (the first one included)."""

    def __init__(self, args: Args, trainer: Trainer, updates_done: int):
        self.seconds, self.steps_per_update = args.progress_seconds, args.num_envs * args.rollout_length
        self.total = args.num_evaluations * trainer.num_updates_per_eval
        self.first = self.updates_done = updates_done
        self.latest = None  # the last finished update's statistics
        self.start = self.last_line = time.time()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.tick, daemon=True)
        self.thread.start()

    def tick(self):
        while not self.stopped.wait(min(self.seconds, 0.1)):
            if time.time() - self.last_line >= self.seconds:
                self.line()

    def line(self):
        rate = (self.updates_done - self.first) / max(time.time() - self.start, 1e-9)
        ended = self.latest is not None and np.sum(self.latest["train_episodes"]) > 0
        returns = f"{np.mean(self.latest['train_episode_return']):.3f}" if ended else "-"
        # Before the first update has finished there is no rate to estimate from.
        eta = format_duration((self.total - self.updates_done) / rate) if rate > 0 else "-"
        print(f"      step {self.updates_done * self.steps_per_update:>11,} | "
              f"{rate * self.steps_per_update:>9,.0f} sps | training return {returns} | ETA {eta}", flush=True)
        self.last_line = time.time()

    def close(self):
        self.stopped.set()
        self.thread.join()


def wait_for(tree):
    """Until every array of `tree` is computed, polling, so that a second Ctrl-C is served meanwhile."""
    while not all(x.is_ready() for x in jax.tree.leaves(tree)):
        time.sleep(0.02)


def while_compiling(build: Callable, args: Args, fresh_run_dir: str | None):
    """build() (initialisation and compilation) in a thread, with a line every --progress-seconds. Ctrl-C
    meanwhile ends the program at once with one line (XLA cannot be interrupted mid-compilation)."""
    result = {}

    def run():
        try:
            result["value"] = build()
        except BaseException as error:  # handed to the main thread
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    start, last = time.time(), time.time()
    # Python's own Ctrl-C handler even where the parent ignored SIGINT (as pytest-xdist's workers do)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print("compiling: tracing and compiling the update takes a while on a CPU ...", flush=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.1)
            if time.time() - last >= max(args.progress_seconds, 1.0) * 3:
                print(f"  still compiling ({format_duration(time.time() - start)})", flush=True)
                last = time.time()
    except KeyboardInterrupt:
        if fresh_run_dir is not None:
            shutil.rmtree(fresh_run_dir, ignore_errors=True)
        print("\ninterrupted while compiling: nothing was trained", file=sys.stderr, flush=True)
        os._exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
    if "error" in result:
        raise result["error"]
    return result["value"]


def policy_shapes(trainer: Trainer, hp: dict) -> dict:
    """Each of POLICIES' parameter shapes, by name ("layer/kernel"), as these flags build them."""
    shapes = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), hp)
    return {prefix: {k: v.shape for k, v in traverse_util.flatten_dict(getattr(shapes, f"{field}_params"),
                                                                      sep="/").items()}
            for prefix, (_, field, _) in POLICIES.items()}


def why_not(args: Args, hp: dict, flat: dict, expected: dict, saved_args: dict) -> str:
    """The flags of the run that saved the file (its args.json) that shape the network differently from these:
    each is tried alone, and named when it changes the parameters' shapes or the environment. Else the first
    parameter whose shape differs."""
    names = [f.name for f in dataclasses.fields(Args) if f.name not in RESUME_FREE and f.name in saved_args]
    differ = []
    for name in (n for n in names if saved_args[n] != getattr(args, n)):
        if name != "env_id":
            try:
                trial = dataclasses.replace(args, **{name: saved_args[name]})
                if policy_shapes(make_train(trial, make_env(trial.env_id)), hp)[""] == expected:
                    continue
            except Exception:  # a value these flags cannot build with is no cause to name
                continue
        differ.append(f"--{name.replace('_', '-')} (the run used {saved_args[name]!r}, here {getattr(args, name)!r})")
    if differ:
        return ", ".join(differ)
    missing = sorted(expected.keys() - flat.keys()) or sorted(flat.keys() - expected.keys())
    if missing:
        return f"{missing[0]} is in one and not the other; check --env-id and the network's size flags"
    name = next(k for k in expected if flat[k][1:] != expected[k])
    return (f"{name} is {flat[name][1:]} per seed in the file and {expected[name]} here; check --env-id "
            "and the network's size flags")


def load_saved(args: Args, trainer: Trainer, hp: dict):
    """--evaluate FILE: which of POLICIES the saved parameters ([seeds, ...] arrays) are, and the parameters.
    A file saved by another script (the args.json beside it says which) is refused: its network may fit
    this script's by shape and still be another algorithm's."""
    saved_args = args_json(os.path.dirname(os.path.abspath(args.evaluate))) or {}
    if saved_args.get("algorithm", ALGORITHM) != ALGORITHM:
        raise UsageError(f"--evaluate {args.evaluate!r} was saved by {saved_args['algorithm']}.py (the args.json "
                         f"beside it says so): evaluate it with that script, not {ALGORITHM}.py")
    try:
        with open(args.evaluate, "rb") as f:
            saved = serialization.msgpack_restore(f.read())
    except (OSError, ValueError) as error:
        raise UsageError(f"--evaluate {args.evaluate!r} cannot be read as flax msgpack parameters "
                         f"({getattr(error, 'strerror', None) or error})") from None
    flat = ({k: np.shape(v) for k, v in traverse_util.flatten_dict(saved, sep="/").items()}
            if isinstance(saved, dict) else {})
    expected = policy_shapes(trainer, hp)
    for prefix, shapes_here in expected.items():
        if flat.keys() == shapes_here.keys() and all(flat[k][1:] == shapes_here[k] for k in flat):
            return prefix, jax.tree.map(jnp.asarray, saved)
    names = " or ".join(name for name, _, _ in POLICIES.values())
    raise UsageError(f"--evaluate {args.evaluate!r} does not fit the {names} network these flags build: "
                     f"{why_not(args, hp, flat, expected[''], saved_args)}")


def write_video(args: Args, env: EnvSpec, trainer: Trainer, prefix: str, params, path: str) -> str | None:
    """--capture-video: one evaluation episode of the first seed's policy (the absolute metric's key),
    recorded by the jitted evaluator and drawn afterwards on the host, so training never waits for it."""
    name, _, evaluator = POLICIES[prefix]
    evaluate = jax.jit(getattr(trainer, evaluator), static_argnums=(2, 3))
    first_seed = jax.tree.map(lambda x: x[0], params)
    metrics, episode = jax.device_get(evaluate(first_seed, jax.random.PRNGKey(args.seed + 10_000), 1, True))
    start = time.time()
    try:
        env.animate(episode, path)
    except OSError as error:
        print(f"error: --capture-video could not write {path}: {error.strerror or error}", file=sys.stderr)
        return None
    print(f"video of the {name} (first seed, one episode: return {float(metrics['episode_return'][0]):.3f}, "
          f"{int(metrics['episode_length'][0])} steps) in {path}, drawn in {time.time() - start:.0f}s",
          flush=True)
    return path


def evaluate_saved(args: Args, env: EnvSpec, trainer: Trainer, prefix: str, params) -> dict:
    """Evaluates every seed of a saved policy with the keys of the training run's absolute metric: a file of
    best parameters reproduces it with --num-eval-episodes at 10x the run's."""
    name, _, evaluator = POLICIES[prefix]
    num_seeds = jax.tree.leaves(params)[0].shape[0]
    keys = jax.vmap(jax.random.PRNGKey)(args.seed + 10_000 + jnp.arange(num_seeds))
    evaluate = jax.jit(over_runs(getattr(trainer, evaluator), args, (0, 0, None)), static_argnums=2)
    evaluation = jax.device_get(evaluate(params, keys, args.num_eval_episodes))
    print(f"{ALGORITHM}.py's {name} from {args.evaluate} on {args.env_id}: {num_seeds} seed(s) x "
          f"{args.num_eval_episodes} episodes")
    for metric, values in summarise(evaluation).items():
        if metric.endswith("_mean"):
            print(f"  {metric[:-5]:<16} {np.mean(values):10.4f}{spread(np.std(values), num_seeds, 'seed')} "
                  f"(per seed: {', '.join(f'{v:.4f}' for v in values)})")
    if args.capture_video:
        write_video(args, env, trainer, prefix, params, os.path.splitext(args.evaluate)[0] + ".gif")
    return evaluation
# End of the long-run helpers.


# =============================================================================================
# main(): prepare, train, finish (identical in every script)
# =============================================================================================
@dataclasses.dataclass
class Run:
    """One program's runs (every seed and grid point) as prepare() sets them up and train_loop() and finish() carry
    them on."""
    args: Args
    env: EnvSpec
    trainer: Trainer
    run_dir: str
    fresh: bool  # the run directory was made by this program (not --resume)
    points: list[dict[str, float]]  # the grid's points; [{}] without a grid
    hp: dict  # every run's hyperparameters, [runs] arrays
    runner: RunnerState  # every run's training state, [runs, ...] arrays
    update: Callable  # compiled update_then_evaluate: (runner, hp, evaluate) -> (runner, stats, evaluation)
    store: object = None  # the orbax checkpoint manager (none on several hosts)
    wandb_run: object = None
    evaluations: list = dataclasses.field(default_factory=list)  # env steps and each policy's metrics
    records: list = dataclasses.field(default_factory=list)  # the last evaluation's metrics lines
    done: int = 0  # evaluations done, restored ones included
    wall_before: float = 0.0  # training time before a resume
    warned: bool = False  # the divergence warning was printed
    absolute: dict = dataclasses.field(default_factory=dict)  # the absolute metric, per policy
    exit_message: str | None = None  # the last line of a run that ends early
    discard: bool = False  # stopped before anything was kept: the run directory goes


def compile_update(args: Args, trainer: Trainer, keys, hp, fresh_run_dir: str | None):
    """Every run's initial state, and the update compiled once for all of them (buffers donated)."""
    init = jax.jit(over_runs(trainer.init, args, (0, 0)))
    # One update per call, so that progress and Ctrl-C are served between updates.
    jitted = jax.jit(over_runs(update_then_evaluate(trainer), args, (0, 0, None)), donate_argnums=0)

    def build():
        runner = init(keys, hp)
        return runner, jitted.lower(runner, hp, True).compile()

    start = time.time()
    runner, update = while_compiling(build, args, fresh_run_dir)
    print(f"compiled in {time.time() - start:.1f}s", flush=True)
    return runner, update


def connect(run: Run) -> Run:
    """The run's outside world: the hosts, the checkpoint store (and the checkpoint to resume from), the
    metrics file, wandb."""
    args, run_dir = run.args, run.run_dir
    if jax.process_count() > 1:
        # Hosts compile at different speeds, and gloo gives up on a peer after 30 s at the first collective:
        # wait for every host at the coordination service's barrier (no collective) first.
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier(f"{ALGORITHM}-compiled", 3_600_000)
        print("note: --distributed runs write no checkpoints, so they cannot be resumed")
    else:
        run.store = checkpoint_manager(run_dir)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if args.resume:
        run.runner, run.done, run.wall_before, run.warned, run.evaluations = restore_checkpoint(run.store, run.runner)
        keep_first_lines(metrics, run.done * len(run.points))
        print(f"resumed after evaluation {run.done}", flush=True)
    open(metrics, "a").close()  # there from the start, empty until the first evaluation
    if args.track:
        run.wandb_run = start_wandb(args, run_dir)
    return run


def prepare(args: Args, env: EnvSpec, trainer: Trainer) -> Run:
    """Everything before the first update: the run directory (new, or the resumed one), every run's inputs,
    the compiled update, the restored checkpoint, wandb."""
    if jax.process_index() > 0:  # several hosts compute the same metrics; only process 0 keeps them
        args = dataclasses.replace(
            args, output_dir=tempfile.mkdtemp(prefix=f"{ALGORITHM}-process-"), track=False, save_model=False
        )
    try:
        run_dir = args.resume or make_run_dir(args)
    except OSError as error:  # read-only, a file in the way, /proc, ...: before anything compiles
        raise UsageError(f"--output-dir {args.output_dir!r} cannot hold a run directory: "
                         f"{error.strerror or error}") from None
    points = grid_points(args)
    grid = f" x {len(points)} grid points" if points[0] else ""
    print(
        f"{ALGORITHM} on {args.env_id}: {env.num_agents} agents, obs {env.obs_dim}, actions {env.num_actions}"
        f"{' (continuous)' if env.continuous else ''}; {args.num_seeds} seed(s){grid}, "
        f"{run_batching(args)}; {'resuming' if args.resume else 'writing'} {run_dir}", flush=True
    )
    steps = trainer.num_updates_per_eval * args.num_envs * args.rollout_length * args.num_evaluations
    if steps < args.total_timesteps:
        print(f"note: training {steps} steps per seed (whole updates per evaluation), not {args.total_timesteps}")
    keys, hp = run_inputs(args)
    runner, update = compile_update(args, trainer, keys, hp, None if args.resume else run_dir)
    run = Run(args, env, trainer, run_dir, not args.resume, points, hp, runner, update)
    try:
        return connect(run)
    except KeyboardInterrupt:  # after compiling, before the first update
        if run.fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        sys.exit("interrupted before training: nothing was trained")


def record_evaluation(run: Run, out: dict, wall_time: float) -> bool:
    """An evaluation's outputs: the metrics lines, the checkpoint, wandb. False where a non-finite loss stops
    the run (the lines before it are kept)."""
    args, points, grid = run.args, run.points, bool(run.points[0])
    bad = first_non_finite(out["train"])
    if bad is not None:
        update_number = run.done * run.trainer.num_updates_per_eval + bad[0] + 1
        where = sorted({ALGORITHM + point_name(points[r // args.num_seeds]) for r in bad[1]})
        run.exit_message = (f"error: non-finite loss at update {update_number} (before evaluation {run.done + 1})"
                            f"{' in ' + ', '.join(where) if grid else ''}; stopping. Metrics so far are in "
                            f"{run.run_dir}/metrics.jsonl")
        return False
    exploded = exploded_loss(out["train"])
    if exploded is not None and not run.warned:
        run.warned = True  # once: a diverged run would repeat it at every evaluation
        print(f"warning: {exploded[0]} reached {exploded[1]:.3g} by evaluation {run.done + 1} (above "
              f"{LOSS_WARNING:.0e}): the run is likely diverging; a lower learning rate usually helps",
              file=sys.stderr, flush=True)
    done = run.done + 1
    env_steps = done * run.trainer.num_updates_per_eval * args.num_envs * args.rollout_length
    # metrics.jsonl's "checkpoint" field is the evaluation's number (its name from earlier versions).
    run.records = evaluation_records(args, points, out, {"checkpoint": done, "env_steps": env_steps,
                                                         "wall_time": round(wall_time, 3),
                                                         "sps": round(env_steps / wall_time, 1)})
    with open(os.path.join(run.run_dir, "metrics.jsonl"), "a") as f:
        f.writelines(json.dumps(record) + "\n" for record in run.records)
    run.evaluations.append({"env_steps": env_steps, **{f"{p}eval": out[f"{p}eval"] for p in POLICIES}})
    if run.store is not None:  # after the metrics lines: a resumed run rewrites lines past its checkpoint
        save_checkpoint(run.store, done, run.runner, wall_time, run.warned, run.evaluations)
    run.done = done
    if run.wandb_run is not None:
        run.wandb_run.log(wandb_values(args, run.records, grid), step=env_steps)
    return True


def print_evaluation(run: Run, eta: float):
    """The evaluation's console line; in a grid, of the point whose deployable policy scores best so far."""
    args, metric = run.args, headline_metric(run.env.suite)
    record = max(run.records, key=lambda r: np.mean(r[f"{metric}_mean"]))
    scores = [f"{name} {metric} {np.mean(record[f'{prefix}{metric}_mean']):8.3f}"
              for prefix, (name, _, _) in POLICIES.items()]
    if args.num_seeds > 1:
        scores[0] += spread(np.std(record[f"{metric}_mean"]), args.num_seeds, "seed")
    else:
        scores[0] += spread(record[f"{metric}_std"][0], args.num_eval_episodes, "episode")
    print(f"[{run.done:>3}/{args.num_evaluations}] step {record['env_steps']:>11,} | {record['sps']:>9,.0f} sps | "
          f"{'best ' + record['algorithm'] + ': ' if run.points[0] else ''}{' | '.join(scores)} | "
          f"ETA {format_duration(eta)}", flush=True)


def stop(run: Run, how: str):
    """A run stopped early: its last line says what it kept and how to go on; with nothing kept, its run
    directory goes too."""
    if run.done == 0:
        run.discard = run.fresh
        run.exit_message = f"{how} before the first evaluation: nothing was kept; start the run again"
    else:
        run.exit_message = (f"{how} after evaluation {run.done} of {run.args.num_evaluations}; the checkpoint and "
                            f"metrics are in {run.run_dir}; continue with python {ALGORITHM}.py --resume {run.run_dir}")


def train_loop(run: Run):
    """Updates, one compiled call each, with an evaluation and a checkpoint after every
    trainer.num_updates_per_eval of them; stops early on Ctrl-C or a non-finite loss."""
    n, ctrl_c, first = run.trainer.num_updates_per_eval, StopRequest(), run.done
    progress, start = Progress(run.args, run.trainer, run.done * n), time.time()
    try:
        while run.done < run.args.num_evaluations:
            stats = []
            for u in range(n):
                run.runner, update_stats, evaluation = run.update(run.runner, run.hp, u == n - 1)
                if stats:  # at most this update in flight: Ctrl-C then stops within one update
                    wait_for(stats[-1])
                    progress.updates_done, progress.latest = progress.updates_done + 1, jax.device_get(stats[-1])
                stats.append(update_stats)
                if ctrl_c.requested:
                    return stop(run, "stopped")
            out = {**jax.device_get(evaluation),
                   "train": jax.tree.map(lambda *xs: np.stack(xs, axis=-1), *jax.device_get(stats))}
            progress.updates_done = (run.done + 1) * n
            if not record_evaluation(run, out, run.wall_before + time.time() - start):
                return
            eta = (time.time() - start) / (run.done - first) * (run.args.num_evaluations - run.done)
            print_evaluation(run, eta)
            progress.last_line = time.time()
    finally:
        progress.close()
        ctrl_c.release()


def finish(run: Run):
    """After the last evaluation: the absolute metric (the best parameters over 10x the episodes) of every
    policy, and the video of the best grid point's first seed."""
    args, metric = run.args, headline_metric(run.env.suite)
    keys, _ = run_inputs(args, seed_offset=10_000)
    for prefix, (name, field, evaluator) in POLICIES.items():
        evaluate = jax.jit(over_runs(getattr(run.trainer, evaluator), args, (0, 0, None)), static_argnums=2)
        run.absolute[prefix] = jax.device_get(
            evaluate(getattr(run.runner, f"best_{field}_params"), keys, 10 * args.num_eval_episodes))
        for p, point in enumerate(run.points):
            means = np.asarray(run.absolute[prefix][metric])[point_runs(args, p)].mean(axis=-1)
            of = f" of {ALGORITHM}{point_name(point)}" if run.points[0] else ""
            print(f"absolute {metric} of the {name}{of} (best parameters, {10 * args.num_eval_episodes} "
                  f"episodes): {means.mean():.3f}{spread(means.std(), args.num_seeds, 'seed')}")
    if args.capture_video:
        field = POLICIES[""][1]
        scores = np.asarray(run.absolute[""][metric]).mean(axis=-1).reshape(len(run.points), -1).mean(axis=-1)
        p = int(np.argmax(scores))
        params = jax.tree.map(lambda x: x[point_runs(args, p)], getattr(run.runner, f"best_{field}_params"))
        video = write_video(args, run.env, run.trainer, "", params,
                            os.path.join(run.run_dir, f"{field}_best{point_name(run.points[p])}.gif"))
        if run.wandb_run is not None and video is not None:
            import wandb

            run.wandb_run.log({"video": wandb.Video(video, format="gif")})


def save_outputs(run: Run):
    """Whatever way the run ended: summary.json, the parameter files, wandb's end. Work still in flight on the
    devices is waited for first: the interpreter must not exit under a running XLA computation."""
    jax.block_until_ready(run.runner)
    if run.wandb_run is not None:
        run.wandb_run.finish()
    if run.discard:
        shutil.rmtree(run.run_dir, ignore_errors=True)
        return
    write_summary(run.run_dir, run.env, run.args, run.points, run.evaluations, run.absolute)
    if run.args.save_model:
        save_parameters(run.args, run.points, run.runner, run.run_dir)


def main(args: Args) -> str | dict:
    """Trains (or, with --evaluate, evaluates) and returns the run directory (or the evaluation)."""
    try:
        args = resumed_args(args)
        env = validate(args)
        trainer = make_train(args, env)
        if args.evaluate is not None:
            return evaluate_saved(args, env, trainer, *load_saved(args, trainer, hparams_from_args(args)))
        run = prepare(args, env, trainer)
    except UsageError as error:
        sys.exit(f"error: {error}")
    except RunFinished as finished_run:
        print(finished_run)
        return args.resume
    try:
        train_loop(run)
        if run.done == args.num_evaluations:
            finish(run)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        stop(run, "interrupted")
    finally:
        save_outputs(run)
    if run.exit_message:
        sys.exit(run.exit_message)
    return run.run_dir
# End of main().


if __name__ == "__main__":
    check_single_values(sys.argv[1:])
    main(tyro.cli(Args))
