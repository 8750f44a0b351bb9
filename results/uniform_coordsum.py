"""The floor of every CoordSum table: the uniform random policy's episode return, 4096 episodes per task
(mean and its standard error).

    python results/uniform_coordsum.py                          # the paper's four tasks
    python results/uniform_coordsum.py coordsum-2x4 coordsum-3x5
"""

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ippo  # noqa: E402  (its environment adapter, which every script shares)

EPISODES = 4096
PAPER_TASKS = ("coordsum-3x10", "coordsum-3x30", "coordsum-5x20", "coordsum-8x15")


def uniform_return(env_id: str, episodes: int = EPISODES, seed: int = 0) -> tuple[float, float]:
    """(mean, standard error) of the episode return when every agent picks uniformly at random."""
    env = ippo.make_env(env_id)

    def episode_returns(key):
        key_reset, key_run = jax.random.split(key)
        state, ts = jax.vmap(env.reset)(jax.random.split(key_reset, episodes))

        def one_step(carry, key):
            state, total = carry
            key_action, key_env = jax.random.split(key)
            actions = jax.random.randint(key_action, (episodes, env.num_agents), 0, env.num_actions)
            state, ts = jax.vmap(env.step)(jax.random.split(key_env, episodes), state, actions)
            return (state, total + ts.reward), None

        (_, total), _ = jax.lax.scan(
            one_step, (state, jnp.zeros(episodes)), jax.random.split(key_run, env.time_limit)
        )
        return total

    total = jax.jit(episode_returns)(jax.random.PRNGKey(seed))
    return float(total.mean()), float(total.std() / episodes**0.5)


if __name__ == "__main__":
    for task in sys.argv[1:] or PAPER_TASKS:
        mean, stderr = uniform_return(task)
        print(f"{task}: {mean:.2f} ± {stderr:.2f}")
