"""How much of a trained centralised policy's joint policy a decentralised student can represent (CoordSum).

    python ctds.py --env-id coordsum-3x5 --num-seeds 5 --save-model --output-dir runs   # a CTDS teacher
    python results/joint_policy.py runs/coordsum-3x5__ctds__0__<time>                     # this analysis
    python results/joint_policy.py RUN_DIR --out results/gap/joint_policy_3x5.md          # and keep the table

RUN_DIR is a ctds.py or magpo_sable.py run saved with --save-model: the analysis reads its centralised
policy (ctds's teacher or magpo_sable's guider, `guider_best.msgpack`, every seed) and its args.json.

Sable picks the agents' actions one after another, each agent seeing the actions before it, so at every
step it holds a whole joint distribution p(a_1, ..., a_n). A decentralised student, however well trained,
picks each agent's action on its own: the closest it can come to p (the minimiser of KL(p || q) over
product distributions q, which is what CTDS's distillation minimises) is the product of p's per-agent
marginals. Along episodes played by the centralised policy, at every step this script enumerates p over
all num_actions ** num_agents joint actions (the training pass, teacher-forced with each joint action,
gives its exact probability), forms the product of the marginals, and scores both against the step's
target and the opponent's current guess of agent 0:

    expected reward = sum over joint actions a of  prob(a) * [sum(a) == target] * (2 if a_0 != guess else 1)

Summed over an episode this is the expected return of the joint policy (its evaluation score, up to
sampling noise; the analysis samples, as the evaluation does unless --evaluation-greedy) and of its best
factorised imitation on the same states: the gap between the two is the part of the centralised policy that
distillation into a decentralised student cannot keep (Section 3 of the paper). The factorised figure is
scored on the centralised policy's own trajectory (same targets and opponent history), not on the one a
student would make: it is the limit of pure distillation on those states, not a prediction of a student's
score.
The per-target table shows how: the centralised policy completes the sum (P(hit) near 1) while agent 0
randomises (its marginal's entropy > 0); the product of marginals then misses the sum.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import os
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import coordsum  # noqa: E402


# Every joint action is scored at every step of every episode: [steps, episodes, K] arrays.
MAX_JOINT_ACTIONS = 4096


class Forced(NamedTuple):
    """The fields of a rollout that a guider's training pass reads, for one step [1, B, ...]."""

    obs: jax.Array
    action: jax.Array
    step: jax.Array
    start: jax.Array


def joint_actions(num_agents: int, num_actions: int) -> np.ndarray:
    """Every joint action, [num_actions ** num_agents, num_agents], agent 0's action slowest."""
    return np.array(list(itertools.product(range(num_actions), repeat=num_agents)), np.int32)


def marginal_product(p_joint: np.ndarray, joints: np.ndarray, num_actions: int) -> np.ndarray:
    """p over joint actions [..., K] -> the product of its per-agent marginals, on the same joint actions."""
    product = np.ones_like(p_joint)
    for i in range(joints.shape[1]):
        one_hot = np.eye(num_actions)[joints[:, i]]  # [K, A]: joint k has agent i's action a
        marginal = p_joint @ one_hot  # [..., A]
        product = product * marginal[..., joints[:, i]]
    return product


def step_scores(p: np.ndarray, joints: np.ndarray, target: np.ndarray, guess: np.ndarray) -> tuple:
    """(P(sum == target), expected reward against the opponent's guess) of distributions p [..., K]."""
    hit = joints.sum(axis=1) == target[..., None]
    fooled = joints[:, 0] != guess[..., None]
    return (p * hit).sum(-1), (p * hit * np.where(fooled, 2.0, 1.0)).sum(-1)


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


