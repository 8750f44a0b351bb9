"""Training throughput of the algorithm scripts, beside the environment's own random-action
throughput (the ceiling) and, where given, the authors' Mava-based systems on the same machine.

    python benchmark/sps.py                                   # ippo and mappo, one task per suite
    python benchmark/sps.py --scripts ippo --env-ids coordsum-3x10 rware-tiny-2ag \
        --authors-src /tmp/authors-src --authors-venv /tmp/authors-venv
    python benchmark/sps.py --scripts magpo_sable --env-ids coordsum-3x10 rware-tiny-2ag --hparams paper \
        --updates 2 --authors-intervals 3 --authors-src /tmp/authors-src --name sps_magpo_cpu
    python benchmark/sps.py --scripts magpo_sable magpo_mat ctds --env-ids coordsum-3x10 rware-tiny-2ag \
        --hparams paper --updates 2 --name sps_guided_cpu
    python benchmark/sps.py --scripts ippo mappo magpo_sable sable ctds magpo_mat mat --env-ids coordsum-3x10 \
        rware-tiny-2ag --hparams paper --updates 2 --authors-src /tmp/authors-src --name sps_all_cpu
    python benchmark/sps.py --scripts ippo mappo magpo_sable magpo_mat ctds --env-ids coordsum-3x10 rware-tiny-2ag \
        --hparams paper --updates 1 --repeats 3 --baseline /tmp/old --baseline-python /tmp/old-venv/bin/python

`--baseline ROOT --baseline-python PYTHON` measures another checkout of this repository (its scripts, run by
that interpreter, e.g. an older commit with the older pins) beside this one, cell by cell in the same
session, each figure in its own process; the order of the two sides alternates from cell to cell, so a
machine that drifts does not favour one side. The measuring code is this file's on both sides.

`sable` and `mat` are plain Sable and plain MAT: magpo_sable.py and magpo_mat.py with --delta inf --alpha 0
(benchmark/run.py --plain), beside the authors' rec_sable and mat.

`--hparams paper` runs every script, and the authors' system beside it, with the paper's tuned
values for that task (benchmark/reference/paper_hyperparameters.csv), where the file has them.

Every figure comes from its own fresh process (so compile time and peak memory are that run's
alone), all in one session, and the table goes to stdout and to --out as Markdown and JSON.

What is timed: the jitted training updates alone (rollout, GAE, PPO epochs), after compilation,
the same span the authors' systems time in their `[TIMING]` lines (evaluation excluded).
`--num-envs 128` is the paper's workload: the authors ran 64 environments with Mava's
update_batch_size 2, i.e. 128 environments per update, which is what their runs here use too.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The environment as it was given: importing a script (for its paper values) may add to XLA_FLAGS, which a
# --baseline-python with another jax must not inherit.
ENV_AT_START = dict(os.environ)
SUITE_TASKS = ["coordsum-3x10", "rware-tiny-2ag", "lbf-2s-8x8-2p-2f-coop", "con-5x5x3a", "mpe-simple_spread_3ag", "smax-2s3z"]
# The authors' hydra names for the tasks this benchmark compares on.
AUTHORS_ENVS = {"coordsum-3x10": ("coordsum", "3x10-30"), "rware-tiny-2ag": ("rware", "tiny-2ag")}
AUTHORS_SYSTEMS = {"ippo": "mava/systems/ppo/anakin/rec_ippo.py", "mappo": "mava/systems/ppo/anakin/rec_mappo.py",
                   "magpo_sable": "mava/systems/gpo/anakin/rec_magpo.py", "sable": "mava/systems/sable/anakin/rec_sable.py",
                   "mat": "mava/systems/mat/anakin/mat.py"}
# Plain Sable and plain MAT are no scripts of their own: magpo_sable.py / magpo_mat.py with --delta inf
# --alpha 0, the guider alone (benchmark/run.py --plain).
PLAIN = {"sable": "magpo_sable", "mat": "magpo_mat"}
SCRIPTS = ("ippo", "mappo", "magpo_sable", "magpo_mat", "ctds", *PLAIN)


def module_of(script: str) -> tuple[str, bool]:
    """--scripts name -> (the file that runs it, whether it runs plain)."""
    return PLAIN.get(script, script), script in PLAIN


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import PAPER_COLUMNS, paper_values, row_for  # noqa: E402  (the paper's values, as benchmark/run.py uses them)


def paper_hparams(script: str, env_id: str) -> tuple[dict, list[str], str]:
    """The paper's tuned values for (script, task) as benchmark/run.py resolves them: our Args overrides,
    the same values as the authors' hydra overrides, and which row they came from."""
    module, plain = module_of(script)
    ours, source = paper_values(module, env_id, plain)
    row, _ = row_for(module, env_id, plain)
    theirs = []
    for column, (flag, hydra_key, kind) in PAPER_COLUMNS.items():
        value = (row or {}).get(column, "").strip()
        if "lr" in ours and column in ("actor_lr", "critic_lr"):  # their MAGPO's, Sable's, MAT's one optimiser rate
            hydra_key, flag = "system.actor_lr", "lr"
        if module == "magpo_mat":  # their MAT's network config has no net_config level
            hydra_key = hydra_key.replace("network.net_config.", "network.")
        if plain and column in ("alpha", "delta"):  # rec_sable and mat have neither
            continue
        if value and flag in ours:
            theirs.append(f"{hydra_key}={kind(float(value))}")
    return ours, theirs, source


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def measure_script(script: str, env_id: str, num_envs: int, rollout_length: int, updates: int, repeats: int,
                   overrides: dict, code_root: str = ROOT, runs: int | None = None,
                   run_batching: str = "auto") -> dict:
    """Compile `updates` training updates of `script` (the file in `code_root`) as one jitted call and time
    `repeats` calls. With `runs`: that many runs in one program, held the way the script holds --num-seeds
    runs (its over_runs, with `run_batching`), or, in a checkout older than over_runs, vmapped with the
    hyperparameters shared, as its main() did."""
    import dataclasses

    import jax

    sys.path.insert(0, code_root)
    name, plain = module_of(script)
    module = importlib.import_module(name)
    if plain:
        overrides = {**overrides, "delta": float("inf"), "alpha": 0.0}
    args = module.Args(env_id=env_id, num_envs=num_envs, rollout_length=rollout_length,
                       total_timesteps=num_envs * rollout_length * updates, num_evaluations=1, **overrides)
    env = module.validate(args)
    trainer = module.make_train(args, env)
    hp = module.hparams_from_args(args)

    def train_updates(runner, hp):
        return jax.lax.scan(lambda r, _: trainer.update(r, hp), runner, None, updates)

    start = time.perf_counter()
    if runs is None:
        runner = jax.jit(trainer.init)(jax.random.PRNGKey(0), hp)
        compiled = jax.jit(train_updates, donate_argnums=0).lower(runner, hp).compile()
    else:
        if hasattr(module, "over_runs"):
            args = dataclasses.replace(args, num_seeds=runs, run_batching=run_batching)
            keys, hp = module.run_inputs(args)
            batching, hp_axis = module.run_batching(args), 0

            def over(fn, axes):
                return module.over_runs(fn, args, axes)
        else:
            keys = jax.vmap(jax.random.PRNGKey)(jax.numpy.arange(runs))
            batching, hp_axis, over = "vmap, hyperparameters shared", None, lambda fn, axes: jax.vmap(fn, in_axes=axes)
        runner = jax.jit(over(trainer.init, (0, hp_axis)))(keys, hp)
        compiled = jax.jit(over(train_updates, (0, hp_axis)), donate_argnums=0).lower(runner, hp).compile()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner, stats = compiled(runner, hp)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - start)
    steps = num_envs * rollout_length * updates * (runs or 1)
    extra = {} if runs is None else {"runs": runs, "run_batching": batching}
    return {"kind": "ours", "script": script, "env_id": env_id, "num_envs": num_envs, "compile_s": round(compile_s, 1), **extra,
            "sps": round(steps / statistics.median(times)), "sps_repeats": [round(steps / t) for t in times],
            "peak_host_mib": round(peak_rss_mib()), "jax": jax.__version__,
            "peak_device_mib": device_peak_mib(), "device": str(jax.devices()[0].device_kind),
            "hparams": {k: str(v) if v == float("inf") else v for k, v in overrides.items()}}  # strict JSON: no Infinity


