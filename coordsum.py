"""CoordSum: the cooperative matrix game of the MAGPO paper (arXiv 2507.18059, Appendix B).

Each of `num_agents` agents picks an integer in 0..num_actions-1; the team is rewarded when the
sum of the picks equals the current target. An opponent guesses agent 0's pick by majority vote
over agent 0's earlier picks for the same target, and a correct guess halves the reward:

    reward = 2.0  if sum(actions) == target and guess != actions[0]
             1.0  if sum(actions) == target and guess == actions[0]
             0.0  otherwise                                     (shared by every agent)

So a fixed, predictable joint strategy earns 1.0 per step at best; earning 2.0 needs agent 0 to
randomise while the others still complete the sum, which a decentralised policy can only do by
memorising coordinated patterns (the paper's Section 3 failure of teacher-student distillation).

Behaviour follows the authors' registered tasks (their `mava/coordsum/env.py`), because Table 1
was produced with them:
  * the target is drawn every step uniformly from 0..maxval-1, with maxval 30/50/80/100 for the
    tasks 3x10/3x30/5x20/8x15, so some targets are unreachable;
  * an episode lasts `time_limit` = 100 steps;
  * each agent observes the raw target value (one float); the step count is in the state only;
  * the opponent's history has one row per target value *clamped to num_actions-1*, so every
    target >= num_actions-1 shares one row (JAX clamps the out-of-range row index in their
    code). `row_per_target=True` gives every target its own row instead (not the default).
  * the guess is the argmax of agent 0's action counts in the row: the smallest action among
    ties, and 0 on an empty history.

`python coordsum.py` plays the paper's Section 3 example exactly, by enumeration.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TIME_LIMIT = 100
# The authors' registered tasks: `<agents>x<actions>` -> maxval (targets drawn from 0..maxval-1).
TASK_MAXVAL = {"3x10": 30, "3x30": 50, "5x20": 80, "8x15": 100}


class CoordSumState(NamedTuple):
    target: jax.Array  # int32 [], the target of the current step
    step_count: jax.Array  # int32 [], steps taken in this episode
    counts: jax.Array  # int32 [rows, num_actions], agent 0's past actions per (clamped) target


class CoordSum:
    """Pure-function CoordSum: `reset(key)` and `step(key, state, actions)`, jit/vmap-able."""

    def __init__(self, num_agents: int, num_actions: int, maxval: int | None = None,
                 time_limit: int = TIME_LIMIT, row_per_target: bool = False):
        if num_agents < 1 or num_actions < 2:
            raise ValueError(
                f"CoordSum needs num_agents >= 1 and num_actions >= 2, got {num_agents}x{num_actions}")
        self.num_agents = num_agents
        self.num_actions = num_actions
        # The paper's text says the largest target defaults to num_actions - 1 (so maxval = num_actions).
        self.maxval = num_actions if maxval is None else maxval
        self.time_limit = time_limit
        self.row_per_target = row_per_target
        self.num_rows = self.maxval if row_per_target else num_actions

    def _draw_target(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, (), 0, self.maxval, dtype=jnp.int32)

    def _obs(self, state: CoordSumState) -> jax.Array:
        return jnp.broadcast_to(state.target.astype(jnp.float32), (self.num_agents, 1))

    def _row(self, target: jax.Array) -> jax.Array:
        return jnp.minimum(target, self.num_rows - 1)

    def reset(self, key: jax.Array) -> tuple[CoordSumState, jax.Array]:
        state = CoordSumState(
            target=self._draw_target(key),
            step_count=jnp.zeros((), jnp.int32),
            counts=jnp.zeros((self.num_rows, self.num_actions), jnp.int32),
        )
        return state, self._obs(state)

    def guess(self, state: CoordSumState) -> jax.Array:
        """The opponent's guess of agent 0's action for the current target (majority vote)."""
        return jnp.argmax(state.counts[self._row(state.target)]).astype(jnp.int32)

    def step(self, key: jax.Array, state: CoordSumState, actions: jax.Array):
        """Returns (state, obs, reward, done). No automatic reset: the adapter does that."""
        actions = actions.astype(jnp.int32)
        hit = jnp.sum(actions) == state.target
        fooled = self.guess(state) != actions[0]
        reward = jnp.where(hit, jnp.where(fooled, 2.0, 1.0), 0.0).astype(jnp.float32)
        counts = state.counts.at[self._row(state.target), actions[0]].add(1)
        step_count = state.step_count + 1
        state = CoordSumState(target=self._draw_target(key), step_count=step_count, counts=counts)
        done = step_count >= self.time_limit
        return state, self._obs(state), reward, done


def parse_task(task: str) -> tuple[int, int, int]:
    """'3x10' -> (num_agents, num_actions, maxval); unregistered sizes use maxval = num_actions."""
    try:
        num_agents, num_actions = (int(x) for x in task.split("x"))
    except ValueError:
        raise ValueError(
            f"CoordSum task must look like '<agents>x<actions>' (e.g. 3x10), got {task!r}") from None
    return num_agents, num_actions, TASK_MAXVAL.get(task, num_actions)


def animate(env: CoordSum, states: list, actions, rewards, path: str, interval: int = 400) -> None:
    """A GIF of one recorded episode (`states`: the state before each step): per step the target, each
    agent's pick stacked into their sum, the opponent's guess of agent 0's pick, and the team reward."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    steps = len(states)
    actions, rewards = np.asarray(actions)[:steps], np.asarray(rewards)[:steps]
    returns = np.cumsum(rewards)
    colours = plt.get_cmap("tab10").colors
    right = max(env.maxval - 1, env.num_agents * (env.num_actions - 1)) + 1
    fig, ax = plt.subplots(figsize=(7, 2.6))

    def draw(t):
        ax.clear()
        target = int(states[t].target)
        guess = int(np.argmax(np.asarray(states[t].counts)[min(target, env.num_rows - 1)]))
        left = 0
        for i, pick in enumerate(actions[t]):
            ax.barh(0, int(pick), left=left, height=0.5, color=colours[i % 10], edgecolor="white",
                    label=f"agent {i}")
            left += int(pick)
        ax.axvline(target, color="black", lw=2, label="target")
        ax.plot([guess], [0.38], "v", color="red", ms=10, label="opponent's guess of agent 0")
        ax.set_xlim(0, right)
        ax.set_ylim(-0.6, 0.8)
        ax.set_yticks([])
        ax.legend(loc="upper right", fontsize=7, ncol=3)
        ax.set_title(f"step {t + 1}: target {target}, picks {' + '.join(str(int(a)) for a in actions[t])} = "
                     f"{left}, reward {rewards[t]:g} (return {returns[t]:g})", fontsize=9)

    FuncAnimation(fig, draw, frames=steps, interval=interval).save(path, writer="pillow")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The paper's Section 3 example: three agents pick 0..4 and must sum to 10; each acts once.