def load_run(run_dir: str):
    """-> (the script's module, its Args as the run used them, the saved centralised params [seeds, ...])."""
    with open(os.path.join(run_dir, "args.json")) as f:
        saved = json.load(f)
    algorithm = saved.get("algorithm")
    if algorithm not in ("ctds", "magpo_sable"):
        sys.exit(
            f"error: {run_dir} is a run of {algorithm}.py; this analysis reads runs of ctds.py or magpo_sable.py "
            "(their centralised policy is Sable)"
        )
    if not saved["env_id"].startswith("coordsum-"):
        sys.exit(f"error: {run_dir} ran {saved['env_id']}; this analysis is for CoordSum tasks")
    num_agents, num_actions, _ = coordsum.parse_task(saved["env_id"].removeprefix("coordsum-"))
    if num_actions**num_agents > MAX_JOINT_ACTIONS:
        sys.exit(
            f"error: {saved['env_id']} has {num_actions**num_agents:,} joint actions; this analysis "
            f"enumerates them all at every step and stops at {MAX_JOINT_ACTIONS:,} (e.g. 2x4, 2x3, 3x5)"
        )
    info = os.path.join(run_dir, "benchmark.json")  # benchmark/run.py's, where it made the run
    plain = os.path.exists(info) and json.load(open(info)).get("plain", False)
    if plain or (
        algorithm == "magpo_sable" and saved.get("delta") == float("inf") and saved.get("alpha") == 0
    ):
        algorithm = "sable"  # magpo_sable.py --delta inf --alpha 0: its guider is plain Sable
    module = importlib.import_module(algorithm)
    names = {f.name for f in dataclasses.fields(module.Args)}
    args = module.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in names})
    path = os.path.join(run_dir, "guider_best.msgpack")
    if not os.path.exists(path):
        sys.exit(
            f"error: {path} is missing: train the run with --save-model (a grid's per-point files are not "
            "read here: run the point alone)"
        )
    with open(path, "rb") as f:
        params = jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))
    return module, args, params, algorithm


class Analysis(NamedTuple):
    joints: np.ndarray  # [K, num_agents], every joint action
    # joint_distribution(params, state, ts, start) -> [K]: one environment's joint policy at this step
    joint_distribution: object
    # rollout(params, key, episodes) -> per step of `episodes` episodes played by the centralised policy:
    # its joint distributions [T, E, K], the targets [T, E], the opponent's guesses [T, E], the rewards [T, E]
    rollout: object


def make_analysis(module, args, env) -> Analysis:
    guider = module.make_guider(args, env)
    # The same network's training pass over one-step sequences: teacher-forced with a joint action, it returns
    # every agent's logits given the actions before it, i.e. the factors of that joint action's probability.
    one_step = module.make_guider(dataclasses.replace(args, rollout_length=1, chunk_size=1), env)
    n, num_actions = env.num_agents, env.num_actions
    joints = jnp.asarray(joint_actions(n, num_actions))
    k = joints.shape[0]
    _, _, maxval = coordsum.parse_task(env.env_id.removeprefix("coordsum-"))
    core = coordsum.CoordSum(n, num_actions, maxval)  # the task's opponent, for its guess

    def joint_distribution(params, state, ts, start):
        """One environment's state -> probabilities of all K joint actions."""
        states = jax.tree.map(lambda x: jnp.broadcast_to(x, (k, *x.shape)), state)
        forced = Forced(
            obs=jnp.broadcast_to(ts.obs, (1, k, *ts.obs.shape)),
            action=joints[None],
            step=jnp.broadcast_to(module.step_count(ts, start), (1, k)),
            start=jnp.broadcast_to(start, (1, k)),
        )
        _, logits = one_step.train_pass(params, states, forced)  # [1, K, n, num_actions]
        log_pi = jax.nn.log_softmax(logits[0], axis=-1)
        return jnp.exp(jnp.take_along_axis(log_pi, joints[..., None], axis=-1)[..., 0].sum(-1))

    def rollout(params, key, episodes):
        key_reset, key_run = jax.random.split(key)
        env_state, ts = jax.vmap(env.reset)(jax.random.split(key_reset, episodes))

        def one_step_(carry, key):
            env_state, ts, start, state = carry
            key_act, key_env = jax.random.split(key)
            p = jax.vmap(joint_distribution, in_axes=(None, 0, 0, 0))(params, state, ts, start)
            target, guess = env_state.inner.target, jax.vmap(core.guess)(env_state.inner)
            state, _, _, env_action, _ = guider.act(params, state, ts, start, key_act)
            env_state, ts = env.step_many(jax.random.split(key_env, episodes), env_state, env_action)
            return (env_state, ts, ts.done, state), (p, target, guess, ts.reward)

        carry = (env_state, ts, jnp.ones((episodes,), bool), guider.zeros(episodes))
        _, out = jax.lax.scan(one_step_, carry, jax.random.split(key_run, env.time_limit))
        return out

    return Analysis(np.asarray(joints), joint_distribution, jax.jit(rollout, static_argnums=2))