def measure_env(env_id: str, num_envs: int, rollout_length: int, repeats: int, code_root: str = ROOT) -> dict:
    """Random valid actions in `num_envs` environments, `rollout_length` steps per call, stepped by
    `step_many` as the scripts step them."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, code_root)
    env = importlib.import_module("ippo").make_env(env_id)

    def rollout(key):
        key_reset, key_run = jax.random.split(key)
        state, ts = jax.vmap(env.reset)(jax.random.split(key_reset, num_envs))

        def one_step(carry, key):
            state, ts = carry
            key_action, key_env = jax.random.split(key)
            if env.continuous:
                actions = jax.random.uniform(key_action, (num_envs, env.num_agents, env.num_actions), minval=-1, maxval=1)
            else:
                actions = jax.random.categorical(key_action, jnp.where(ts.action_mask, 0.0, -1e9)).astype(jnp.int32)
            state, ts = env.step_many(jax.random.split(key_env, num_envs), state, actions)
            return (state, ts), ts.reward

        return jax.lax.scan(one_step, (state, ts), jax.random.split(key_run, rollout_length))[1]

    run = jax.jit(rollout)
    jax.block_until_ready(run(jax.random.PRNGKey(0)))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.PRNGKey(i + 1)))
        times.append(time.perf_counter() - start)
    return {"kind": "env", "env_id": env_id, "num_envs": num_envs, "sps": round(num_envs * rollout_length / statistics.median(times))}


def parse_timings(stdout: str) -> list[tuple[int, float, float]]:
    """(interval, elapsed seconds, steps/s) of each [TIMING] line the patched authors' code printed."""
    return [(int(m.group(1)), float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"\[TIMING\] interval (\d+) elapsed_s=([\d.]+) env_steps=\d+ sps=([\d.]+)", stdout)]


