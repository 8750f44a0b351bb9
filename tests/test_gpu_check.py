"""The GPU check's offline path (benchmark/gpu_wheels.sh, gpu_check.sh, gpu_check.py), proved as far as a CPU allows.

Fast: the carried wheel list is exactly what the scripts need beyond the GPU machine's image; it is pinned; the
offline install into an empty target takes every wheel of benchmark/wheels (where it has been made); the
requirement check, the learning verdict, the protocol's arithmetic and the table, on made-up figures.
Slow (`-m slow`, needs PyPI for the wheels): the whole toy-size check end to end from the downloaded wheels, with
no index, in about 10 minutes. GPU_CHECK_TEST_PYTHON=/path/to/python runs it under another interpreter, e.g. a
Python 3.12 virtualenv with jax 0.11 and the GPU image's packages (docs/gpu.md)."""
import argparse
import ast
import glob
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import gpu_check  # noqa: E402

WHEELS = os.path.join(ROOT, "benchmark", "wheels")
# Imported by a script only for an option the check does not use (--track).
OPTIONAL = {"wandb"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: str) -> list[str]:
    with open(path) as f:
        return [norm(line.split("#", 1)[0].strip()) for line in f if line.split("#", 1)[0].strip()]


def third_party_imports() -> set[str]:
    """Top-level modules that the scripts, the files they import and the check import (at any depth of the
    file), minus the standard library and this repository's own."""
    files = glob.glob(os.path.join(ROOT, "*.py"))
    files += [os.path.join(ROOT, "benchmark", f) for f in ("run.py", "gpu_check.py")]
    own = {os.path.splitext(os.path.basename(f))[0] for f in glob.glob(os.path.join(ROOT, "*.py"))}
    own |= {"run", "examples", "benchmark", "results", "tests", "conftest"}
    modules = set()
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - own - {"__future__"} - OPTIONAL


def test_the_carried_wheels_are_what_the_scripts_need_beyond_the_gpu_image():
    image = set(listed(os.path.join(ROOT, "benchmark", "gpu_image_packages.txt")))
    carried = listed(gpu_check.WHEEL_LIST)
    assert {"jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "numpy"} <= image
    providers = metadata.packages_distributions()
    roots = {norm(providers[module][0]) for module in third_party_imports()}
    assert {"distrax", "tyro", "jumanji", "jaxmarl", "jax", "flax"} <= roots
    # Their requirements, followed through this environment's installed metadata (requirements.txt's pins),
    # stopping at what the image has: its own packages bring their own requirements there.
    needed, todo = set(), sorted(roots)
    while todo:
        name = todo.pop()
        if name in needed or name in image:
            continue
        needed.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
                todo.append(norm(req.name))
    assert sorted(needed) == sorted(carried), "benchmark/gpu_wheels.txt is not the closure: update it"
    assert len(carried) == len(set(carried))
    assert not [n for n in carried if n in ("jax", "jaxlib") or n.startswith(("nvidia-", "jax-cuda"))]


def test_gpu_wheels_lists_each_at_its_requirements_pin():
    out = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "gpu_wheels.sh"), "--list"], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHON": sys.executable}).stdout.split()
    pins = {}
    for line in open(os.path.join(ROOT, "requirements.txt")):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.split("#", 1)[0].strip())
        if match:
            pins[norm(match.group(1))] = match.group(2)
    assert out == [f"{name}=={pins[name]}" for name in listed(gpu_check.WHEEL_LIST)]
    assert any(line.startswith("tfp-nightly==0.26.0.dev") for line in out)


@pytest.mark.skipif(not glob.glob(os.path.join(WHEELS, "*.whl")),
                    reason="benchmark/wheels is not made here (bash benchmark/gpu_wheels.sh makes it; git ignores it)")
def test_the_wheel_folder_installs_offline_into_an_empty_target(tmp_path):
    """Every wheel of benchmark/wheels, one per listed package, installs with no index into an empty folder, as
    gpu_check.sh installs them on the GPU machine (for the wheels' Python, whichever this one is)."""
    wheels = sorted(glob.glob(os.path.join(WHEELS, "*.whl")))
    names = sorted(norm(os.path.basename(w).split("-")[0]) for w in wheels)
    assert names == sorted(listed(gpu_check.WHEEL_LIST)), "benchmark/wheels is stale: run benchmark/gpu_wheels.sh"
    assert sum(os.path.getsize(w) for w in wheels) < 32 * 2**20  # well under a device call's 64 MiB
    tag = re.search(r"-cp(\d)(\d+)-", " ".join(wheels))
    version = f"{tag.group(1)}.{tag.group(2)}" if tag else sysconfig.get_python_version()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
                    "--platform", "manylinux_2_28_x86_64", "--target", str(tmp_path / "site"), *wheels],
                   check=True, capture_output=True, text=True)
    installed = sorted(norm(d.split("-")[0]) for d in os.listdir(tmp_path / "site") if d.endswith(".dist-info"))
    assert installed == names