def analyse(run_dir: str, episodes: int = 32, seed: int = 0) -> dict:
    module, args, params, algorithm = load_run(run_dir)
    env = module.make_env(args.env_id)
    analysis = make_analysis(module, args, env)
    joints = analysis.joints
    num_seeds = jax.tree.leaves(params)[0].shape[0]
    per_seed, per_target = [], {}
    for s in range(num_seeds):
        p, target, guess, reward = (
            np.asarray(x, np.float64)
            for x in analysis.rollout(
                jax.tree.map(lambda x: x[s], params), jax.random.PRNGKey(seed + s), episodes
            )
        )
        target, guess = target.astype(int), guess.astype(int)
        q = marginal_product(p, joints, env.num_actions)
        hit_p, reward_p = step_scores(p, joints, target, guess)
        hit_q, reward_q = step_scores(q, joints, target, guess)
        per_seed.append(
            {
                "seed": s,
                "joint_return": reward_p.sum(0).mean(),
                "factorised_return": reward_q.sum(0).mean(),
                "sampled_return": reward.sum(0).mean(),
                "joint_hit": hit_p.mean(),
                "factorised_hit": hit_q.mean(),
            }
        )
        marginal0 = p @ np.eye(env.num_actions)[joints[:, 0]]
        for t in np.unique(target):
            at = target == t
            row = per_target.setdefault(
                int(t), {"steps": 0, "joint_hit": 0.0, "factorised_hit": 0.0, "h0": 0.0}
            )
            row["steps"] += int(at.sum())
            row["joint_hit"] += float(hit_p[at].sum())
            row["factorised_hit"] += float(hit_q[at].sum())
            row["h0"] += float(entropy(marginal0[at]).sum())
    for row in per_target.values():
        for name in ("joint_hit", "factorised_hit", "h0"):
            row[name] /= row["steps"]
    return {
        "run_dir": run_dir,
        "algorithm": algorithm,
        "env_id": args.env_id,
        "episodes": episodes,
        "per_seed": per_seed,
        "per_target": per_target,
        "num_actions": env.num_actions,
        "num_agents": env.num_agents,
    }


def markdown(result: dict) -> str:
    role = {"ctds": "CTDS teacher", "magpo_sable": "MAGPO guider", "sable": "plain Sable"}[
        result["algorithm"]
    ]
    seeds = result["per_seed"]
    lines = [
        f"{role} of `{result['run_dir']}` ({result['env_id']}), {result['episodes']} episodes per seed, "
        "expected episode returns (see results/joint_policy.py):",
        "",
        f"| seed | {role}, joint policy | product of its marginals | share kept | joint P(hit) | "
        "product P(hit) | sampled return (check) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in seeds:
        lines.append(
            f"| {r['seed']} | {r['joint_return']:.2f} | {r['factorised_return']:.2f} | "
            f"{r['factorised_return'] / max(r['joint_return'], 1e-9):.0%} | {r['joint_hit']:.3f} | "
            f"{r['factorised_hit']:.3f} | {r['sampled_return']:.2f} |"
        )
    mean = {k: np.mean([r[k] for r in seeds]) for k in seeds[0] if k != "seed"}
    lines.append(
        f"| mean | {mean['joint_return']:.2f} | {mean['factorised_return']:.2f} | "
        f"{mean['factorised_return'] / max(mean['joint_return'], 1e-9):.0%} | {mean['joint_hit']:.3f} | "
        f"{mean['factorised_hit']:.3f} | {mean['sampled_return']:.2f} |"
    )
    lines += [
        "",
        f"Per target, over every seed (the entropy of agent 0's marginal in nats; "
        f"log {result['num_actions']} = {np.log(result['num_actions']):.2f} is uniform):",
        "",
        "| target | steps | joint P(hit) | product P(hit) | H(agent 0) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for t, row in sorted(result["per_target"].items()):
        lines.append(
            f"| {t} | {row['steps']} | {row['joint_hit']:.3f} | {row['factorised_hit']:.3f} | {row['h0']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--episodes", type=int, default=32, help="episodes per seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", help="also write the table here (Markdown) and the figures beside it (.json)"
    )
    opts = parser.parse_args(argv)
    result = analyse(opts.run_dir, opts.episodes, opts.seed)
    text = markdown(result)
    print(text, end="")
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(opts.out)[0] + ".json", "w") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
