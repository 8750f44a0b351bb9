"""A worked example of your own environment: target matching, a JAX game that is not one of the paper's tasks.

Each step every agent sees one shared target in 0..num_actions-1 (as a fraction of num_actions) and
picks an action; the team is rewarded 1 / num_agents for each agent whose action equals the target.
A uniform policy scores 1 / num_actions a step, a learned one 1: 10 steps an episode, so the episode
return goes from 10 / num_actions to 10. Train any script on it without editing the script:

    python ippo.py --env-id examples.target_matching:make_env --num-envs 16 --total-timesteps 20480

`make_env` below is all a factory needs to be: two pure functions handed to envs.wrap_env, which adds
the agent ids, the episode metrics and the automatic reset (README, "Your own environment").
"""

import jax
import jax.numpy as jnp

import envs

NUM_AGENTS, NUM_ACTIONS, TIME_LIMIT = 2, 4, 10


def make_env(num_agents: int = NUM_AGENTS, num_actions: int = NUM_ACTIONS) -> envs.EnvSpec:
    mask = jnp.ones((num_agents, num_actions), bool)  # every action is always allowed

    def observe(target):
        view = jnp.full((num_agents, 1), target / num_actions, jnp.float32)  # [A, 1]: the shared target
        return view, view.reshape(-1)  # each agent's view; the global state is all views side by side

    def reset(key):
        target = jax.random.randint(key, (), 0, num_actions)
        view, state = observe(target)
        return (target, jnp.zeros((), jnp.int32)), view, mask, state

    def step(key, env_state, actions):
        target, t = env_state
        reward = jnp.mean((actions == target).astype(jnp.float32))
        t = t + 1
        next_target = jax.random.randint(key, (), 0, num_actions)
        view, state = observe(next_target)
        done = t >= TIME_LIMIT  # a time limit, not a terminal: terminated stays False
        return (next_target, t), view, mask, state, reward, done, jnp.zeros((), bool), jnp.zeros((), bool)

    return envs.wrap_env("target-matching", num_agents, num_actions, TIME_LIMIT, reset, step)