def measure_authors(system: str, env_id: str, src: str, venv: str, num_envs: int, rollout_length: int,
                    updates: int, intervals: int, timeout: int, hydra_overrides: list[str]) -> dict:
    """Run the authors' system (patched by benchmark/authors/setup.sh to print [TIMING] per
    evaluation interval) at our hyperparameters; report the median steps/s of the intervals after
    the first two (interval 0 compiles; on CoordSum interval 1 recompiles, a weak-type leak). A run
    that does not finish in `timeout` seconds is still a figure: an upper bound on its speed."""
    env, scenario = AUTHORS_ENVS[env_id]
    update_batch_size = 2
    total_steps = num_envs * rollout_length * updates * intervals
    if num_envs % update_batch_size:
        raise ValueError("--num-envs must be even to split over the authors' update_batch_size 2")
    command = [os.path.join(venv, "bin", "python"), AUTHORS_SYSTEMS[system], f"env={env}", f"env/scenario={scenario}",
               f"arch.num_envs={num_envs // update_batch_size}", f"system.update_batch_size={update_batch_size}",
               f"system.rollout_length={rollout_length}", f"system.total_timesteps={total_steps}",
               f"arch.num_evaluation={intervals}", "arch.absolute_metric=False", "arch.num_eval_episodes=8",
               # our defaults (speed does not depend on them, but the comparison is at identical settings)
               "system.gae_lambda=0.9", "system.vf_coef=0.1", *hydra_overrides]
    # unbuffered, so that the intervals a timed-out run did finish are in what it printed
    env_vars = {**os.environ, "PYTHONPATH": src, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
                "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=src, env=env_vars, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        printed = timed_out.stdout or ""
        done = parse_timings(printed.decode(errors="replace") if isinstance(printed, bytes) else printed)
        return {"kind": "authors", "script": system, "env_id": env_id, "num_envs": num_envs, "timeout_s": timeout,
                "env_steps": total_steps, "intervals": intervals, "intervals_done_s": [round(s, 1) for _, s, _ in done],
                "hparams": hydra_overrides}
    wall = time.perf_counter() - start
    timings = parse_timings(result.stdout)
    if result.returncode != 0 or len(timings) < 3:
        raise RuntimeError(f"authors' {system} failed or printed too few [TIMING] lines:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    steady = [sps for interval, _, sps in timings if interval >= 2]
    return {"kind": "authors", "script": system, "env_id": env_id, "num_envs": num_envs, "sps": round(statistics.median(steady)),
            "first_interval_s": round(timings[0][1], 1), "intervals_sps": [round(s) for _, _, s in timings], "wall_s": round(wall, 1),
            "hparams": hydra_overrides}


def in_subprocess(*argv: str, python: str = sys.executable, code_root: str = ROOT, timeout: float | None = None) -> dict:
    """One figure in a fresh process: `python` runs this file's measuring code on the scripts in `code_root`.
    A figure not done within `timeout` seconds (compilation included) is recorded as such."""
    try:
        result = subprocess.run([python, os.path.abspath(__file__), "--measure", *argv, "--code-root", code_root],
                                capture_output=True, text=True, cwd=code_root, timeout=timeout, env=ENV_AT_START)
    except subprocess.TimeoutExpired:
        kind = {"kind": "env"} if argv[0] == "env" else {"kind": "ours", "script": argv[0]}
        return {**kind, "env_id": argv[1], "timeout_s": timeout}
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def authors_cell(authors: dict | None) -> str:
    if authors is None:
        return "-"
    if "sps" in authors:
        return f"{authors['sps']:,}"
    if "timeout_s" in authors:  # it did not finish its steps in time, compilation included
        cell = f"timed out: under {authors['env_steps'] / authors['timeout_s']:,.1f} on average over {authors['timeout_s']:,} s"
        if "intervals" in authors:  # rows written before sps.py kept the finished intervals lack these
            done = authors["intervals_done_s"]
            cell += f" ({len(done)} of {authors['intervals']} intervals done" + (
                f", the first, compilation included, in {done[0]:,.1f} s)" if done else ")")
        return cell
    return "failed (see .json)"


def ratio_cell(ours: dict, authors: dict | None) -> str:
    if authors and "sps" in authors:
        return f"{ours['sps'] / authors['sps']:.2f}x"
    if authors and "timeout_s" in authors:
        return f"over {ours['sps'] * authors['timeout_s'] / authors['env_steps']:.1f}x"
    return "-"


def table(rows: list[dict], scripts: list[str], env_ids: list[str]) -> str:
    by = {(r["kind"], r.get("script"), r["env_id"]): r for r in rows}
    lines = ["| script | task | values | steps/s | compile s | peak host MiB | env ceiling steps/s | of ceiling | authors' steps/s | ours / authors |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for script in scripts:
        for env_id in env_ids:
            ours = by.get(("ours", script, env_id))
            if ours is None:
                continue
            if "sps" not in ours:  # timed out
                lines.append(f"| {script} | {env_id} | {ours.get('values', 'defaults')} | {sps_cell(ours)} |"
                             + " - |" * 6)
                continue
            ceiling = by.get(("env", None, env_id))
            authors = by.get(("authors", script, env_id))
            lines.append("| " + " | ".join([
                script, env_id, ours.get("values", "defaults"), f"{ours['sps']:,}", f"{ours['compile_s']}", f"{ours['peak_host_mib']:,}",
                f"{ceiling['sps']:,}" if ceiling else "-", f"{ours['sps'] / ceiling['sps']:.1%}" if ceiling else "-",
                authors_cell(authors), ratio_cell(ours, authors)]) + " |")
    return "\n".join(lines)


def sps_cell(row: dict) -> str:
    return f"{row['sps']:,}" if "sps" in row else f"not done in {row['timeout_s']:,.0f} s"


def spread(row: dict) -> str:
    """The slowest and fastest of a figure's timed calls, as steps/s: the noise within one process."""
    if "sps" not in row:
        return "-"
    repeats = row.get("sps_repeats") or [row["sps"]]
    return f"{min(repeats):,}-{max(repeats):,}"


def runs_table(rows: list[dict], scripts: list[str], env_ids: list[str], num_seeds: list[int]) -> str:
    """N runs in one program against N single runs one after another (the same side's 1-run figure), for the
    baseline (before) and this checkout (after) where both were measured."""
    by = {(r.get("script"), r["env_id"], r.get("runs"), r.get("side", "after")): r for r in rows if r["kind"] == "ours"}
    sides = [side for side in ("before", "after") if any(k[3] == side for k in by)]

    def cell(script, env_id, runs, side):
        row, one = by.get((script, env_id, runs, side)), by.get((script, env_id, min(num_seeds), side))
        if row is None or "sps" not in row:
            return "-" if row is None else sps_cell(row)
        vs = f" ({row['sps'] / one['sps']:.2f}x)" if one and "sps" in one and runs != min(num_seeds) else ""
        return f"{row['sps']:,}{vs}"

    head = " | ".join(f"{side}: steps/s (vs N single runs)" for side in sides)
    lines = [f"| script | task | values | N runs | {head} | how ({', '.join(sides)}) |",
             "| --- | --- | --- | ---: |" + " ---: |" * len(sides) + " --- |"]
    for env_id in env_ids:
        for script in scripts:
            for runs in num_seeds:
                found = [by.get((script, env_id, runs, side)) for side in sides]
                if not any(found):
                    continue
                values = next(r for r in found if r).get("values", "defaults")
                how = ", ".join(r.get("run_batching", "-") if r else "-" for r in found)
                lines.append(f"| {script} | {env_id} | {values} | {runs} | "
                             + " | ".join(cell(script, env_id, runs, side) for side in sides) + f" | {how} |")
    return "\n".join(lines)


def compare_table(rows: list[dict], scripts: list[str], env_ids: list[str]) -> str:
    """Baseline (before) and this checkout (after), cell by cell."""
    by = {(r["kind"], r.get("script"), r["env_id"], r.get("side", "after")): r for r in rows}
    lines = ["| script | task | values | steps/s before | steps/s after | after / before | spread before | spread after "
             "| compile s before, after | peak host MiB before, after |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for env_id in env_ids:
        for kind, script in [("env", None)] + [("ours", s) for s in scripts]:
            old, new = by.get((kind, script, env_id, "before")), by.get((kind, script, env_id, "after"))
            if old is None or new is None:
                continue
            compile_s = f"{old.get('compile_s', '-')}, {new.get('compile_s', '-')}" if kind == "ours" else "-"
            peak = ", ".join(f"{r['peak_host_mib']:,}" if "peak_host_mib" in r else "-" for r in (old, new))
            ratio = f"{new['sps'] / old['sps']:.2f}x" if "sps" in old and "sps" in new else "-"
            lines.append("| " + " | ".join([
                script or "env ceiling (random actions)", env_id, new.get("values", "-"), sps_cell(old), sps_cell(new),
                ratio, spread(old), spread(new), compile_s, peak if kind == "ours" else "-"]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["ippo", "mappo"], choices=SCRIPTS,
                        help="sable and mat: magpo_sable.py and magpo_mat.py with --delta inf --alpha 0")
    parser.add_argument("--env-ids", nargs="+", default=SUITE_TASKS)
    parser.add_argument("--num-envs", type=int, default=128)
    parser.add_argument("--rollout-length", type=int, default=128)
    parser.add_argument("--updates", type=int, default=3, help="training updates per timed call")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after compilation (median)")
    parser.add_argument("--authors-src", help="local copy of github liyheng/MAGPO, set up by benchmark/authors/setup.sh")
    parser.add_argument("--authors-venv", default="/tmp/authors-venv")
    parser.add_argument("--authors-intervals", type=int, default=4)
    parser.add_argument("--authors-timeout", type=int, default=1800)
    parser.add_argument("--hparams", choices=["default", "paper"], default="default",
                        help="each script's defaults, or the paper's tuned values for the task where they exist")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmark", "results"), help="folder for the .md/.json results")
    parser.add_argument("--name", help="file name (without extension) of the results; default sps_<device>")
    parser.add_argument("--baseline", help="another checkout of this repository to measure beside this one (before)")
    parser.add_argument("--baseline-python", default=sys.executable, help="the interpreter (virtualenv) of --baseline")
    parser.add_argument("--timeout", type=float, help="seconds one figure of ours may take, compilation included")
    parser.add_argument("--num-seeds", type=int, nargs="+",
                        help="many runs in one program: aggregate steps/s of N runs per program, for each N")
    parser.add_argument("--run-batching", choices=["auto", "vmap", "loop"], default="auto",
                        help="with --num-seeds: how this checkout's scripts hold the runs (their --run-batching)")
    parser.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", default=ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args()

    if opts.measure:  # child process: one figure, printed as JSON
        what, *rest = opts.measure
        if what == "env":
            out = measure_env(rest[0], opts.num_envs, opts.rollout_length, opts.repeats + 1, opts.code_root)
        else:
            out = measure_script(what, rest[0], opts.num_envs, opts.rollout_length, opts.updates, opts.repeats,
                                 json.loads(rest[1]), opts.code_root, opts.runs, opts.run_batching)
        print(json.dumps(out))
        return

    common = ["--num-envs", str(opts.num_envs), "--rollout-length", str(opts.rollout_length),
              "--updates", str(opts.updates), "--repeats", str(opts.repeats)]
    if opts.baseline and not os.path.isfile(os.path.join(opts.baseline, "benchmark", "sps.py")):
        parser.error(f"--baseline {opts.baseline}: not a checkout of this repository (no benchmark/sps.py)")
    sides = [("after", sys.executable, ROOT)]
    if opts.baseline:
        sides.append(("before", opts.baseline_python, os.path.abspath(opts.baseline)))
    rows, cell = [], 0

    def measure(*argv: str, **extra) -> None:
        nonlocal cell
        cell += 1
        for side, python, code_root in sides[::(-1) ** cell]:  # alternate which side goes first
            row = {**in_subprocess(*argv, *common, python=python, code_root=code_root, timeout=opts.timeout), **extra}
            rows.append({**row, "side": side} if opts.baseline else row)
            what = argv[0] if argv[0] != "env" else "env ceiling"
            what += f" x {row['runs']} runs ({row['run_batching']})" if "runs" in row else ""
            compiled = f", compiled in {row['compile_s']}s" if "compile_s" in row else ""
            print(f"{what} {argv[1]}{f' ({side})' if opts.baseline else ''}: {sps_cell(row)} steps/s{compiled}", flush=True)
            write_results(opts, rows)

    if opts.num_seeds:  # many runs in one program, beside one run
        for env_id in opts.env_ids:
            for script in opts.scripts:
                ours, _, source = paper_hparams(script, env_id) if opts.hparams == "paper" else ({}, [], "defaults")
                for runs in opts.num_seeds:
                    measure(script, env_id, json.dumps(ours), "--runs", str(runs), "--run-batching",
                            opts.run_batching, values=source)
        write_results(opts, rows, final=True)
        return
    for env_id in opts.env_ids:
        measure("env", env_id)
        for script in opts.scripts:
            ours, theirs, source = paper_hparams(script, env_id) if opts.hparams == "paper" else ({}, [], "defaults")
            measure(script, env_id, json.dumps(ours), values=source)
            if opts.authors_src and env_id in AUTHORS_ENVS and script in AUTHORS_SYSTEMS:
                try:
                    rows.append(measure_authors(script, env_id, opts.authors_src, opts.authors_venv, opts.num_envs,
                                                opts.rollout_length, opts.updates, opts.authors_intervals,
                                                opts.authors_timeout, theirs))
                    unit = " steps/s" if "sps" in rows[-1] else ""  # a timeout's cell carries its own words
                    print(f"authors' {script} {env_id}: {authors_cell(rows[-1])}{unit}", flush=True)
                except RuntimeError as error:  # keep the hour of figures already taken
                    rows.append({"kind": "authors", "script": script, "env_id": env_id, "error": str(error)[-2000:]})
                    print(f"authors' {script} {env_id} FAILED: {str(error)[-500:]}", flush=True)
            write_results(opts, rows)  # after every figure, so a stopped run keeps what it measured
    write_results(opts, rows, final=True)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The host CPU's name, with its family and model numbers: the ratios to the authors' code differ
    between CPUs (README, Speed), and a virtual machine may name only the brand ("AMD EPYC")."""
    try:
        with open(cpuinfo) as f:
            first = f.read().split("\n\n", 1)[0]  # the first processor's block
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name", "unknown CPU")
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def write_results(opts, rows: list[dict], final: bool = False) -> None:
    device = next((r["device"] for r in rows if r["kind"] == "ours"), "cpu")
    tag = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    header = (f"Measured {time.strftime('%Y-%m-%d')} on {device} ({os.cpu_count()} cores, {cpu_model()}), "
              f"{opts.num_envs} envs x rollout {opts.rollout_length}, {opts.updates} updates per timed call.\n"
              f"Command: python benchmark/sps.py {' '.join(sys.argv[1:])}\n")
    if getattr(opts, "num_seeds", None):
        header += ("Aggregate steps/s of N runs in one program (every run's steps count); against N single runs "
                   "one after another, whose aggregate is the 1-run figure of the same side. "
                   + (f"Before: {opts.baseline} run by {opts.baseline_python}; after: {ROOT}.\n"
                      if opts.baseline else "\n"))
        text = header + "\n" + runs_table(rows, opts.scripts, opts.env_ids, opts.num_seeds) + "\n"
    elif getattr(opts, "baseline", None):
        header += (f"Before: {opts.baseline} run by {opts.baseline_python}; after: {ROOT} run by {sys.executable}. "
                   "Spread: the slowest and fastest timed call of each figure.\n")
        text = header + "\n" + compare_table(rows, opts.scripts, opts.env_ids) + "\n"
    else:
        text = header + "\n" + table(rows, opts.scripts, opts.env_ids) + "\n"
    if final:
        print("\n" + text)
    os.makedirs(opts.out, exist_ok=True)
    name = opts.name or f"sps_{tag}"
    with open(os.path.join(opts.out, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, f"{name}.json"), "w") as f:
        json.dump({"command": sys.argv, "cpu": cpu_model(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