def test_requirement_problems_names_what_is_missing_or_at_a_wrong_version(tmp_path, monkeypatch):
    info = tmp_path / "fakepkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n"
                                   "Requires-Dist: numpy>=999\nRequires-Dist: surely-not-installed-pkg\n"
                                   "Requires-Dist: pytest\nRequires-Dist: other-missing; extra == \"docs\"\n"
                                   "Requires-Dist: win-only; sys_platform == \"win32\"\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = gpu_check.requirement_problems(["fakepkg", "absent-dist-xyz"])
    assert problems[0].startswith("fakepkg needs numpy>=999: found ")
    assert problems[1:] == ["fakepkg needs surely-not-installed-pkg: missing", "absent-dist-xyz: not installed"]


def test_learning_verdict():
    def record(*returns):
        return {"episode_return_mean": list(returns), "sps": 1000.0}

    rising = gpu_check.learning_verdict([record(6.0, 8.0), record(15.0, 17.0), record(21.0, 23.0)], 20.0)
    assert rising["passed"] and rising["returns"] == [7.0, 16.0, 22.0]
    assert not gpu_check.learning_verdict([record(6.0), record(19.0)], 20.0)["passed"]  # below the threshold
    assert not gpu_check.learning_verdict([record(30.0), record(25.0)], 20.0)["passed"]  # not rising
    assert not gpu_check.learning_verdict([record(25.0)], 20.0)["passed"]  # one checkpoint shows nothing
    assert not gpu_check.learning_verdict([], 20.0)["passed"]


def made_up_check(scripts, tasks, seeds, fail=()):
    """Jobs with made-up results, as the coordinator would hold them after a full-size check."""
    opts = argparse.Namespace(toy=False, scripts=scripts, tasks=tasks, seeds=seeds, jobs=6,
                              learn=gpu_check.FULL["learn"])
    jobs = [gpu_check.Job("imports", "imports", [])]
    jobs[0].status, jobs[0].result = "passed", {
        "python": "3.12.3", "jax": "0.11.2", "jaxlib": "0.11.2", "platform": "gpu", "device": "NVIDIA H100 80GB HBM3",
        "device_count": 1, "carried": {"distrax": {"version": "0.1.9", "at": "/tmp/x/site/"}},
        "requirement_problems": [], "scripts": {s: {"ok": True} for s in gpu_check.SCRIPTS},
        "tasks": {t: {"ok": True} for t in tasks}, "extra_imports": {"jaxmarl": "ok"}}
    for i, script in enumerate(scripts):
        for j, task in enumerate(tasks):
            for n in seeds:
                job = gpu_check.Job(f"measure {script} {task} {n}", "measure", [])
                if (script, task, n) in fail:
                    job.status, job.note = "failed", "XlaRuntimeError: out of memory"
                    jobs.append(job)
                    continue
                job.status = "passed"
                job.result = {"script": script, "env_id": task, "seeds": n, "values": "paper row", "compile_s": 60.0,
                              "train_sps": 25_000 * n, "sps": 20_000 * n * (i + 1) // (j + 1), "eval_share": 0.2,
                              "peak_mib": 900}
                jobs.append(job)
    learn = gpu_check.Job("learn", "learn", [])
    learn.status, learn.result = "passed", {"returns": [7.1, 22.4], "threshold": 20.0, "passed": True, "sps": 9e4,
                                            "compile_s": 30.0}
    return opts, jobs + [learn]


