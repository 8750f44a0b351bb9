"""CTDS: a Centralised Teacher with a Decentralised Student (the paper's baseline, Sec. 5).

The on-policy CTDS of the MAGPO paper (arXiv 2507.18059) is MAGPO without the double clip, without
the KL mask and without the learner's RL term. Two policies train on the same rollouts:
  * the teacher (Sable, the same network as magpo_sable.py's guider: a retention encoder over all
    agents' observations with the value head, and a retention decoder that picks the agents'
    actions one after another; recurrent over time). It acts in the environment and trains by plain
    PPO, as Sable alone would: nothing ties it to the student;
  * the student (the GRU actor of ippo.py, on each agent's own observation). It learns only by
    imitation, minimising the KL to the teacher on the teacher's rollouts. It is what gets deployed:
    every evaluation in metrics.jsonl is the student's, the teacher's is logged beside it.
Each update:
  1. the teacher rolls out `--rollout-length` steps in `--num-envs` environments; the student's GRU
     runs along on the same observations so that its training sequences start from the right state;
  2. GAE on the teacher's values;
  3. `--ppo-epochs` passes over `--num-minibatches` minibatches of whole environment sequences:
       teacher  clipped PPO with r = mu / mu_old, the clipped value loss and an entropy bonus
                (magpo_sable.py's Eq. 8-9 with delta = inf: no inner clip, no KL);
       student  KL between the teacher (held fixed) and the student, nothing else
                (magpo_sable.py's Eq. 10 with lambda = 0).
`diff magpo_sable.py ctds.py` shows exactly what separates the two algorithms. Names follow
magpo_sable.py's roles so that the outputs read the same: guider = the teacher, learner/actor = the
student (`guider_*` metrics, `ctds_guider` in summary.json, `guider_*.msgpack`).

Why MAGPO beats it (Sec. 3, Table 1: CoordSum-3x10 CTDS 90.74 vs MAGPO 107.97): the teacher is free
to learn a coordinated joint policy that no decentralised student can imitate.

The paper publishes no tuned CTDS values; to compare with Table 1's CTDS row on CoordSum-3x10, give
the teacher Sable's tuned values for that task (benchmark/reference/paper_hyperparameters.csv):
    python ctds.py --env-id coordsum-3x10 --num-seeds 10 --num-minibatches 2 --max-grad-norm 5 \\
        --embed-dim 64 --ppo-epochs 15 --clip-eps 0.2 --decay-scaling-factor 0.5 --n-head 1 --ent-coef 0.01 \\
        --n-block 2 --lr 5e-4
"""

from __future__ import annotations

import dataclasses
import difflib
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

# XLA:CPU in jax 0.10 hands small matmuls to YNNPACK fusions, which made the many tiny steps of the GRU scans
# about 30% slower on a CPU (README, "JAX 0.6 to 0.10"); off unless XLA_FLAGS says otherwise. Read when the
# backend starts, not at import; jax before 0.10 does not know the flag.
_xla_flags = os.environ.get("XLA_FLAGS", "")
if tuple(int(v) for v in jax.__version__.split(".")[:2]) >= (0, 10) and "ynn_fusion" not in _xla_flags:
    os.environ["XLA_FLAGS"] = f"{_xla_flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


ALGORITHM = "ctds"


@dataclass
class Args:
    env_id: str = "rware-tiny-2ag"
    """environment id `<suite>-<task>`, e.g. rware-tiny-2ag, lbf-2s-8x8-2p-2f-coop, con-5x5x3a,
    mpe-simple_spread_3ag, smax-2s3z, coordsum-3x10"""
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
    total_timesteps: int = 20_000_000
    """environment steps per seed (every parallel environment's step counts once)"""
    num_envs: int = 128
    """parallel environments per seed (the paper's 64 envs x Mava's update_batch_size 2 = 128 per update)"""
    rollout_length: int = 128
    """environment steps per environment between two updates"""
    num_evaluations: int = 122
    """evenly spaced evaluation checkpoints over training"""
    num_eval_episodes: int = 32
    """episodes per checkpoint, for the student and for the teacher; the final absolute metric uses 10x as
    many with the best parameters"""
    evaluation_greedy: bool = False
    """evaluate with the most likely action instead of a sampled one"""
    track: bool = False
    """log to Weights & Biases (WANDB_MODE=offline works without an account)"""
    wandb_project: str = "magpo-jax"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user)"""
    save_model: bool = False
    """write the final and the best parameters of student and teacher as flax msgpack into the run
    directory"""
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

    kl_direction: Literal["guider-learner", "learner-guider"] = "guider-learner"
    """student's loss: KL(teacher || student) as the authors' MAGPO code computes its distillation term, or
    KL(student || teacher)"""
    shuffle_agents: bool = True
    """train the teacher on a random agent order per epoch (as Sable does); acting uses 0..n-1"""
    ppo_epochs: int = 4
    """passes over the rollout per update"""
    num_minibatches: int = 2
    """minibatches per epoch; each holds num_envs / num_minibatches whole environment sequences"""
    gamma: float | tuple[float, ...] = 0.99
    """discount factor"""
    gae_lambda: float | tuple[float, ...] = 0.9
    """GAE lambda (paper Tables 2-3)"""
    clip_eps: float | tuple[float, ...] = 0.2
    """teacher: PPO clipping range for the policy ratio and the value function"""
    ent_coef: float | tuple[float, ...] = 0.01
    """teacher: entropy bonus coefficient"""
    vf_coef: float | tuple[float, ...] = 0.1
    """teacher: value loss coefficient (paper Tables 2-3)"""
    max_grad_norm: float | tuple[float, ...] = 0.5
    """global gradient-norm clip, applied to teacher and student separately"""
    lr: float | tuple[float, ...] = 2.5e-4
    """Adam learning rate of both teacher and student (one rate, as magpo_sable.py)"""
    n_block: int = 1
    """teacher: retention blocks in the encoder and in the decoder"""
    n_head: int = 1
    """teacher: retention heads per block (each with its own decay rate)"""
    embed_dim: int = 64
    """teacher: embedding width (even, divisible by n_head)"""
    decay_scaling_factor: float = 0.8
    """teacher: multiplies every head's decay rate kappa, in (0, 1]; smaller forgets the past faster"""
    chunk_size: int | None = None
    """teacher training: timesteps per retention chunk (divides --rollout-length); default the whole
    rollout"""
    layer_size: int = 128
    """student: width of the dense layer before and after the GRU"""
    gru_size: int = 128
    """student: GRU hidden size"""


# Continuous hyperparameters reach `train` as arrays, not constants baked into the trace, so that a grid of
# them (several values per flag, e.g. the paper's delta x lambda per task) trains in one compiled program like
# seeds do (the grid helpers below main).
HPARAMS = ("gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm", "lr")


# =============================================================================================
# Networks: the learner = the student (the GRU actor of ippo.py) and the guider = the teacher (Sable)
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

    # Checkpointed: the backward pass recomputes each step's gates, cheaper on a CPU than saving them.
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


def kl_divergence(pi_p, pi_q, continuous: bool) -> jax.Array:
    """KL(p || q) per agent. For the tanh-squashed Gaussians that of the pre-tanh Gaussians: a
    bijection leaves the KL unchanged."""
    return policy_distribution(pi_p, continuous).kl_divergence(policy_distribution(pi_q, continuous))


# ---------------------------------------------------------------------------------------------
# The guider (teacher): Sable (Mahjoub et al. 2024), as the authors' code uses it
# (mava/networks/sable_network.py,
# mava/networks/retention.py). Tokens are (timestep, agent) pairs in the order t * n_agents + agent.
# Retention keeps, per head, a state S (head_size x head_size) that decays by kappa once per
# environment step and restarts with each episode:  S_t = kappa S_{t-1} + sum_tokens k^T v,
# out = q S_t. The encoder lets a token see every agent of its own timestep; the decoder only the
# agents before it (and itself), which makes it auto-regressive over agents.
# Three forms compute the same thing: step by step (acting), one chunk over a whole sequence
# (parallel), and a scan over chunks carrying S (chunkwise; training, `--chunk-size`).
# ---------------------------------------------------------------------------------------------
def decay_rates(n_head: int, decay_scaling_factor: float) -> np.ndarray:
    """kappa per head: 1 - 1/32 ... 1 - 1/512, log-spaced (RetNet's multi-scale decay), times the factor."""
    return (1.0 - np.exp(np.linspace(np.log(1 / 32), np.log(1 / 512), n_head))) * decay_scaling_factor


