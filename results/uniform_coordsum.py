"""The floor of every CoordSum table: the uniform random policy's episode return on the four tasks,
4096 episodes each (mean and its standard error). `python results/uniform_coordsum.py`"""
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ippo  # noqa: E402  (its environment adapter, which every script shares)

EPISODES = 4096

for task in ("coordsum-3x10", "coordsum-3x30", "coordsum-5x20", "coordsum-8x15"):
    env = ippo.make_env(task)

    def episode_returns(key):
        key_reset, key_run = jax.random.split(key)
        state, ts = jax.vmap(env.reset)(jax.random.split(key_reset, EPISODES))

        def one_step(carry, key):
            state, total = carry
            key_action, key_env = jax.random.split(key)
            actions = jax.random.randint(key_action, (EPISODES, env.num_agents), 0, env.num_actions)
            state, ts = jax.vmap(env.step)(jax.random.split(key_env, EPISODES), state, actions)
            return (state, total + ts.reward), None

        (_, total), _ = jax.lax.scan(one_step, (state, jnp.zeros(EPISODES)), jax.random.split(key_run, env.time_limit))
        return total

    total = jax.jit(episode_returns)(jax.random.PRNGKey(0))
    print(f"{task}: {float(total.mean()):.2f} ± {float(total.std() / EPISODES ** 0.5):.2f}")
