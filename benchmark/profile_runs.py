"""Where N runs in one vmapped program spend their time on a CPU, against one run: XLA:CPU's own per-operation
timings (jax.profiler's trace of one update), summed by kind of operation.

    python benchmark/profile_runs.py --script ippo --env-id coordsum-3x10 --hparams paper --runs 1 3

One update per run count, each in the same process after compilation, with --ppo-epochs 1 so that the trace
holds every operation (the profiler drops events past about a million). The figures: the update's wall time,
the time inside XLA's operations (the rest is the runtime's own per-operation overhead: the only part that
batching runs could share out), and per kind of operation its time and its ratio to the 1-run figure.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import importlib
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def kind(name: str) -> str | None:
    """An XLA:CPU thunk's name -> its kind; None for the runtime's own events and control flow."""
    if name.startswith(("ThunkExecutor", "$", "end:", "while", "call", "conditional", "PjitFunction", "Common",
                        "Parse")):
        return None
    name = re.sub(r"[._][0-9]+$", "", name)
    if name.startswith("dot"):
        return "dot (matmul)"
    if "reduce-window" in name:
        return "reduce-window (gradient sums)"
    if "fusion" in name:
        return "fused elementwise"
    return "other"


def profile(module, args, runs: int) -> dict:
    import jax

    args = dataclasses.replace(args, num_seeds=runs, run_batching="vmap")
    trainer = module.make_train(args, module.validate(args))
    keys, hp = module.run_inputs(args)
    runner = jax.jit(module.over_runs(trainer.init, args, (0, 0)))(keys, hp)
    update = jax.jit(module.over_runs(trainer.update, args, (0, 0)), donate_argnums=0).lower(runner, hp).compile()
    runner, stats = update(runner, hp)
    jax.block_until_ready(stats)
    folder = tempfile.mkdtemp(prefix="profile_runs_")
    start = time.perf_counter()
    with jax.profiler.trace(folder, create_perfetto_trace=True):
        runner, stats = update(runner, hp)
        jax.block_until_ready(stats)
    traced_wall = time.perf_counter() - start
    events = json.load(gzip.open(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_kind, wall = collections.Counter(), 0.0
    for event in events:
        if event.get("ph") != "X":
            continue
        if event["name"] == "ThunkExecutor::Execute (wait for completion)":
            wall = max(wall, event["dur"] / 1e6)
        elif kind(event["name"]):
            by_kind[kind(event["name"])] += event["dur"] / 1e6
    return {"runs": runs, "wall_s": wall or traced_wall, "ops_s": sum(by_kind.values()), "by_kind": dict(by_kind)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", default="ippo")
    parser.add_argument("--env-id", default="coordsum-3x10")
    parser.add_argument("--hparams", choices=["default", "paper"], default="paper")
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 3])
    opts = parser.parse_args()
    from run import paper_values

    module = importlib.import_module(opts.script)
    values = paper_values(opts.script, opts.env_id, False)[0] if opts.hparams == "paper" else {}
    args = module.Args(env_id=opts.env_id, total_timesteps=128 * 128, num_evaluations=1, **{**values, "ppo_epochs": 1})
    results = [profile(module, args, runs) for runs in opts.runs]
    one = results[0]
    print(f"{opts.script} on {opts.env_id} ({opts.hparams} values, 1 epoch), one update, vmapped runs:")
    print("| | " + " | ".join(f"{r['runs']} run(s)" for r in results) + " |")
    print("| --- |" + " ---: |" * len(results))
    rows = [("wall", "wall_s"), ("inside XLA's operations", "ops_s")]
    for label, key in rows:
        print(f"| {label} | " + " | ".join(f"{r[key]:.2f} s ({r[key] / one[key]:.2f}x)" for r in results) + " |")
    for name in sorted(one["by_kind"], key=lambda k: -one["by_kind"][k]):
        print(f"| {name} | " + " | ".join(f"{r['by_kind'].get(name, 0):.2f} s ({r['by_kind'].get(name, 0) / one['by_kind'][name]:.2f}x)"
                                          for r in results) + " |")


if __name__ == "__main__":
    main()