def positional_encoding(step: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal encoding of the environment step count: sin on even features, cos on odd ones."""
    angle = step[..., None].astype(jnp.float32) * jnp.exp(jnp.arange(0, dim, 2) * (-np.log(10000.0) / dim))
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*step.shape, -1)[..., :dim]


def retention_step(q, k, v, state, decay):
    """Recurrent form for the tokens of one step. q, k, v [B, n, H, d]; state [B, H, d, d]; decay [B, H]
    multiplies the state first (kappa at a new timestep, 0 where an episode starts, 1 for a later
    agent of the same timestep). Every token sees the updated state, its own step's tokens included."""
    state = state * decay[..., None, None] + jnp.einsum("bnhd,bnhe->bhde", k, v)
    return jnp.einsum("bnhd,bhde->bnhe", q, state), state


def retention_chunk(q, k, v, state, kappa, start, n_agents: int, causal: bool):
    """Chunkwise form over C timesteps of n_agents tokens each (L = C * n_agents).
    q, k, v [B, L, H, d]; state [B, H, d, d] before the chunk; kappa [H]; start [B, C] (the timestep
    opens an episode). Token i retains token j with weight kappa^(t_i - t_j) when t_j <= t_i, both lie
    in the same episode and (decoder, `causal`) j <= i; the state from before the chunk enters with
    kappa^(t_i + 1) until the chunk's first episode start."""
    length = q.shape[1]
    time = jnp.arange(length) // n_agents
    episode = jnp.repeat(jnp.cumsum(start, axis=1), n_agents, axis=1)  # [B, L] episodes begun in this chunk
    gap = time[:, None] - time[None, :]
    allowed = (gap >= 0)[None] & (episode[:, :, None] == episode[:, None, :])
    if causal:
        allowed &= jnp.tril(jnp.ones((length, length), bool))[None]
    log_kappa = jnp.log(kappa)[None, :, None, None]
    # [B, H, L, L]
    decay = jnp.where(allowed[:, None], jnp.exp(jnp.maximum(gap, 0)[None, None] * log_kappa), 0.0)
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, L, d]: plain batched matmuls (fast on CPU)
    inner = ((q @ jnp.swapaxes(k, -1, -2)) * decay) @ v
    xi = jnp.where(
        (episode == 0)[:, None, :, None], jnp.exp((time + 1)[None, None, :, None] * log_kappa), 0.0
    )
    cross = (q @ state) * xi  # xi [B, H, L, 1]
    # The state after the chunk: every token weighted as the chunk's last token retains it.
    carried = (
        state
        * (kappa ** (length // n_agents))[None, :, None, None]
        * (episode[:, -1] == 0)[:, None, None, None]
    )
    state = jnp.swapaxes(k, -1, -2) @ (v * decay[:, :, -1, :, None]) + carried
    return jnp.swapaxes(inner + cross, 1, 2), state


class Retention(nn.Module):
    """Multi-scale retention: positional encoding added to key, query and value inputs; one decay
    rate per head; each head's output normalised; gated by swish(key W_g), projected by W_o."""

    embed_dim: int
    n_head: int
    kappa: tuple  # decay rate per head
    causal: bool  # decoder: a token retains only tokens up to itself

    def setup(self):
        init = nn.initializers.normal(stddev=1.0 / self.embed_dim)
        shape = (self.embed_dim, self.embed_dim)
        self.w_q = self.param("w_q", init, shape)
        self.w_k = self.param("w_k", init, shape)
        self.w_v = self.param("w_v", init, shape)
        self.w_g = self.param("w_g", init, shape)
        self.w_o = self.param("w_o", init, shape)
        # Sable normalises each head's output as rows of head_size features in n_head groups.
        self.head_norm = nn.GroupNorm(num_groups=self.n_head)

    def __call__(self, key_in, query_in, value_in, step, state, reset, n_agents=None):
        """Inputs are flat tokens [B * L, embed] (see `Sable`); step [B, L] gives the shape.
        `n_agents` None: one step (`reset` = decay [B, H]); else a chunk (`reset` = start [B, C])."""
        pe = positional_encoding(step.reshape(-1), self.embed_dim)
        key_in, query_in, value_in = key_in + pe, query_in + pe, value_in + pe

        def heads(x, w):
            return (x @ w).reshape(*step.shape, self.n_head, self.embed_dim // self.n_head)

        q, k, v = heads(query_in, self.w_q), heads(key_in, self.w_k), heads(value_in, self.w_v)
        if n_agents is None:
            out, state = retention_step(q, k, v, state, reset)
        else:
            out, state = retention_chunk(
                q, k, v, state, jnp.asarray(self.kappa, jnp.float32), reset, n_agents, self.causal
            )
        out = self.head_norm(out.reshape(-1, self.embed_dim // self.n_head)).reshape(key_in.shape)  # per head
        return (jax.nn.swish(key_in @ self.w_g) * out) @ self.w_o, state


# Sable's blocks end in a SwiGLU feed-forward whose three matrices are all zero-initialised: its
# output and every gradient reaching it are zero, so it stays a no-op through training. It is left
# out here; the layer norm that follows it is kept, so the function computed is the same.
class EncoderBlock(nn.Module):
    embed_dim: int
    n_head: int
    kappa: tuple

    def setup(self):
        self.retention = Retention(self.embed_dim, self.n_head, self.kappa, causal=False)
        self.norm1, self.norm2 = nn.RMSNorm(), nn.RMSNorm()

    def __call__(self, x, step, state, reset, n_agents=None):
        out, state = self.retention(x, x, x, step, state, reset, n_agents)
        return self.norm2(self.norm1(x + out)), state


class DecoderBlock(nn.Module):
    embed_dim: int
    n_head: int
    kappa: tuple

    def setup(self):
        self.self_retention = Retention(self.embed_dim, self.n_head, self.kappa, causal=True)
        self.cross_retention = Retention(self.embed_dim, self.n_head, self.kappa, causal=True)
        self.norm1, self.norm2, self.norm3 = nn.RMSNorm(), nn.RMSNorm(), nn.RMSNorm()

    def __call__(self, x, obs_rep, step, states, reset, n_agents=None):
        self_state, cross_state = states
        out, self_state = self.self_retention(x, x, x, step, self_state, reset, n_agents)
        x = self.norm1(x + out)
        # Cross-retention: the encoder's observation representation queries the actions so far.
        out, cross_state = self.cross_retention(x, obs_rep, x, step, cross_state, reset, n_agents)
        return self.norm3(self.norm2(obs_rep + out)), (self_state, cross_state)


class GuiderState(NamedTuple):
    """Retention states [B, n_block, n_head, head_size, head_size] of the three retentions."""

    encoder: jax.Array
    decoder_self: jax.Array
    decoder_cross: jax.Array


class Sable(nn.Module):
    num_actions: int
    continuous: bool
    n_block: int
    n_head: int
    embed_dim: int
    decay_scaling_factor: float

    def setup(self):
        kappa = tuple(float(x) for x in decay_rates(self.n_head, self.decay_scaling_factor))
        blocks = range(self.n_block)
        self.obs_norm = nn.RMSNorm()
        self.obs_embed = nn.Dense(self.embed_dim, use_bias=False, kernel_init=orthogonal(np.sqrt(2)))
        self.block_norm = nn.RMSNorm()  # before every encoder block (one norm shared, as in Sable)
        self.encoder_blocks = [EncoderBlock(self.embed_dim, self.n_head, kappa) for _ in blocks]
        self.value_hidden = nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))
        self.value_norm = nn.RMSNorm()
        self.value_out = nn.Dense(1, kernel_init=orthogonal(0.01))
        self.action_embed = nn.Dense(
            self.embed_dim, use_bias=self.continuous, kernel_init=orthogonal(np.sqrt(2))
        )
        self.action_norm = nn.RMSNorm()
        self.decoder_blocks = [DecoderBlock(self.embed_dim, self.n_head, kappa) for _ in blocks]
        self.policy_hidden = nn.Dense(self.embed_dim, kernel_init=orthogonal(np.sqrt(2)))
        self.policy_norm = nn.RMSNorm()
        self.policy_out = nn.Dense(self.num_actions, kernel_init=orthogonal(0.01))
        if self.continuous:
            self.log_std = self.param("log_std", nn.initializers.zeros, (self.num_actions,))

    # Between retentions the tokens travel flat, [B * tokens, features]: XLA:CPU computes the dense
    # layers' weight gradients of a 3-d [B, tokens, features] input through slow transposes (3x slower).
    def encode(self, obs, step, state, reset, n_agents=None):
        """Observations [B, tokens, obs_dim] -> (value [B, tokens], representation, encoder state)."""
        x = nn.gelu(self.obs_embed(self.obs_norm(obs.reshape(-1, obs.shape[-1]))))
        new_state = []
        for i, block in enumerate(self.encoder_blocks):
            x, s = block(self.block_norm(x), step, state[:, i], reset, n_agents)
            new_state.append(s)
        value = self.value_out(self.value_norm(nn.gelu(self.value_hidden(x))))
        return value.reshape(step.shape), x.reshape(*step.shape, -1), jnp.stack(new_state, axis=1)

    def decode(self, action_in, obs_rep, step, states, reset, n_agents=None):
        """Previous agents' actions [B, tokens, action_in] and obs representation -> policy outputs."""
        x = self.action_norm(nn.gelu(self.action_embed(action_in.reshape(-1, action_in.shape[-1]))))
        obs_rep = obs_rep.reshape(x.shape)
        self_states, cross_states = [], []
        for i, block in enumerate(self.decoder_blocks):
            x, (s, c) = block(x, obs_rep, step, (states[0][:, i], states[1][:, i]), reset, n_agents)
            self_states.append(s)
            cross_states.append(c)
        out = self.policy_out(self.policy_norm(nn.gelu(self.policy_hidden(x)))).reshape(*step.shape, -1)
        if self.continuous:
            out = (out, jnp.broadcast_to(self.log_std, out.shape))
        return out, (jnp.stack(self_states, axis=1), jnp.stack(cross_states, axis=1))

    def __call__(self, obs, action_in, step, state: GuiderState, start, n_agents: int):
        """Parallel form over one chunk of tokens (training): the decoder is teacher-forced with the
        actions taken. start [B, C] marks timesteps that open an episode."""
        value, obs_rep, encoder = self.encode(obs, step, state.encoder, start, n_agents)
        out, decoder = self.decode(action_in, obs_rep, step, (state.decoder_self, state.decoder_cross), start,
                                   n_agents)
        return value, out, GuiderState(encoder, *decoder)


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



def distillation_kl(pi_guider, pi_learner, continuous: bool, direction: str) -> jax.Array:
    """The student's imitation term per agent, the teacher held fixed: KL(teacher || student) by
    default (as the authors' MAGPO code distils), KL(student || teacher) with `learner-guider`."""
    pi_guider = jax.lax.stop_gradient(pi_guider)
    if direction == "guider-learner":
        return kl_divergence(pi_guider, pi_learner, continuous)
    return kl_divergence(pi_learner, pi_guider, continuous)


def teacher_loss(
    log_prob, old_log_prob, advantage, value, old_value, target, entropy, clip_eps, ent_coef, vf_coef
):
    """Plain Sable PPO (to minimise): clipped surrogate with r = mu / mu_old, minus the entropy bonus,
    plus the clipped value loss. Returns (total, surrogate, value loss)."""
    surrogate = ppo_actor_loss(log_prob, old_log_prob, advantage, clip_eps)
    value_loss = ppo_value_loss(value, old_value, target, clip_eps)
    return surrogate - ent_coef * entropy.mean() + vf_coef * value_loss, surrogate, value_loss


def student_loss(distill_kl):
    """The student learns by imitation alone: the mean KL to the teacher, no RL term (lambda = 0)."""
    return distill_kl.mean()


# =============================================================================================
# Training
# =============================================================================================
class Transition(NamedTuple):
    obs: jax.Array  # [T, E, A, obs_dim]
    step: jax.Array  # [T, E] environment step count of the observation (Sable's positional encoding)
    start: jax.Array  # [T, E] the observation opens an episode (recurrent states reset)
    action_mask: jax.Array
    action: jax.Array
    log_prob: jax.Array  # [T, E, A] the teacher's, i.e. the behaviour policy's (mu_old)
    value: jax.Array  # [T, E, A] the teacher's
    reward: jax.Array  # [T, E]
    done: jax.Array  # [T, E]


class RunnerState(NamedTuple):
    guider_params: dict
    actor_params: dict  # the student's
    guider_opt_state: optax.OptState
    actor_opt_state: optax.OptState
    env_state: object
    timestep: TimeStep
    start: jax.Array  # [E] bool
    guider_state: GuiderState  # [E, ...]
    actor_h: jax.Array  # [E, A, gru]
    key: jax.Array
    best_score: jax.Array  # the student's best evaluation score so far, and its parameters then
    best_actor_params: dict
    best_guider_score: jax.Array  # the same for the teacher
    best_guider_params: dict


# The fields that the gradient steps change.
TRAINED = ("guider_params", "actor_params", "guider_opt_state", "actor_opt_state")


class Trainer(NamedTuple):
    init: Callable  # init(key, hp) -> RunnerState
    update: Callable  # update(runner, hp) -> (runner, stats): one rollout and its epochs
    evaluate_checkpoint: Callable  # evaluate_checkpoint(runner) -> (runner, evaluations), best kept
    learn: Callable  # learn(runner, hp) -> (runner, metrics): an interval of updates, then the above
    evaluate: Callable  # evaluate(actor_params, key, num_episodes, record=False) -> the student's metrics
    evaluate_guider: Callable  # evaluate_guider(guider_params, key, num_episodes, record) -> the teacher's
    train: Callable  # train(key, hp) -> (runner, metrics of every interval): the whole run, one pure function
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


# The guider's two passes: acting, one step at a time, and training, over whole sequences.
def per_agent(x, num_agents: int):
    """[..., E] -> [..., E, A]: a per-environment value for every agent of the environment."""
    return jnp.broadcast_to(x[..., None], x.shape + (num_agents,))


def step_count(ts: TimeStep, start: jax.Array) -> jax.Array:
    """Steps taken in the current episode ([E]): 0 where it starts, the running length otherwise."""
    return jnp.where(start, 0, ts.episode_length)


class Guider(NamedTuple):
    """The teacher, Sable: the acting step (recurrent form) and the training pass (chunkwise)."""

    init: Callable  # init(key, obs) -> params
    zeros: Callable  # zeros(batch) -> GuiderState of zeros
    value: Callable  # value(params, state, ts, start) -> value [E, A] of this step's observations
    # act(params, state, ts, start, key, greedy) -> (state, action, log-prob, env action, value)
    act: Callable
    train_pass: Callable  # train_pass(params, state, traj) -> (value, policy outputs), time-major


def make_guider(args, env) -> Guider:
    num_agents, num_actions, continuous = env.num_agents, env.num_actions, env.continuous
    sable = Sable(
        num_actions, continuous, args.n_block, args.n_head, args.embed_dim, args.decay_scaling_factor
    )
    kappa = jnp.asarray(decay_rates(args.n_head, args.decay_scaling_factor), jnp.float32)
    head_size = args.embed_dim // args.n_head
    chunk_size = args.chunk_size or args.rollout_length

    def zeros(batch):
        return GuiderState(
            *[jnp.zeros((batch, args.n_block, args.n_head, head_size, head_size), jnp.float32)] * 3
        )

    def init(key, obs):
        dummy_action = jnp.zeros((1, num_agents, num_actions + (0 if continuous else 1)))
        return sable.init(key, obs[:1], dummy_action, jnp.zeros((1, num_agents), jnp.int32), zeros(1),
                          jnp.ones((1, 1), bool), num_agents)

    def encode(params, state, ts, start):
        """Encoder step on every agent's observation: (value [E, A], representation, decay, state)."""
        decay = jnp.where(start[:, None], 0.0, kappa[None, :])  # once per step; 0 restarts the episode
        step = per_agent(step_count(ts, start), num_agents)
        value, obs_rep, encoder = sable.apply(params, ts.obs, step, state.encoder, decay, method=Sable.encode)
        return value, obs_rep, decay, state._replace(encoder=encoder)

    def act(params, state, ts, start, key, greedy=False):
        """Encode all agents, then decode their actions one after another, each agent seeing the
        actions chosen before it at this step."""
        value, obs_rep, decay, state = encode(params, state, ts, start)
        step = step_count(ts, start)[:, None]

        def next_agent(carry, inputs):
            token, self_state, cross_state, key = carry
            first, obs_rep_j, mask_j = inputs
            key, key_j = jax.random.split(key)  # one key after another, as the authors' decoder loop
            out, (self_state, cross_state) = sable.apply(
                params, token[:, None], obs_rep_j[:, None], step, (self_state, cross_state),
                jnp.where(first, decay, 1.0), method=Sable.decode)
            pi = mask_logits(jax.tree.map(lambda x: x[:, 0], out), mask_j, continuous)
            action, log_prob, env_action = sample_action(key_j, pi, continuous, greedy)
            token = action_token(action, num_actions, continuous)
            return (token, self_state, cross_state, key), (action, log_prob, env_action)

        carry = (
            start_token((start.shape[0],), num_actions, continuous),
            state.decoder_self,
            state.decoder_cross,
            key,
        )
        agents = (
            jnp.arange(num_agents) == 0,
            jnp.swapaxes(obs_rep, 0, 1),
            jnp.swapaxes(ts.action_mask, 0, 1),
        )
        (_, self_state, cross_state, _), outputs = jax.lax.scan(next_agent, carry, agents)
        action, log_prob, env_action = (jnp.swapaxes(x, 0, 1) for x in outputs)
        state = state._replace(decoder_self=self_state, decoder_cross=cross_state)
        return state, action, log_prob, env_action, value

    def train_pass(params, state, traj):
        """Teacher-forced pass over time-major sequences [T, B, A, ...]: a scan over chunks of
        `--chunk-size` timesteps carrying the retention states."""
        batch = traj.obs.shape[1]

        def chunks(x):  # [T, B, ...] -> [T / C, B, C, ...]
            x = jnp.swapaxes(x, 0, 1).reshape(
                batch, args.rollout_length // chunk_size, chunk_size, *x.shape[2:]
            )
            return jnp.swapaxes(x, 0, 1)

        def tokens(x):  # [n, B, C, A, ...] -> [n, B, C * A, ...]
            return x.reshape(*x.shape[:2], -1, *x.shape[4:])

        action_in = decoder_inputs(traj.action, num_actions, continuous)
        xs = (tokens(chunks(traj.obs)), tokens(chunks(action_in)),
              tokens(chunks(per_agent(traj.step, num_agents))), chunks(traj.start))

        def one_chunk(state, x):
            obs, action_in, step, start = x
            value, out, state = sable.apply(params, obs, action_in, step, state, start, num_agents)
            return state, (value, out)

        _, (value, out) = jax.lax.scan(one_chunk, state, xs)

        def time_major(x):  # [n, B, C * A, ...] -> [T, B, A, ...]
            x = x.reshape(x.shape[0], batch, chunk_size, num_agents, *x.shape[3:])
            return jnp.swapaxes(x, 1, 2).reshape(args.rollout_length, batch, num_agents, *x.shape[4:])

        return time_major(value), jax.tree.map(time_major, out)

    return Guider(init, zeros, lambda params, state, ts, start: encode(params, state, ts, start)[0], act,
                  train_pass)


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
        start = jnp.ones((args.num_envs,), bool)
        guider_state, actor_h = guider.zeros(args.num_envs), zeros_h(args.num_envs, num_agents, args.gru_size)
        start, guider_state, actor_h = shard_envs((start, guider_state, actor_h))
        return RunnerState(
            guider_params=guider_params, actor_params=actor_params, guider_opt_state=opt.init(guider_params),
            actor_opt_state=opt.init(actor_params), env_state=env_state, timestep=ts, start=start,
            guider_state=guider_state, actor_h=actor_h, key=key, best_score=jnp.array(-jnp.inf, jnp.float32),
            best_actor_params=actor_params, best_guider_score=jnp.array(-jnp.inf, jnp.float32),
            best_guider_params=guider_params)

    def rollout(runner: RunnerState):
        """The teacher acts; the student's GRU runs along on the same observations, so that its state is
        right when training replays its sequences."""
        def one_step(carry, key):
            env_state, ts, start, guider_state, actor_h = carry
            key_action, key_env = jax.random.split(key)
            guider_state, action, log_prob, env_action, value = guider.act(runner.guider_params, guider_state,
                                                                           ts, start, key_action)
            actor_h, _ = actor.apply(runner.actor_params, actor_h, ts.obs, per_agent(start, num_agents))
            env_keys = jax.random.split(key_env, args.num_envs)
            env_state, next_ts = env.step_many(env_keys, env_state, env_action)
            transition = Transition(obs=ts.obs, step=step_count(ts, start), start=start,
                                    action_mask=ts.action_mask, action=action, log_prob=log_prob, value=value,
                                    reward=next_ts.reward, done=next_ts.done)
            episode = (next_ts.done, next_ts.episode_return, next_ts.won)
            carry = shard_envs((env_state, next_ts, next_ts.done, guider_state, actor_h))
            return carry, (transition, episode)

        key, key_rollout = jax.random.split(runner.key)
        carry = (runner.env_state, runner.timestep, runner.start, runner.guider_state, runner.actor_h)
        keys = jax.random.split(key_rollout, args.rollout_length)
        carry, (traj, episodes) = jax.lax.scan(one_step, carry, keys)
        env_state, ts, start, guider_state, actor_h = carry
        last_value = guider.value(runner.guider_params, guider_state, ts, start)
        runner = runner._replace(env_state=env_state, timestep=ts, start=start, guider_state=guider_state,
                                 actor_h=actor_h, key=key)
        return runner, traj, last_value, episodes

    def loss_fn(guider_params, actor_params, batch, hp):
        """Both losses from the same parameters in one backward pass. The teacher's does not involve
        the student at all; the student's stops the gradient into the teacher."""
        traj, guider_state0, actor_h0, advantage, target = batch
        value, guider_out = guider.train_pass(guider_params, guider_state0, traj)
        _, (learner_out,) = replay((actor,), (actor_params,), (actor_h0,), (traj.obs,),
                                   per_agent(traj.start, num_agents))
        pi_guider = mask_logits(guider_out, traj.action_mask, continuous)
        pi_learner = mask_logits(learner_out, traj.action_mask, continuous)
        log_prob_guider, entropy = log_prob_entropy(pi_guider, traj.action, continuous)
        guider_total, surrogate, value_loss = teacher_loss(log_prob_guider, traj.log_prob, advantage, value,
                                                           traj.value, target, entropy, hp["clip_eps"],
                                                           hp["ent_coef"], hp["vf_coef"])
        distill = distillation_kl(pi_guider, pi_learner, continuous, args.kl_direction)
        return guider_total + student_loss(distill), {
            "guider_loss": surrogate, "value_loss": value_loss, "entropy": entropy.mean(),
            "distill_loss": distill.mean()}

    def permute_agents(batch, order):
        """The agents in another order (the teacher then decodes in that order)."""
        traj, guider_state0, actor_h0, advantage, target = batch
        traj = traj._replace(**{name: jnp.take(getattr(traj, name), order, axis=2)
                                for name in ("obs", "action_mask", "action", "log_prob", "value")})
        return (traj, guider_state0, jnp.take(actor_h0, order, axis=1), jnp.take(advantage, order, axis=2),
                jnp.take(target, order, axis=2))

    def update(runner: RunnerState, hp):
        # ROLLOUT
        guider_state0, actor_h0 = runner.guider_state, runner.actor_h
        runner, traj, last_value, episodes = rollout(runner)
        # ADVANTAGES, from the teacher's values
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

            batch = (traj, guider_state0, actor_h0, advantage, target)
            if args.shuffle_agents:  # one agent order per epoch, as Sable trains
                batch = permute_agents(batch, jax.random.permutation(key_agents, num_agents))
            env_axes = (1, 0, 0, 1, 1)  # where each part keeps its environments
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

    def evaluate_checkpoint(runner: RunnerState):
        key, key_eval, key_guider = jax.random.split(runner.key, 3)
        evaluation = evaluate(runner.actor_params, key_eval, args.num_eval_episodes)
        guider_evaluation = evaluate_guider(runner.guider_params, key_guider, args.num_eval_episodes)
        # The best checkpoint by return on every suite, as the authors' code picks it.
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
        runner, evaluations = evaluate_checkpoint(runner)
        return runner, {**evaluations, "train": stats}

    def train(key, hp):
        runner = init(key, hp)
        return jax.lax.scan(lambda r, _: learn(r, hp), runner, None, args.num_evaluations)

    return Trainer(init=init, update=update, evaluate_checkpoint=evaluate_checkpoint, learn=learn,
                   evaluate=evaluate, evaluate_guider=evaluate_guider, train=train,
                   num_updates_per_eval=num_updates_per_eval, rollout=rollout, loss=loss_fn,
                   guider_train_pass=guider.train_pass, guider_act=guider.act)


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
    """-> (evaluate the student, evaluate the teacher): each (params, key, num_episodes) -> metrics of
    `num_episodes` episodes, one per environment, run for the time limit; only each environment's
    first episode counts."""
    num_agents, continuous = env.num_agents, env.continuous

    def run_episodes(policy_step, policy_state, key, num_episodes, record):
        """policy_step(state, ts, start, key) -> (state, env action). With `record`, also the first
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
                    "reward": ts.reward[0], "done": ts.done[0]} if record else None
            return (env_state, ts, ts.done, policy_state, finished | ts.done, ret, length, won), step

        carry, episode = jax.lax.scan(one_step, carry, jax.random.split(key_run, env.time_limit))
        _, _, _, _, _, ret, length, won = carry
        metrics = {"episode_return": ret, "episode_length": length.astype(jnp.float32), "win_rate": won}
        metrics = {name: metrics[name] for name in eval_metric_names(env.suite)}
        return (metrics, episode) if record else metrics

    def evaluate(actor_params, key, num_episodes, record=False):
        """The student, the deployable policy: each agent acts on its own observation only."""
        def policy_step(h, ts, start, key):
            h, out = actor.apply(actor_params, h, ts.obs, per_agent(start, num_agents))
            pi = mask_logits(out, ts.action_mask, continuous)
            return h, sample_action(key, pi, continuous, args.evaluation_greedy)[2]

        h = zeros_h(num_episodes, num_agents, args.gru_size)
        return run_episodes(policy_step, h, key, num_episodes, record)

    def evaluate_guider(guider_params, key, num_episodes, record=False):
        """The teacher, centralised: reported beside the student, never in its place."""
        def policy_step(state, ts, start, key):
            state, _, _, env_action, _ = guider.act(
                guider_params, state, ts, start, key, args.evaluation_greedy
            )
            return state, env_action

        return run_episodes(policy_step, guider.zeros(num_episodes), key, num_episodes, record)

    return evaluate, evaluate_guider


# =============================================================================================
# Command line: validation, outputs, progress
# =============================================================================================
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
    for flag, value in each_value(args, ("ent_coef", "vf_coef")):
        if not value >= 0.0 or not math.isfinite(value):
            raise UsageError(f"{flag} must be >= 0, got {value}")
    if not 0.0 < args.decay_scaling_factor <= 1.0:
        raise UsageError(f"--decay-scaling-factor must be in (0, 1], got {args.decay_scaling_factor}")
    head_size = args.embed_dim // args.n_head
    if args.embed_dim % 2 or args.embed_dim % args.n_head or head_size % args.n_head:
        raise UsageError(
            f"--embed-dim ({args.embed_dim}) must be even and divisible by --n-head ({args.n_head}), "
            f"and embed-dim / n-head by n-head again (Sable's per-head normalisation)"
        )
    if args.chunk_size is not None and (args.chunk_size < 1 or args.rollout_length % args.chunk_size):
        raise UsageError(f"--chunk-size ({args.chunk_size}) must be a positive divisor of --rollout-length "
                         f"({args.rollout_length})")
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
            f"({args.num_evaluations}): each checkpoint needs at least one update of --num-envs x "
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


LOSSES = ("guider_loss", "value_loss", "entropy", "distill_loss")


def first_non_finite(train_stats: dict) -> tuple[int, list[int]] | None:
    """The first update (within the interval) whose losses are not finite, and the runs where they are not."""
    losses = np.stack([np.asarray(train_stats[k]) for k in LOSSES], axis=-1)
    finite = np.isfinite(losses).all(axis=-1)  # [runs, updates]
    if finite.all():
        return None
    update = int(np.argmax(~finite.all(axis=0)))
    return update, np.flatnonzero(~finite[:, update]).tolist()


# A loss this large is finite, but the run has diverged (a value loss of 5e31 at a learning rate of 1e6).
LOSS_WARNING = 1e8


def exploded_loss(train_stats: dict) -> tuple[str, float] | None:
    """The first of LOSSES whose magnitude passed LOSS_WARNING in this interval, with its largest value."""
    for name in LOSSES:
        peak = float(np.nanmax(np.abs(np.asarray(train_stats[name]))))
        if peak > LOSS_WARNING:
            return name, peak
    return None


def rollout_bytes(args: Args, env: EnvSpec) -> int:
    """A lower bound on a run's memory: the rollout every update keeps whole (observations, action masks,
    global states) for all seeds and grid points, split over the devices. The update and the networks need
    more."""
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


# The policies a run trains and reports: the prefix of their metrics -> (their name in messages, the
# RunnerState field of their parameters and their saved files' name, the Trainer's evaluator).
POLICIES = {"": ("student", "actor", "evaluate"), "guider_": ("teacher", "guider", "evaluate_guider")}


def main(args: Args) -> str | dict:
    try:
        args = resumed_args(args)
        env = validate(args)
        trainer, hp = make_train(args, env), hparams_from_args(args)
        saved = load_policy(args, trainer, hp) if args.evaluate else None
    except UsageError as error:
        sys.exit(f"error: {error}")
    if saved is not None:
        return evaluate_policy(args, env, trainer, *saved)
    if jax.process_index() > 0:  # several hosts compute the same metrics; only process 0 keeps them
        args = dataclasses.replace(
            args, output_dir=tempfile.mkdtemp(prefix=f"{ALGORITHM}-process-"), track=False, save_model=False
        )
    run_dir = args.resume
    if run_dir is None:
        try:
            run_dir = make_run_dir(args)
        except OSError as error:  # read-only, a file in the way, /proc, ...: before anything compiles
            sys.exit(f"error: --output-dir {args.output_dir!r} cannot hold a run directory: "
                     f"{error.strerror or error}")
    points = grid_points(args)  # [{}] without a grid
    grid = f" x {len(points)} grid points" if points[0] else ""
    print(
        f"{ALGORITHM} on {args.env_id}: {env.num_agents} agents, obs {env.obs_dim}, actions {env.num_actions}"
        f"{' (continuous)' if env.continuous else ''}; {args.num_seeds} seed(s){grid}, "
        f"{run_batching(args)}; {'resuming' if args.resume else 'writing'} {run_dir}", flush=True
    )
    keys, hp = run_inputs(args)
    init = jax.jit(over_runs(trainer.init, args, (0, 0)))
    # One update per call, so that progress and Ctrl-C are served between updates.
    step = jax.jit(over_runs(update_then_checkpoint(trainer), args, (0, 0, None)), donate_argnums=0)
    evaluators = {
        prefix: jax.jit(over_runs(getattr(trainer, evaluator), args, (0, 0, None)), static_argnums=2)
        for prefix, (_, _, evaluator) in POLICIES.items()
    }
    steps_per_update = args.num_envs * args.rollout_length
    steps_per_interval = trainer.num_updates_per_eval * steps_per_update
    if steps_per_interval * args.num_evaluations < args.total_timesteps:
        print(f"note: training {steps_per_interval * args.num_evaluations} steps per seed "
              f"(whole updates per checkpoint), not {args.total_timesteps}")

    def build():
        runner = init(keys, hp)
        return runner, step.lower(runner, hp, True).compile()

    t0 = time.time()
    runner, step = while_compiling(build, args, None if args.resume else run_dir)
    print(f"compiled in {time.time() - t0:.1f}s", flush=True)
    if jax.process_count() > 1:
        # Hosts compile at different speeds, and gloo gives up on a peer after 30 s at the first collective:
        # wait for every host at the coordination service's barrier (no collective) first.
        from jax._src import distributed

        distributed.global_state.client.wait_at_barrier("magpo-jax-compiled", 3_600_000)
        store = None
        print("note: --distributed runs write no checkpoints, so they cannot be resumed")
    else:
        store = checkpoint_manager(run_dir)
    checkpoints, absolute, metric = [], {}, headline_metric(env.suite)
    first, wall_before, warned = 0, 0.0, False
    if args.resume:
        runner, saved_state = restore_checkpoint(store, runner)
        first, wall_before, warned = saved_state["interval"], saved_state["wall_time"], saved_state["warned"]
        checkpoints = saved_state["checkpoints"]
        keep_first_lines(os.path.join(run_dir, "metrics.jsonl"), first * len(points))
        print(f"resumed after checkpoint {first} (step {first * steps_per_interval:,})", flush=True)
    wandb_run = None
    if args.track:
        import wandb

        wandb_run = wandb.init(
            project=args.wandb_project,
            entity=args.wandb_entity,
            config=dataclasses.asdict(args),
            name=os.path.basename(os.path.normpath(run_dir)),
            dir=run_dir,
        )

    metrics_file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    train_start, exit_message, stop = time.time(), None, StopRequest()
    updates_done, last_report, latest = first * trainer.num_updates_per_eval, time.time(), None
    total_updates = args.num_evaluations * trainer.num_updates_per_eval

    def elapsed():
        return wall_before + time.time() - train_start

    def report():  # a progress line between checkpoints
        rate = (updates_done - first * trainer.num_updates_per_eval) / max(time.time() - train_start, 1e-9)
        ended = latest is not None and np.sum(latest["train_episodes"]) > 0
        returns = f"{np.mean(latest['train_episode_return']):.3f}" if ended else "-"
        # Before the first update has finished (one can outlast --progress-seconds) there is no rate yet.
        eta = format_duration((total_updates - updates_done) / rate) if rate > 0 else "-"
        print(f"      step {updates_done * steps_per_update:>11,} | {rate * steps_per_update:>9,.0f} sps | "
              f"training return {returns} | ETA {eta}", flush=True)

    try:
        for i in range(first, args.num_evaluations):
            stats = []
            for u in range(trainer.num_updates_per_eval):
                runner, update_stats, evaluations = step(runner, hp, u == trainer.num_updates_per_eval - 1)
                # At most this update in flight: Ctrl-C then stops within one update.
                while stats and not all(x.is_ready() for x in jax.tree.leaves(stats[-1])):
                    time.sleep(0.02)
                    if time.time() - last_report >= args.progress_seconds:
                        report()
                        last_report = time.time()
                if stats:
                    updates_done, latest = updates_done + 1, jax.device_get(stats[-1])
                stats.append(update_stats)
                if stop.requested:
                    break
            if stop.requested:
                exit_message = (f"stopped: {i} checkpoint(s) kept in {run_dir}; continue with "
                                f"python {ALGORITHM}.py --resume {run_dir}")
                break
            out = {**jax.device_get(evaluations),
                   "train": jax.tree.map(lambda *xs: np.stack(xs, axis=-1), *jax.device_get(stats))}
            updates_done, last_report = (i + 1) * trainer.num_updates_per_eval, time.time()
            bad = first_non_finite(out["train"])
            if bad is not None:
                update_number = i * trainer.num_updates_per_eval + bad[0] + 1
                where = sorted({ALGORITHM + point_name(points[r // args.num_seeds]) for r in bad[1]})
                exit_message = (f"error: non-finite loss at update {update_number} (checkpoint {i + 1})"
                                f"{' in ' + ', '.join(where) if grid else ''}; stopping. Metrics so far are "
                                f"in {run_dir}/metrics.jsonl")
                break
            exploded = exploded_loss(out["train"])
            if exploded is not None and not warned:
                warned = True  # once: a diverged run would repeat it at every checkpoint
                print(f"warning: {exploded[0]} reached {exploded[1]:.3g} by checkpoint {i + 1} (above "
                      f"{LOSS_WARNING:.0e}): the run is likely diverging; a lower learning rate usually "
                      "helps",
                      file=sys.stderr, flush=True)
            env_steps = (i + 1) * steps_per_interval
            records = checkpoint_records(args, points, out, {
                "checkpoint": i + 1, "env_steps": env_steps, "wall_time": round(elapsed(), 3),
                "sps": round(env_steps / elapsed(), 1)})
            metrics_file.writelines(json.dumps(record) + "\n" for record in records)
            metrics_file.flush()
            checkpoints.append({"env_steps": env_steps, **{f"{p}eval": out[f"{p}eval"] for p in POLICIES}})
            if store is not None:  # after the metrics line: a resumed run rewrites lines past its checkpoint
                save_checkpoint(store, i + 1, runner, {"interval": i + 1, "wall_time": elapsed(),
                                                       "warned": warned, "checkpoints": checkpoints})
            # In a grid, the point whose deployable policy scores best so far (mean over its seeds).
            record = max(records, key=lambda r: np.mean(r[f"{metric}_mean"]))
            scores = [f"{name} {metric} {np.mean(record[f'{prefix}{metric}_mean']):8.3f}"
                      for prefix, (name, _, _) in POLICIES.items()]
            spread = (
                np.std(record[f"{metric}_mean"]) if args.num_seeds > 1 else np.mean(record[f"{metric}_std"])
            )
            eta = (time.time() - train_start) / (i + 1 - first) * (args.num_evaluations - i - 1)
            print(f"[{i + 1:>3}/{args.num_evaluations}] step {env_steps:>11,} | {record['sps']:>9,.0f} sps | "
                  f"{'best ' + record['algorithm'] + ': ' if grid else ''}"
                  f"{scores[0]} ± {spread:.3f}{''.join(' | ' + s for s in scores[1:])} | "
                  f"ETA {format_duration(eta)}", flush=True)
            if wandb_run is not None:  # a grid's points as `ippo[actor_lr=0.001]/episode_return_mean`
                wandb_run.log({f"{r['algorithm'] + '/' if grid else ''}{k}": float(np.mean(v))
                               for r in records for k, v in r.items()
                               if k not in ("checkpoint", "algorithm", *points[0])}, step=env_steps)
        else:
            key_abs, _ = run_inputs(args, seed_offset=10_000)
            for prefix, (name, field, _) in POLICIES.items():
                absolute[prefix] = jax.device_get(
                    evaluators[prefix](getattr(runner, f"best_{field}_params"), key_abs,
                                       10 * args.num_eval_episodes)
                )
                for p, point in enumerate(points):
                    means = np.asarray(absolute[prefix][metric])[point_runs(args, p)].mean(axis=-1)
                    of = f" of {ALGORITHM}{point_name(point)}" if grid else ""
                    print(f"absolute {metric} of the {name}{of} (best parameters, "
                          f"{10 * args.num_eval_episodes} episodes): {means.mean():.3f} ± {means.std():.3f} "
                          f"over {args.num_seeds} seed(s)")
            if args.capture_video:  # the first seed of the best grid point
                field = POLICIES[""][1]
                scores = np.asarray(absolute[""][metric]).mean(axis=-1).reshape(len(points), -1).mean(axis=-1)
                p = int(np.argmax(scores))
                best = getattr(runner, f"best_{field}_params")
                params = jax.tree.map(lambda x: x[point_runs(args, p)], best)
                video = write_video(args, env, trainer, "", params,
                                    os.path.join(run_dir, f"{field}_best{point_name(points[p])}.gif"))
                if wandb_run is not None and video is not None:
                    wandb_run.log({"video": wandb.Video(video, format="gif")})
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        exit_message = (f"interrupted; {len(checkpoints)} checkpoint(s) kept in {run_dir}/metrics.jsonl; "
                        f"continue with python {ALGORITHM}.py --resume {run_dir}")
    finally:
        stop.release()
        metrics_file.close()
        # The first policy under this script's name (the deployable one); the guider beside it.
        summary = {}
        for (p, point), prefix in itertools.product(enumerate(points), POLICIES):
            algorithm = (f"{ALGORITHM}_{prefix[:-1]}" if prefix else ALGORITHM) + point_name(point)
            part = marl_eval_summary(env, args, checkpoints, absolute.get(prefix), algorithm, f"{prefix}eval",
                                     point_runs(args, p))
            for task, algorithms in part[env.suite].items():
                summary.setdefault(env.suite, {}).setdefault(task, {}).update(algorithms)
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        if args.save_model and checkpoints:
            save_parameters(args, points, runner, run_dir)
        if wandb_run is not None:
            wandb_run.finish()
    if exit_message:
        sys.exit(exit_message)
    return run_dir


# =============================================================================================
# Environment adapter (identical in every script; tests/test_consistency.py holds them together)
# =============================================================================================
# make_env(env_id) -> EnvSpec with pure reset(key) / step(key, env_state, actions) and automatic
# reset inside step. It feeds the networks what the authors' Mava wrappers fed theirs
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
            f"--env-id {env_id} needs coordsum.py beside this script: copy it from the repository"
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
    """The metric the paper reports per suite (Table 1). The best checkpoint is picked by episode return on
    every suite, SMAX included, as the authors' code does."""
    return "win_rate" if suite == "smax" else "episode_return"


def eval_metric_names(suite: str) -> tuple[str, ...]:
    """What evaluation reports: return and length everywhere, win rate where a suite defines a win."""
    win = ("win_rate",) if suite in ("smax", "connector") else ()
    return ("episode_return", "episode_length") + win


def make_env(env_id: str) -> EnvSpec:
    """Build the adapter for `env_id` (see ENV_IDS); unknown ids raise ValueError."""
    if env_id not in ENV_IDS and not _is_coordsum_size(env_id):
        close = difflib.get_close_matches(env_id, ENV_IDS, n=5, cutoff=0.4)
        rest = [e for e in ENV_IDS if e not in close]
        raise ValueError(
            f"unknown --env-id {env_id!r}; valid ids, closest first: {', '.join(close + rest)}"
        )
    if env_id.startswith("con-"):
        return _make_connector(env_id, env_id)
    suite, task = env_id.split("-", 1)
    makers = {"rware": _make_rware, "lbf": _make_lbf, "mpe": _make_mpe, "smax": _make_smax,
              "coordsum": _make_coordsum}
    return makers[suite](env_id, task)
# End of the environment adapter.


# =============================================================================================
# Output helpers: run directory, marl-eval summary, progress line
# =============================================================================================
def make_run_dir(args: Args) -> str:
    """A new directory of its own: created exclusively, with a suffix when another run (e.g. one started in
    the same second by a `&`-parallel sweep) already took the name, so no two runs ever share one."""
    base = os.path.join(args.output_dir, f"{args.env_id}__{ALGORITHM}__{args.seed}__{int(time.time())}")
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
    """Per-seed mean and std of every evaluation metric ([seeds, episodes] arrays)."""
    out = {}
    for name, values in evaluation.items():
        values = np.asarray(values, np.float64)
        out[f"{name}_mean"] = values.mean(axis=-1).tolist()
        out[f"{name}_std"] = values.std(axis=-1).tolist()
    return out


def marl_eval_summary(env: EnvSpec, args: Args, checkpoints: list, absolute: dict | None,
                      algorithm: str = ALGORITHM, eval_key: str = "eval", runs: slice = slice(None)) -> dict:
    """marl-eval's JSON layout: env -> task -> algorithm -> seed -> step_i / absolute_metrics; `runs`: the
    grid point's seeds among the [runs, ...] arrays."""
    task = env.env_id.split("-", 1)[1] if env.suite != "connector" else env.env_id
    by_seed = {}
    for s in range(args.num_seeds):
        run = {
            f"step_{i}": {
                "step_count": c["env_steps"],
                **{k: [float(x) for x in np.asarray(v)[runs][s]] for k, v in c[eval_key].items()},
            }
            for i, c in enumerate(checkpoints)
        }
        if absolute is not None:
            run["absolute_metrics"] = {k: [float(x) for x in np.asarray(v)[runs][s]]
                                       for k, v in absolute.items()}
        by_seed[f"seed_{args.seed + s}"] = run
    return {env.suite: {task: {algorithm: by_seed}}}


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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
    """A grid point's suffix to the algorithm's name in summary.json, metrics.jsonl and file names:
    `[delta=1.2,alpha=1]`; '' without a grid."""
    return f"[{','.join(f'{name}={value:g}' for name, value in point.items())}]" if point else ""


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


def checkpoint_records(args: Args, points: list[dict[str, float]], out: dict, common: dict) -> list[dict]:
    """metrics.jsonl's lines for one checkpoint, one per grid point: per-seed evaluations and training
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


def save_parameters(args: Args, points: list[dict[str, float]], runner, run_dir: str):
    """--save-model: every policy's final and best parameters ([seeds, ...] arrays), one file per grid point
    (`actor_best[delta=1.2,alpha=1].msgpack`), which --evaluate reads back."""
    for (p, point), (_, field, _) in itertools.product(enumerate(points), POLICIES.values()):
        for which in ("final", "best"):
            params = getattr(runner, f"{field}_params" if which == "final" else f"best_{field}_params")
            params = jax.tree.map(lambda x: x[point_runs(args, p)], params)
            with open(os.path.join(run_dir, f"{field}_{which}{point_name(point)}.msgpack"), "wb") as f:
                f.write(serialization.to_bytes(jax.device_get(params)))


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
# Long runs: checkpoints, resuming, stopping, saved policies (identical in every script)
# =============================================================================================
# Flags that may change when a run is resumed; every other one is the run's own, from its args.json.
RESUME_FREE = ("resume", "evaluate", "progress_seconds", "track", "output_dir", "capture_video")


def update_then_checkpoint(trainer: Trainer) -> Callable:
    """(runner, hp, checkpoint) -> (runner, stats, evaluations): one update, then, where `checkpoint` holds,
    the checkpoint's evaluation (a cond: zeros, and nothing run, elsewhere). One compiled program for both
    runs the update itself faster than a program of the update alone (README, "Long runs")."""

    def step(runner, hp, checkpoint):
        runner, stats = trainer.update(runner, hp)
        shapes = jax.eval_shape(trainer.evaluate_checkpoint, runner)[1]

        def skip(runner):
            return runner, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        runner, evaluations = jax.lax.cond(checkpoint, trainer.evaluate_checkpoint, skip, runner)
        return runner, stats, evaluations

    return step


def resumed_args(args: Args) -> Args:
    """--resume RUN_DIR: the run's flags from its args.json. A flag left at the script's default takes the
    run's value; one given with a value of its own must equal the run's."""
    if args.resume is None:
        return args
    if args.evaluate is not None:
        raise UsageError("--resume and --evaluate exclude each other: resume a run, or evaluate a saved "
                         "policy")
    try:
        with open(os.path.join(args.resume, "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        raise UsageError(
            f"--resume {args.resume!r} is not a run directory (no readable args.json in it)"
        ) from None
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # a grid's values
    if saved.get("algorithm") != ALGORITHM:
        raise UsageError(f"--resume {args.resume!r} is a run of {saved.get('algorithm')}.py: resume it with "
                         f"that script, not {ALGORITHM}.py")
    if latest_checkpoint(args.resume) is None:
        raise UsageError(f"--resume {args.resume!r} holds no checkpoint (it stopped before its first "
                         "evaluation): start the run again instead")
    defaults, names = Args(), [f.name for f in dataclasses.fields(Args) if f.name not in RESUME_FREE]
    differ = [n for n in names
              if getattr(args, n) != getattr(defaults, n) and getattr(args, n) != saved.get(n)]
    if differ:
        raise UsageError("--resume continues a run with its own flags, but " + "; ".join(
            f"--{n.replace('_', '-')} is {getattr(args, n)!r} here and {saved.get(n)!r} in the run"
            for n in differ))
    return dataclasses.replace(args, **{n: saved[n] for n in names if n in saved})


def latest_checkpoint(run_dir: str) -> int | None:
    """The interval count of the run's last complete checkpoint (orbax names them by it), if any."""
    try:
        steps = [int(d) for d in os.listdir(os.path.join(run_dir, "checkpoint")) if d.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def checkpoint_manager(run_dir: str):
    """orbax writes each checkpoint into a temporary folder and renames it when complete, so a write cut short
    is never read back; only the latest is kept (the best parameters are part of it)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(run_dir, "checkpoint")), options=options)


def save_checkpoint(manager, interval: int, runner, progress: dict):
    """The whole training state (parameters, optimiser, environment and recurrent states, keys, the best
    so far) and, as JSON, the interval counter and every checkpoint's evaluation for summary.json."""
    import orbax.checkpoint as ocp

    progress = {**progress, "checkpoints": [
        {k: v if k == "env_steps" else {m: np.asarray(x).tolist() for m, x in v.items()}
         for k, v in c.items()} for c in progress["checkpoints"]]}
    manager.save(interval, args=ocp.args.Composite(state=ocp.args.StandardSave(jax.device_get(runner)),
                                                   progress=ocp.args.JsonSave(progress)))


def restore_checkpoint(manager, like):
    """The latest checkpoint, placed on the devices the way `like` (a fresh runner) is."""
    import orbax.checkpoint as ocp

    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.device_get(like)), progress=ocp.args.JsonRestore()))
    runner = jax.tree.map(lambda x, y: jax.device_put(x, y.sharding), restored.state, like)
    progress = restored.progress
    progress["checkpoints"] = [
        {k: v if k == "env_steps" else {m: np.asarray(x, np.float32) for m, x in v.items()}
         for k, v in c.items()} for c in progress["checkpoints"]]
    return runner, progress


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


