"""The GPU check: on the machine as it is, in one call of about 7 minutes, every script's compile time, speed and
memory at the paper's values, one short learning check, and what the paper's protocol would take there.

    bash benchmark/gpu_check.sh OUT                     # the usual way: installs the carried wheels first
    python benchmark/gpu_check.py --out OUT             # when distrax, tyro, jumanji ... are importable already
    python benchmark/gpu_check.py --out OUT --toy       # the same steps at toy sizes, on a CPU (~10 min on 2 cores)
                                                        # (two scripts on CoordSum unless --scripts/--tasks say more)

Steps, each job in a process of its own (`--jobs` side by side: compiling is host work and the GPU is far from full):
  1. imports: the jax version and devices (a full-size check stops here unless JAX's first device is a GPU), the
     carried packages (where each is imported from, and whether each one's requirements are met by what is
     importable), every script imported and every task's environment built;
  2. smoke: each script trains a few steps on coordsum-3x10 through its own main() (evaluation, checkpoints,
     absolute metric): a script that fails here is left out of step 3, in seconds rather than minutes;
  3. speed: for every script, task and seed count, the script's own training program (init, then one update with
     the checkpoint's evaluation behind a cond, as its main() compiles it) at the paper's tuned values
     (benchmark/run.py's rows), `--run-batching vmap`; compile time, then the time of `updates` updates
     back to back and of one update with the evaluation, each in turn under an exclusive lock (no two figures
     are timed at once; other jobs may be compiling meanwhile), and the device's peak memory;
  4. learning: ippo.py on coordsum-3x10 through its main(), its evaluation return asserted to rise past a
     threshold (tests/test_learning.py's case), so that a wrong result on the GPU is seen, not only a speed;
  5. the paper's protocol (10 seeds x 20M steps per configuration: 122 checkpoints of 10 updates of 128 x 128
     steps per seed) estimated from step 3's 10-seed figures: compile + 122 x (9 updates + 1 with evaluation).

Output: OUT/gpu_check.md (the tables, also printed last), OUT/gpu_check.json (every figure), OUT/gpu_check.log
(every job's output); three files, as a device call brings back at most eight. Runs go to a temporary folder.
A job that would not end within --budget-s is not started, and one still running then is stopped; its row says
so. Exit status 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("ippo", "mappo", "magpo_sable", "magpo_mat", "ctds")
TASKS = ("coordsum-3x10", "rware-tiny-2ag")
WHEEL_LIST = os.path.join(ROOT, "benchmark", "gpu_wheels.txt")
RESULT = "GPU_CHECK_RESULT "  # a worker's last line: this, then its JSON
# A whole CoordSum row of the paper's Table 1 (and the same seven on rware): plain Sable and plain MAT are
# magpo_sable.py and magpo_mat.py with --delta inf --alpha 0, counted at their scripts' measured cost.
ROW = {"ippo": 1, "mappo": 1, "magpo_sable": 2, "ctds": 1, "magpo_mat": 2}
PAPER_STEPS = 20_000_000
PAPER_SEEDS = 10

# Full size: the paper's workload. Toy size: every step again, small enough for a 2-core CPU.
FULL = {
    "seeds": [1, 10], "updates": 3, "jobs": None, "budget_s": 420, "scripts": list(SCRIPTS), "tasks": list(TASKS),
    "sizes": {},  # the scripts' defaults: 128 envs x 128 steps, 122 checkpoints over 20M steps
    "learn": {"num_envs": 64, "total_timesteps": 589_824, "num_evaluations": 6, "num_seeds": 2, "threshold": 20.0},
}
TOY = {
    "seeds": [1, 2], "updates": 2, "jobs": 1, "budget_s": 1800,
    # Two scripts (a plain one, a guided one) on CoordSum: every step, 9-12 min on a busy 2-core CPU. --scripts,
    # --tasks widen it (all five on both tasks, 27 jobs: 42 min there).
    "scripts": ["ippo", "magpo_sable"], "tasks": ["coordsum-3x10"],
    "sizes": {"num_envs": 16, "rollout_length": 8, "num_eval_episodes": 4, "total_timesteps": 16 * 8 * 2 * 122},
    # A third of the full check's steps per seed, one seed: the return rose 7.3 -> 15.0 (jax 0.10.2) and 7.3 -> 14.6
    # (0.11.2) on a CPU, past 12 and the untrained policy's 6-11.
    "learn": {"num_envs": 64, "total_timesteps": 196_608, "num_evaluations": 4, "num_seeds": 1, "threshold": 12.0},
}
SMOKE_FLAGS = ["--num-envs", "4", "--rollout-length", "8", "--total-timesteps", "64", "--num-evaluations", "2",
               "--num-eval-episodes", "2"]


def carried_names() -> list[str]:
    with open(WHEEL_LIST) as f:
        return [line.split("#", 1)[0].strip() for line in f if line.split("#", 1)[0].strip()]


# ---------------------------------------------------------------------------------------------------------------
# Workers: each runs in a process of its own and ends with one RESULT line.
# ---------------------------------------------------------------------------------------------------------------
def requirement_problems(names: list[str]) -> list[str]:
    """Each carried distribution's requirements (extras and other platforms' markers left out) against the
    distributions importable now (sys.path in order, so a carried one before the machine's own): what is
    missing, or there at a version outside the requirement."""
    from importlib import metadata

    from packaging.requirements import Requirement

    problems = []
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed")
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name} needs {req}: missing")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} needs {req}: found {have}")
    return problems


def worker_imports(scripts: list[str], tasks: list[str]) -> dict:
    from importlib import metadata

    import jax

    device = jax.devices()[0]
    out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
           "platform": device.platform, "device": str(device.device_kind), "device_count": jax.device_count(),
           "carried": {}, "scripts": {}, "tasks": {}, "extra_imports": {}, "packages": {}}
    # The machine's own versions of what the scripts use beside the carried wheels (and its CUDA plugin).
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().replace("_", "-") in ("flax", "optax", "chex", "orbax-checkpoint", "numpy", "scipy",
                                               "matplotlib", "tensorstore") or name.startswith("jax-cuda"):
            out["packages"].setdefault(name.lower().replace("_", "-"), dist.version)
    for name in carried_names():
        try:
            dist = metadata.distribution(name)
            out["carried"][name] = {"version": dist.version, "at": str(dist.locate_file(""))}
        except metadata.PackageNotFoundError:
            out["carried"][name] = {"version": None, "at": None}
    out["requirement_problems"] = requirement_problems(carried_names())
    sys.path.insert(0, ROOT)
    import importlib

    modules = {}
    for script in scripts:
        start = time.perf_counter()
        try:
            modules[script] = importlib.import_module(script)
            out["scripts"][script] = {"ok": True, "s": round(time.perf_counter() - start, 1)}
        except Exception as error:  # noqa: BLE001  (any failure is the finding)
            out["scripts"][script] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    for task in tasks:  # each suite's environment, built and stepped once through the first script that imports
        module = next(iter(modules.values()), None)
        try:
            if module is None:
                raise RuntimeError("no script imported")
            env = module.validate(module.Args(env_id=task))
            out["tasks"][task] = {"ok": True, "agents": env.num_agents, "actions": env.num_actions}
        except Exception as error:  # noqa: BLE001
            out["tasks"][task] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
    # The other suites' packages (MPE, SMAX): carried too, not needed by this check's two tasks.
    for name in ("jaxmarl", "gymnax"):
        try:
            importlib.import_module(name)
            out["extra_imports"][name] = "ok"
        except Exception as error:  # noqa: BLE001
            out["extra_imports"][name] = f"{type(error).__name__}: {error}"[:300]
    return out


@contextlib.contextmanager
def exclusive(lock_path: str | None):
    """No two figures timed at once, across processes."""
    if lock_path is None:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def worker_measure(script: str, env_id: str, seeds: int, toy: bool, updates: int, lock_path: str | None) -> dict:
    """One script, task and seed count: compile its training program as its main() does, then time it."""
    import importlib

    import jax

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmark"))
    from run import paper_values

    module = importlib.import_module(script)
    values, source = paper_values(script, env_id)
    sizes = (TOY if toy else FULL)["sizes"]
    args = module.Args(env_id=env_id, num_seeds=seeds, run_batching="vmap", **values, **sizes)
    env = module.validate(args)
    trainer = module.make_train(args, env)
    keys, hp = module.run_inputs(args)
    start = time.perf_counter()
    if hasattr(module, "compile_update"):  # the script's own: init, then the update compiled, as main() does
        runner, compiled = module.compile_update(args, trainer, keys, hp, None)
    else:  # scripts before compile_update: the same steps, spelt out
        builder = getattr(module, "update_then_evaluate", None) or getattr(module, "update_then_checkpoint")
        init = jax.jit(module.over_runs(trainer.init, args, (0, 0)))
        step = jax.jit(module.over_runs(builder(trainer), args, (0, 0, None)), donate_argnums=0)
        runner = init(keys, hp)
        compiled = step.lower(runner, hp, True).compile()
    jax.block_until_ready(runner)
    compile_s = time.perf_counter() - start
    with exclusive(lock_path):
        waited = time.perf_counter()
        runner, stats, _ = compiled(runner, hp, False)  # warm-up
        jax.block_until_ready(stats)
        start = time.perf_counter()
        for _ in range(updates):  # back to back, as main() lets the next update start before reading the last
            runner, stats, _ = compiled(runner, hp, False)
        jax.block_until_ready((runner, stats))
        update_s = (time.perf_counter() - start) / updates
        start = time.perf_counter()
        runner, stats, evaluations = compiled(runner, hp, True)
        jax.block_until_ready((runner, evaluations))
        eval_update_s = time.perf_counter() - start
        timed_s = time.perf_counter() - waited
    memory = jax.local_devices()[0].memory_stats() or {}
    steps = args.num_envs * args.rollout_length * seeds  # every run's steps count
    per_interval = trainer.num_updates_per_eval
    interval_s = (per_interval - 1) * update_s + eval_update_s
    return {
        "script": script, "env_id": env_id, "seeds": seeds, "values": source,
        "num_envs": args.num_envs, "rollout_length": args.rollout_length, "updates_per_checkpoint": per_interval,
        "num_evaluations": args.num_evaluations, "num_eval_episodes": args.num_eval_episodes,
        "compile_s": round(compile_s, 1), "update_s": update_s, "eval_update_s": eval_update_s,
        "timed_s": round(timed_s, 2),
        "train_sps": round(steps / update_s), "sps": round(per_interval * steps / interval_s),
        # what the evaluations add to a checkpoint's time; below 0 only by timing noise (a cheap evaluation)
        "eval_share": round(max(0.0, 1 - (per_interval * update_s) / interval_s), 3),
        "peak_mib": round(memory["peak_bytes_in_use"] / 2**20) if "peak_bytes_in_use" in memory else None,
        "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
    }


# ---------------------------------------------------------------------------------------------------------------
# The coordinator: jobs side by side, a deadline, the table.
# ---------------------------------------------------------------------------------------------------------------
class Job:
    def __init__(self, name: str, kind: str, argv: list[str], after: str | None = None, lock: bool = False,
                 **info):
        self.name, self.kind, self.argv, self.after, self.lock, self.info = name, kind, argv, after, lock, info
        self.proc = self.log = self.lock_file = None
        self.start = self.end = None
        self.status = "pending"  # pending, running, passed, failed, skipped, stopped
        self.result: dict = {}
        self.note = ""


def compiled_in(text: str) -> float | None:
    match = re.search(r"compiled in ([\d.]+)s", text)
    return float(match.group(1)) if match else None


def run_dirs(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*", "metrics.jsonl")))


def learning_verdict(records: list[dict], threshold: float) -> dict:
    """The evaluation return (mean over seeds) by checkpoint; passed when the last reaches `threshold` and
    exceeds the first."""
    import numpy as np

    returns = [float(np.mean(r["episode_return_mean"])) for r in records]
    passed = len(returns) >= 2 and returns[-1] >= threshold and returns[-1] > returns[0]
    return {"returns": [round(r, 2) for r in returns], "threshold": threshold, "passed": passed,
            "sps": records[-1].get("sps") if records else None}


def finish(job: Job, work: str) -> None:
    """A job's outcome from its exit status, output and files."""
    with open(job.log.name) as f:
        text = f.read()
    ok = job.proc.returncode == 0
    if job.kind in ("imports", "measure"):
        line = next((x for x in reversed(text.splitlines()) if x.startswith(RESULT)), None)
        ok = ok and line is not None
        job.result = json.loads(line[len(RESULT):]) if ok else {}
    elif job.kind == "smoke":
        dirs = run_dirs(os.path.join(work, "smoke", job.info["script"]))
        lines = sum(1 for _ in open(dirs[0])) if dirs else 0
        job.result = {"compile_s": compiled_in(text), "checkpoints": lines}
        ok = ok and lines == 2
    elif job.kind == "learn":
        dirs = run_dirs(os.path.join(work, "learn"))
        records = [json.loads(x) for x in open(dirs[0])] if dirs else []
        job.result = {"compile_s": compiled_in(text), **learning_verdict(records, job.info["threshold"])}
        ok = ok and job.result["passed"]
    job.status = "passed" if ok else "failed"
    if not ok:
        job.note = (text.strip().splitlines() or ["no output"])[-1][:300]


def nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def commit() -> str:
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if out.returncode != 0:
            return "unknown"
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def protocol(row: dict) -> float:
    """Seconds for the paper's protocol from a measured figure: compile, then the checkpoints' updates at the
    measured rate (evaluations included), PAPER_STEPS per seed for PAPER_SEEDS seeds in one program."""
    per_seed_sps = row["sps"] / row["seeds"]
    return row["compile_s"] + PAPER_STEPS / per_seed_sps


def report(opts, jobs: list[Job], started: float, env: dict) -> tuple[str, dict]:
    toy = opts.toy
    by = {job.name: job for job in jobs}
    imports = by["imports"].result if "imports" in by else {}
    gpu = nvidia_smi()
    lines = [f"# GPU check{' (toy size)' if toy else ''}", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, commit {commit()}; "
             f"{gpu + ' (nvidia-smi: name, driver, memory)' if gpu else 'no nvidia-smi'}; JAX device "
             f"{imports.get('device', '?')} ({imports.get('platform', '?')}, "
             f"{imports.get('device_count', '?')} device(s)), jax {imports.get('jax', '?')}, "
             f"jaxlib {imports.get('jaxlib', '?')}, Python {imports.get('python', '?')}, "
             f"{os.cpu_count()} CPU cores; {opts.jobs} job(s) side by side; the whole check took "
             f"{time.time() - started:.0f} s."]
    if "imports" in by and by["imports"].status == "failed" and imports:
        lines += ["", f"**Stopped after the imports**: {by['imports'].note}."]
    if imports:
        carried = imports["carried"]
        places = sorted({os.path.dirname(os.path.normpath(v["at"])) if v["at"] else "missing"
                         for v in carried.values()})
        problems = imports["requirement_problems"]
        packages = ", ".join(f"{k} {v}" for k, v in sorted(imports.get("packages", {}).items()))
        lines += ["", f"The machine's own: {packages or '-'}."]
        lines += ["", f"Carried packages ({len(carried)}, benchmark/gpu_wheels.txt) imported from {', '.join(places)}; "
                  + ("every one's requirements met by what is importable." if not problems else
                     "requirements NOT met: " + "; ".join(problems) + ".")]
        extra = imports.get("extra_imports", {})
        if extra:
            lines.append("Other suites' packages: " + ", ".join(f"{k} {v}" for k, v in extra.items()) + ".")
        bad_tasks = {t: v["error"] for t, v in imports["tasks"].items() if not v["ok"]}
        if bad_tasks:
            lines.append("Environments that failed to build: " + "; ".join(f"{t}: {e}" for t, e in bad_tasks.items()))
    elif "imports" in by:
        lines += ["", f"**The imports failed**: {by['imports'].note}"]

    lines += ["", "## Smoke: every script imported, then a few steps through its main() on coordsum-3x10", "",
              "| script | import | tiny run | compiled in s | wall s |", "| --- | --- | --- | ---: | ---: |"]
    for script in dict.fromkeys([*SCRIPTS, *opts.scripts]):
        imported = imports.get("scripts", {}).get(script, {})
        job = by.get(f"smoke {script}")
        imp = "ok" if imported.get("ok") else imported.get("error", "-")
        run = job.status if job else "-"
        if job and job.note:
            run += f": {job.note}"
        wall = f"{job.end - job.start:.0f}" if job and job.end and job.start else "-"
        comp = job.result.get("compile_s") if job else None
        lines.append(f"| {script} | {imp} | {run} | {comp if comp is not None else '-'} | {wall} |")

    episodes = TOY["sizes"]["num_eval_episodes"] if toy else 32
    sizes = "toy sizes: " + ", ".join(f"{k} {v}" for k, v in TOY["sizes"].items()) if toy else \
        "128 envs x 128 steps per update per seed, 10 updates per checkpoint"
    lines += ["", f"## Speed at the paper's values ({sizes}; --run-batching vmap)", "",
              "Steps/s count every seed's steps. *training*: updates back to back; *with evaluations*: a checkpoint's "
              f"updates, the last with the checkpoint's evaluation ({episodes} episodes per seed), as the paper's runs "
              "interleave them. GPU memory: the process's peak bytes in use on the device (jax's allocator, "
              "XLA_PYTHON_CLIENT_PREALLOCATE=false).", "",
              "| script | task | values | seeds | compile s | steps/s training | steps/s with evaluations "
              "| evaluation share | GPU memory peak MiB | status |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    measured = []
    for env_id in opts.tasks:
        for script in opts.scripts:
            for seeds in opts.seeds:
                job = by.get(f"measure {script} {env_id} {seeds}")
                r = job.result if job else {}
                if r:
                    measured.append(r)
                    peak = f"{r['peak_mib']:,}" if r.get("peak_mib") is not None else "-"
                    lines.append(f"| {script} | {env_id} | {r['values']} | {seeds} | {r['compile_s']} | "
                                 f"{r['train_sps']:,} | {r['sps']:,} | {r['eval_share']:.0%} | {peak} | passed |")
                else:
                    status = (job.status + (f": {job.note}" if job.note else "")) if job else "not run"
                    lines.append(f"| {script} | {env_id} | - | {seeds} | - | - | - | - | - | {status} |")

    learn = by.get("learn")
    if learn:
        r, c = learn.result, opts.learn
        lines += ["", f"## Learning: ippo.py on coordsum-3x10 ({c['num_seeds']} seed(s), {c['num_envs']} envs, "
                  f"{c['total_timesteps']:,} steps, {c['num_evaluations']} checkpoints, its defaults)", ""]
        if r.get("returns"):
            lines.append(f"Evaluation return by checkpoint (mean over seeds): {', '.join(map(str, r['returns']))}; "
                         f"the last must reach {r['threshold']} and exceed the first: "
                         f"**{'PASSED' if r['passed'] else 'FAILED'}** (compiled in {r.get('compile_s')} s, "
                         f"{r.get('sps') or 0:,.0f} steps/s over the run, evaluations and checkpoints included).")
        else:
            lines.append(f"**{learn.status.upper()}**: {learn.note or 'no metrics'}")

    most = max(opts.seeds)
    lines += ["", f"## The paper's protocol on this {'machine' if toy else 'GPU'}: {PAPER_SEEDS} seeds x "
              f"{PAPER_STEPS / 1e6:.0f}M steps per configuration, one program each", ""]
    if toy:
        lines.append(f"(Toy sizes: the figures below extrapolate the toy workload's speed, {most} seeds, to the "
                     "paper's steps; they exercise the arithmetic, not the paper's workload.)")
        lines.append("")
    lines += ["Compile time + 20M steps per seed at the *with evaluations* rate of the "
              f"{most}-seed figure; a row of Table 1 is seven configurations (plain Sable and plain MAT counted at "
              "magpo_sable's and magpo_mat's cost). Not included: writing 122 checkpoints, and the final absolute "
              "evaluation (one more compile).", "",
              "| task | " + " | ".join(opts.scripts) + " | a row, run one after another |",
              "| --- |" + " ---: |" * (len(opts.scripts) + 1)]
    estimates = {}
    for env_id in opts.tasks:
        cells, total, complete = [], 0.0, True
        for script in opts.scripts:
            row = next((r for r in measured if r["script"] == script and r["env_id"] == env_id and r["seeds"] == most),
                       None)
            if row is None:
                cells.append("-")
                complete = False
                continue
            seconds = protocol(row)
            estimates[f"{script} {env_id}"] = seconds
            cells.append(duration(seconds))
            total += ROW.get(script, 1) * seconds
        whole = duration(total) if complete and set(opts.scripts) == set(ROW) else "-"
        if complete and set(opts.scripts) == set(ROW):
            estimates[f"row {env_id}"] = total
        lines.append(f"| {env_id} | " + " | ".join(cells) + f" | {whole} |")

    failed = [job for job in jobs if job.status in ("failed", "stopped")]
    skipped = [job for job in jobs if job.status in ("skipped", "pending")]
    lines += ["", f"Verdict: {'PASSED' if not failed and not skipped else 'NOT PASSED'}: "
              f"{sum(job.status == 'passed' for job in jobs)} job(s) passed, {len(failed)} failed or stopped, "
              f"{len(skipped)} not run"
              + (f" ({', '.join(j.name for j in failed + skipped)})" if failed or skipped else "")
              + "."]
    data = {"toy": toy, "commit": commit(), "nvidia_smi": gpu, "imports": imports, "env": env,
            "jobs": [{"name": j.name, "kind": j.kind, "status": j.status, "note": j.note, "result": j.result,
                      "wall_s": round(j.end - j.start, 1) if j.end and j.start else None} for j in jobs],
            "estimates_s": estimates, "passed": not failed and not skipped}
    return "\n".join(lines) + "\n", data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.md, .json and .log")
    parser.add_argument("--toy", action="store_true", help="toy sizes (a CPU, ~10 minutes on 2 cores); any device")
    parser.add_argument("--scripts", nargs="+", choices=SCRIPTS, help="scripts to smoke-run and measure "
                        "(default all five; toy: ippo magpo_sable); every script is imported whatever this says")
    parser.add_argument("--tasks", nargs="+", help="tasks to measure (default coordsum-3x10 rware-tiny-2ag; toy: "
                        "coordsum-3x10)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seed counts to measure (default 1 10; toy 1 2)")
    parser.add_argument("--jobs", type=int, help="jobs side by side (default: half the CPU cores, at most 8; toy 1)")
    parser.add_argument("--budget-s", type=float, help="seconds the whole check may take (default 420; toy 1800)")
    parser.add_argument("--any-device", action="store_true", help="full sizes on whatever device JAX has")
    parser.add_argument("--worker", choices=["imports", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--lock", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    size = TOY if opts.toy else FULL
    opts.scripts = opts.scripts or size["scripts"]
    opts.tasks = opts.tasks or size["tasks"]
    opts.seeds = opts.seeds or size["seeds"]
    opts.learn = size["learn"]

    if opts.worker == "imports":
        print(RESULT + json.dumps(worker_imports(opts.scripts, opts.tasks)), flush=True)
        return 0
    if opts.worker == "measure":
        result = worker_measure(opts.scripts[0], opts.tasks[0], opts.seeds[0], opts.toy, size["updates"], opts.lock)
        print(RESULT + json.dumps(result), flush=True)
        return 0
    if not opts.out:
        parser.error("--out is required")

    started = time.time()
    budget = opts.budget_s or size["budget_s"]
    opts.jobs = opts.jobs or size["jobs"] or max(1, min(8, (os.cpu_count() or 2) // 2))
    out = os.path.abspath(opts.out)
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    lock = os.path.join(work, "timing.lock")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # several processes share one GPU
    me = [sys.executable, os.path.abspath(__file__)] + (["--toy"] if opts.toy else [])

    def say(message: str) -> None:
        print(f"[gpu_check {time.time() - started:5.0f}s] {message}", flush=True)

    say(f"work folder {work}; results to {out}; budget {budget:.0f} s; {opts.jobs} job(s) side by side")
    # Every script imported and both tasks' environments built, whatever the rest measures.
    jobs = [Job("imports", "imports", me + ["--worker", "imports", "--scripts", *SCRIPTS,
                                            "--tasks", *dict.fromkeys([*TASKS, *opts.tasks])])]
    for script in opts.scripts:
        jobs.append(Job(f"smoke {script}", "smoke", [sys.executable, os.path.join(ROOT, f"{script}.py"), "--env-id",
                        "coordsum-3x10", *SMOKE_FLAGS, "--output-dir", os.path.join(work, "smoke", script)],
                        after="imports", script=script))
    learn = opts.learn
    learn_flags = [t for k, v in learn.items() if k != "threshold" for t in (f"--{k.replace('_', '-')}", str(v))]
    learn_job = Job("learn", "learn", [sys.executable, os.path.join(ROOT, "ippo.py"), "--env-id", "coordsum-3x10",
                                       *learn_flags, "--output-dir", os.path.join(work, "learn")],
                    after="imports", lock=True, threshold=learn["threshold"])
    jobs.insert(2, learn_job)  # right after the first smoke run: it holds the timing lock while it trains
    # The most seeds first: they give the protocol's estimate, and they are the longest jobs.
    for seeds in sorted(opts.seeds, reverse=True):
        for env_id in opts.tasks:
            for script in opts.scripts:
                jobs.append(Job(f"measure {script} {env_id} {seeds}", "measure",
                                me + ["--worker", "measure", "--scripts", script, "--tasks", env_id, "--seeds",
                                      str(seeds), "--lock", lock], after="imports", smoke=f"smoke {script}"))
    by = {job.name: job for job in jobs}
    log_all = open(os.path.join(out, "gpu_check.log"), "w")
    durations: list[float] = []

    def close(job: Job) -> None:
        job.end = time.time()
        if job.lock_file:
            fcntl.flock(job.lock_file, fcntl.LOCK_UN)
            job.lock_file.close()
            job.lock_file = None
        job.log.close()
        with open(job.log.name) as f:
            log_all.write(f"\n===== {job.name} ({job.status}, {job.end - job.start:.0f} s): {' '.join(job.argv)}\n")
            log_all.write(f.read())
        log_all.flush()

    while True:
        now = time.time()
        running = [job for job in jobs if job.status == "running"]
        for job in running:
            if job.proc.poll() is not None:
                job.end = time.time()
                finish(job, work)
                close(job)
                if job.kind == "measure" and job.status == "passed":
                    durations.append(job.end - job.start)
                say(f"{job.name}: {job.status} in {job.end - job.start:.0f} s"
                    + (f" ({job.note})" if job.note else ""))
                if job.name == "imports" and job.status == "passed":
                    r = job.result
                    say(f"jax {r['jax']} on {r['device']} ({r['platform']}); carried packages: "
                        f"{'requirements met' if not r['requirement_problems'] else r['requirement_problems']}")
                    if r["platform"] != "gpu" and not (opts.toy or opts.any_device):
                        job.status, job.note = "failed", f"JAX's first device is {r['platform']}, not a GPU"
                    for script, s in r["scripts"].items():
                        if not s["ok"] and f"smoke {script}" in by:
                            by[f"smoke {script}"].status, by[f"smoke {script}"].note = "skipped", "import failed"
            elif now - started > budget:
                job.proc.kill()
                job.proc.wait()
                job.status, job.note = "stopped", f"still running at the check's budget of {budget:.0f} s"
                close(job)
                say(f"{job.name}: stopped at the budget")
        # Jobs whose predecessor did not pass will not run; a script's figures stop where its smoke run failed
        # (they start beside it, not after it, so that no slot waits).
        for job in jobs:
            for before in (job.after, job.info.get("smoke")):
                if before and job.status in ("pending", "running") and \
                        by[before].status in ("failed", "skipped", "stopped"):
                    if job.status == "running":
                        job.proc.kill()
                        job.proc.wait()
                        job.status = "skipped"
                        close(job)
                    job.status, job.note = "skipped", f"{before} did not pass"
        running = [job for job in jobs if job.status == "running"]
        pending = [job for job in jobs if job.status == "pending"]
        if not running and not pending:
            break
        expected = statistics.median(durations) if durations else (0 if opts.toy else 60)
        for job in pending:
            if len(running) >= opts.jobs:
                break
            if job.after and by[job.after].status != "passed":
                continue
            if time.time() - started + (expected if job.kind == "measure" else 0) > budget:
                job.status, job.note = "skipped", f"would not end within the check's budget of {budget:.0f} s"
                continue
            if job.lock:  # the learning run trains while no figure is being timed
                job.lock_file = open(lock, "a")
                try:
                    fcntl.flock(job.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a figure is being timed: start it later
                    job.lock_file.close()
                    job.lock_file = None
                    continue
            job.log = open(os.path.join(work, re.sub(r"[^A-Za-z0-9_.-]+", "_", job.name) + ".log"), "w")
            job.start = time.time()
            job.proc = subprocess.Popen(job.argv, cwd=ROOT, env=env, stdout=job.log, stderr=subprocess.STDOUT)
            job.status = "running"
            running.append(job)
            say(f"{job.name}: started")
        time.sleep(0.2)

    text, data = report(opts, jobs, started, {k: v for k, v in os.environ.items()
                                              if k.startswith(("XLA_", "JAX_", "GPU_CHECK_", "PYTHONPATH"))})
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(data, f, indent=1)
    log_all.close()
    shutil.rmtree(work, ignore_errors=True)
    print("\n" + text, flush=True)
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