# ---------------------------------------------------------------------------------------------
def success_rate_decentralised(policies: list[np.ndarray], target: int) -> float:
    """P(sum == target) when each agent samples independently from its own distribution."""
    total = 0.0
    for joint in itertools.product(*(range(len(p)) for p in policies)):
        if sum(joint) == target:
            total += float(np.prod([p[a] for p, a in zip(policies, joint)]))
    return total


def success_rate_joint(joint_policy: dict[tuple[int, ...], float], target: int) -> float:
    return sum(prob for joint, prob in joint_policy.items() if sum(joint) == target)


def distil_marginals(joint_policy: dict[tuple[int, ...], float], num_agents: int,
                     num_actions: int) -> list[np.ndarray]:
    """What a KL-distilled decentralised student converges to: each agent's marginal of the joint
    policy (the minimiser of KL(teacher || student) over product distributions)."""
    marginals = [np.zeros(num_actions) for _ in range(num_agents)]
    for joint, prob in joint_policy.items():
        for i, a in enumerate(joint):
            marginals[i][a] += prob
    return marginals


def section3_example() -> dict[str, float]:
    num_agents, num_actions, target = 3, 5, 10
    one_hot = lambda a: np.eye(num_actions)[a]  # noqa: E731
    # (A) symmetric decentralised policy: everyone outputs 3 (sum 9), and after the naive update 4 (sum 12).
    symmetric_3 = success_rate_decentralised([one_hot(3)] * num_agents, target)
    symmetric_4 = success_rate_decentralised([one_hot(4)] * num_agents, target)
    # (B) sequential joint policy: agent 1 picks 3 or 4 at random, agent 2 picks 3, agent 3 picks 7 - x.
    joint = {(x, 3, target - 3 - x): 0.5 for x in (3, 4)}
    sequential = success_rate_joint(joint, target)
    # (C) CTDS: the student that imitates (B) agent by agent gets [.5,.5 on 3,4], [1 on 3], [.5,.5 on 3,4].
    student = distil_marginals(joint, num_agents, num_actions)
    ctds = success_rate_decentralised(student, target)
    return {"symmetric decentralised (all 3)": symmetric_3, "symmetric decentralised (all 4)": symmetric_4,
            "sequential joint (CTCE)": sequential, "CTDS student distilled from it": ctds}


if __name__ == "__main__":
    print("Section 3 example: 3 agents, actions 0..4, target 10 (exact, by enumeration)")
    for name, rate in section3_example().items():
        print(f"  {name:34s} success rate {rate:6.1%}")