def load_policy(args: Args, trainer: Trainer, hp: dict):
    """--evaluate FILE: the saved parameters ([seeds, ...] arrays) and which of POLICIES they fit."""
    try:
        with open(args.evaluate, "rb") as f:
            saved = serialization.msgpack_restore(f.read())
    except (OSError, ValueError) as error:
        raise UsageError(f"--evaluate {args.evaluate!r} cannot be read as flax msgpack parameters "
                         f"({getattr(error, 'strerror', None) or error})") from None
    shapes = jax.eval_shape(trainer.init, jax.random.PRNGKey(0), hp)
    flat = ({k: np.shape(v) for k, v in traverse_util.flatten_dict(saved, sep="/").items()}
            if isinstance(saved, dict) else {})
    expected = {prefix: {k: v.shape for k, v in traverse_util.flatten_dict(getattr(shapes, f"{field}_params"),
                                                                          sep="/").items()}
                for prefix, (_, field, _) in POLICIES.items()}
    for prefix, shapes_here in expected.items():
        if flat.keys() == shapes_here.keys() and all(flat[k][1:] == shapes_here[k] for k in flat):
            return prefix, jax.tree.map(jnp.asarray, saved)
    names = " or ".join(name for name, _, _ in POLICIES.values())
    raise UsageError(f"--evaluate {args.evaluate!r} does not fit the {names} network these flags build: "
                     f"{likely_cause(args, flat, expected[''])}")


