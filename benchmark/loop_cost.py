"""What the training loop's shape costs: the scripts call one compiled update at a time (so that they can
print progress and stop on Ctrl-C between updates), where a PureJaxRL loop scans many updates in one
compiled call. Both are timed here side by side, in one process, on the same compiled update body:

    python benchmark/loop_cost.py --scripts ippo magpo_sable --env-ids coordsum-3x10 rware-tiny-2ag --hparams paper

`scan`: `--updates` updates in one jitted call (what benchmark/sps.py times). `per update`: the same
number of calls of one jitted update, the host waiting for update n (polling, as main() does) only after
it has queued update n+1. Rounds alternate between the two so that a drifting machine favours neither;
each figure is the median of `--rounds`, with the spread.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sps import module_of, paper_hparams  # noqa: E402


def measure(script: str, env_id: str, num_envs: int, rollout_length: int, updates: int, rounds: int,
            overrides: dict) -> dict:
    import jax
    import jax.numpy as jnp

    name, plain = module_of(script)
    module = importlib.import_module(name)
    if plain:
        overrides = {**overrides, "delta": float("inf"), "alpha": 0.0}
    args = module.Args(env_id=env_id, num_envs=num_envs, rollout_length=rollout_length,
                       total_timesteps=num_envs * rollout_length * updates, num_evaluations=1, **overrides)
    env = module.validate(args)
    trainer, hp = module.make_train(args, env), module.hparams_from_args(args)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(1))
    runner = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(keys, hp)

    def scan_updates(runner, hp):
        return jax.lax.scan(lambda r, _: trainer.update(r, hp), runner, None, updates)

    scan = jax.jit(jax.vmap(scan_updates, in_axes=(0, None)), donate_argnums=0).lower(runner, hp).compile()
    one = jax.jit(jax.vmap(trainer.update, in_axes=(0, None)), donate_argnums=0).lower(runner, hp).compile()
    runner, _ = scan(runner, hp)  # warm both up
    runner, stats = one(runner, hp)
    jax.block_until_ready(stats)

    def time_scan(runner):
        start = time.perf_counter()
        runner, stats = scan(runner, hp)
        jax.block_until_ready(stats)
        return runner, time.perf_counter() - start

    def time_per_update(runner):  # main()'s loop, without the progress lines
        start, previous = time.perf_counter(), None
        for _ in range(updates):
            runner, stats = one(runner, hp)
            while previous is not None and not all(x.is_ready() for x in jax.tree.leaves(previous)):
                time.sleep(0.02)
            previous = stats
        jax.block_until_ready(previous)
        return runner, time.perf_counter() - start

    times = {"scan": [], "per update": []}
    for r in range(rounds):
        for kind in (("scan", "per update") if r % 2 == 0 else ("per update", "scan")):
            runner, seconds = (time_scan if kind == "scan" else time_per_update)(runner)
            times[kind].append(seconds)
    steps = num_envs * rollout_length * updates
    sps = {kind: [steps / t for t in ts] for kind, ts in times.items()}
    return {"script": script, "env_id": env_id, "updates": updates,
            **{kind: statistics.median(v) for kind, v in sps.items()},
            **{f"{kind} spread": (min(v), max(v)) for kind, v in sps.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["ippo", "magpo_sable"])
    parser.add_argument("--env-ids", nargs="+", default=["coordsum-3x10", "rware-tiny-2ag"])
    parser.add_argument("--num-envs", type=int, default=128)
    parser.add_argument("--rollout-length", type=int, default=128)
    parser.add_argument("--updates", type=int, default=8, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds of each kind, alternating")
    parser.add_argument("--hparams", choices=["default", "paper"], default="paper")
    args = parser.parse_args()
    print("| script | task | scan (steps/s) | per update (steps/s) | per update / scan |")
    print("| --- | --- | ---: | ---: | ---: |")
    for script in args.scripts:
        for env_id in args.env_ids:
            overrides = paper_hparams(script, env_id)[0] if args.hparams == "paper" else {}
            row = measure(script, env_id, args.num_envs, args.rollout_length, args.updates, args.rounds, overrides)
            cells = [f"{row[k]:,.0f} ({row[k + ' spread'][0]:,.0f}-{row[k + ' spread'][1]:,.0f})"
                     for k in ("scan", "per update")]
            print(f"| {script}.py | {env_id} | {cells[0]} | {cells[1]} | {row['per update'] / row['scan']:.3f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