def test_the_table_has_a_row_per_script_task_and_seed_count_and_the_protocols_arithmetic():
    scripts, tasks = list(gpu_check.SCRIPTS), list(gpu_check.TASKS)
    opts, jobs = made_up_check(scripts, tasks, [1, 10])
    text, data = gpu_check.report(opts, jobs, time.time() - 400, {})
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | paper row | " in line]
    assert len(rows) == len(scripts) * len(tasks) * 2
    assert all(line.endswith("| passed |") for line in rows)
    assert "**PASSED**" in text and "Verdict: PASSED" in text and data["passed"]
    # ippo on coordsum at 10 seeds: 200,000 steps/s for 10 seeds = 20,000 per seed -> 60 s + 20M / 20,000 = 1,060 s
    assert data["estimates_s"]["ippo coordsum-3x10"] == pytest.approx(1060.0)
    # a row: ippo + mappo + 2 x magpo_sable + 2 x magpo_mat + ctds (in SCRIPTS' order, 1x to 5x ippo's speed)
    each = [60 + 1000 / k for k in (1, 2, 3, 4, 5)]
    row = each[0] + each[1] + 2 * each[2] + 2 * each[3] + each[4]
    assert data["estimates_s"]["row coordsum-3x10"] == pytest.approx(row)
    assert "| coordsum-3x10 | 17.7 min |" in text


def test_a_failed_figure_shows_in_its_row_and_the_verdict():
    opts, jobs = made_up_check(["ippo", "magpo_sable"], ["coordsum-3x10"], [1, 10],
                               fail=[("magpo_sable", "coordsum-3x10", 10)])
    text, data = gpu_check.report(opts, jobs, time.time(), {})
    assert ("| magpo_sable | coordsum-3x10 | - | 10 | - | - | - | - | - | failed: XlaRuntimeError: out of memory |"
            in text)
    assert not data["passed"] and "Verdict: NOT PASSED" in text
    assert "row coordsum-3x10" not in data["estimates_s"]  # no row total from a partial check


@pytest.mark.slow
def test_the_toy_check_runs_end_to_end_from_wheels_with_no_index(tmp_path):
    """Download the wheels for the interpreter under test (PyPI, seconds), then `GPU_CHECK_TOY=1 bash
    benchmark/gpu_check.sh OUT`: pip installs them with --no-index into an empty target, and every step runs.
    9-12 minutes on the 2-core EPYC while other tests ran beside it (2026-12-07)."""
    python = os.environ.get("GPU_CHECK_TEST_PYTHON", sys.executable)
    version = subprocess.run([python, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                             capture_output=True, text=True, check=True).stdout.strip()
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    subprocess.run(["bash", os.path.join(ROOT, "benchmark", "gpu_wheels.sh"), str(wheels)], check=True,
                   env={**os.environ, "PYTHON": sys.executable, "GPU_WHEELS_PYTHON": version})
    env = {**os.environ, "GPU_CHECK_TOY": "1", "GPU_CHECK_WHEELS": str(wheels), "PYTHON": python, "PIP_NO_INDEX": "1"}
    env.pop("XLA_FLAGS", None)  # the fast suite's optimisation level 0 would slow the learning check
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmark", "gpu_check.sh"), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "installed into" in result.stdout and "(no index)" in result.stdout
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]
    text = (out / "gpu_check.md").read_text()
    data = json.loads((out / "gpu_check.json").read_text())
    assert text.strip() in result.stdout  # printed too
    assert data["passed"] and data["toy"]
    # every carried package from the target pip just filled, none missing, every requirement met
    carried = data["imports"]["carried"]
    assert sorted(carried) == sorted(gpu_check.carried_names())
    assert all(v["at"] and "/site" in v["at"] and "site-packages" not in v["at"] for v in carried.values()), carried
    assert data["imports"]["requirement_problems"] == []
    imported = data["imports"]["scripts"]
    assert set(imported) == set(gpu_check.SCRIPTS) and all(s["ok"] for s in imported.values())
    scripts, tasks, seeds = gpu_check.TOY["scripts"], gpu_check.TOY["tasks"], gpu_check.TOY["seeds"]
    for script in scripts:
        assert re.search(rf"^\| {script} \| ok \| passed \| [\d.]+ \| \d+ \|$", text, re.M), script
        for task in tasks:
            for n in seeds:
                row = re.search(rf"^\| {script} \| {task} \| [^|]+ \| {n} \| ([\d.]+) \| ([\d,]+) \| ([\d,]+) \|"
                                r".*\| passed \|$", text, re.M)
                assert row, (script, task, n)
                assert float(row.group(1)) > 0 and int(row.group(3).replace(",", "")) > 0
    learn = next(j for j in data["jobs"] if j["name"] == "learn")["result"]
    assert learn["passed"] and learn["returns"][-1] >= learn["threshold"] > learn["returns"][0]
    assert "**PASSED**" in text
    assert all(f"{s} {t}" in data["estimates_s"] for s in scripts for t in tasks)