def likely_cause(args: Args, flat: dict, expected: dict) -> str:
    """The flags that differ from the run that saved the file (its args.json beside it), else the first
    parameter whose shape differs."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(args.evaluate)), "args.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        saved = {}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # a grid's values
    if saved.get("algorithm", ALGORITHM) != ALGORITHM:
        return f"it was saved by {saved['algorithm']}.py; evaluate it with that script"
    names = [f.name for f in dataclasses.fields(Args) if f.name not in RESUME_FREE and f.name in saved]
    differ = [f"--{n.replace('_', '-')} (the run used {saved[n]!r}, here {getattr(args, n)!r})"
              for n in names if saved[n] != getattr(args, n)
              and n not in ("seed", "num_seeds", "num_eval_episodes")]
    if differ:
        return "likely " + ", ".join(differ)
    missing = sorted(expected.keys() - flat.keys()) or sorted(flat.keys() - expected.keys())
    if missing:
        return f"{missing[0]} is in one and not the other; check --env-id and the network's size flags"
    name = next(k for k in expected if flat[k][1:] != expected[k])
    return (f"{name} is {flat[name][1:]} per seed in the file and {expected[name]} here; check --env-id "
            "and the network's size flags")


def evaluate_policy(args: Args, env: EnvSpec, trainer: Trainer, prefix: str, params) -> dict:
    """Evaluates every seed of a saved policy with the keys of the training run's absolute metric: a file of
    best parameters reproduces it with --num-eval-episodes at 10x the run's."""
    name, _, evaluator = POLICIES[prefix]
    num_seeds = jax.tree.leaves(params)[0].shape[0]
    keys = jax.vmap(jax.random.PRNGKey)(args.seed + 10_000 + jnp.arange(num_seeds))
    evaluate = jax.jit(over_runs(getattr(trainer, evaluator), args, (0, 0, None)), static_argnums=2)
    evaluation = jax.device_get(evaluate(params, keys, args.num_eval_episodes))
    print(f"{ALGORITHM} {name} from {args.evaluate} on {args.env_id}: {num_seeds} seed(s) x "
          f"{args.num_eval_episodes} episodes")
    for metric, values in summarise(evaluation).items():
        if metric.endswith("_mean"):
            print(f"  {metric[:-5]:<16} {np.mean(values):10.4f} ± {np.std(values):.4f} "
                  f"(per seed: {', '.join(f'{v:.4f}' for v in values)})")
    if args.capture_video:
        write_video(args, env, trainer, prefix, params, os.path.splitext(args.evaluate)[0] + ".gif")
    return evaluation


def write_video(args: Args, env: EnvSpec, trainer: Trainer, prefix: str, params, path: str) -> str | None:
    """--capture-video: one evaluation episode of the first seed's policy (the absolute metric's key),
    recorded by the jitted evaluator and drawn afterwards on the host, so training never waits for it."""
    name, _, evaluator = POLICIES[prefix]
    record = jax.jit(getattr(trainer, evaluator), static_argnums=(2, 3))
    first_seed = jax.tree.map(lambda x: x[0], params)
    metrics, episode = jax.device_get(record(first_seed, jax.random.PRNGKey(args.seed + 10_000), 1, True))
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
# End of the long-run helpers.

if __name__ == "__main__":
    check_single_values(sys.argv[1:])
    main(tyro.cli(Args))
