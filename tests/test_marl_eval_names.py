"""The names and the summary.json the scripts write, against marl-eval's own checks.

marl-eval (github.com/instadeepai/marl-eval, id-marl-eval 0.0.4 on PyPI, which pins pandas 1.4.4) is not
installed here: its checks are restated below from its source, marl_eval/utils/data_processing_utils.py,
marl_eval/utils/diagnose_data_errors.py and marl_eval/json_tools/json_utils.py, identical at tag 0.0.4 and at
commit 5675ad6 (2024-11-04, the newest); the line numbers below are that file's. Where marl-eval silently
changes the data (it lower-cases every key), the test asks for names that the change leaves alone.
"""

import importlib
import json
import os
import re
import shlex
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import aggregate  # noqa: E402

SCRIPTS = ["ippo", "mappo", "magpo_sable", "magpo_mat", "ctds"]
GUIDED = {"magpo_sable", "magpo_mat", "ctds"}  # they also write `<script>_guider`


# ---- marl-eval's checks, restated ------------------------------------------------------------------------------

def lower_case_dictionary_keys(d):
    """data_processing_utils.py 74-85: every key of the JSON lower-cased (data_process_pipeline, line 204)."""
    return {k.lower(): lower_case_dictionary_keys(v) if isinstance(v, dict) else v for k, v in d.items()}


def check_comma_in_algo_names(algos):
    """data_processing_utils.py 51-71 (raised at 294-300): no algorithm name may hold a comma."""
    return [name for name in algos if "," in str(name)]


def check_absolute_metric(steps):
    """data_processing_utils.py 43-48: the first step key containing "absolute" is the absolute metric."""
    return next((step for step in steps if "absolute" in step), None)


def get_seed_number(seed):
    """json_utils.py 44-56 (concatenate_json_files, when two files share a seed key): a seed key is an integer
    or `<word>_<integer>` with exactly one underscore."""
    if seed.isnumeric():
        return "", int(seed)
    word, number = seed.split("_")  # ValueError for any other form, as there
    return word, int(number)


def data_process_pipeline(raw, metrics_to_normalize):
    """data_processing_utils.py 150-310, raising where marl-eval catches everything at 304-310, prints "There is
    an issue related to the format of the json file!" and returns the data unprocessed."""
    names = lambda d: [k for k in d]  # noqa: E731
    lowered = lower_case_dictionary_keys(raw)
    # A key that differs from another only in case is merged into it (line 204): names must not depend on case.
    def same_keys(a, b, where):
        assert len(names(a)) == len(names(b)), f"keys that differ only in case at {where}: {names(b)}"
        for (ka, va), vb in zip(a.items(), b.values()):
            if isinstance(va, dict):
                same_keys(va, vb, f"{where}/{ka}")
    same_keys(lowered, raw, "top")
    assert "extra" not in lowered, "an environment named 'extra' is overwritten by marl-eval's own entry (line 285)"
    processed, algorithms = {}, []
    for env, tasks in lowered.items():
        for task, algos in tasks.items():
            minmax = {}
            for algorithm, runs in algos.items():
                if algorithm not in algorithms:
                    algorithms.append(algorithm)
                for run, steps in runs.items():
                    for step, metrics in steps.items():
                        for metric in metrics_to_normalize:  # lines 232-236: KeyError where a step lacks one
                            values = np.asarray(metrics[metric], float)
                            low, high = minmax.get(metric, (np.inf, -np.inf))
                            minmax[metric] = (min(low, values.min()), max(high, values.max()))
            for algorithm, runs in algos.items():
                for run, steps in runs.items():
                    step_count = 0
                    for step, metrics in steps.items():
                        out = processed.setdefault(env, {}).setdefault(task, {}).setdefault(algorithm, {}) \
                            .setdefault(run, {}).setdefault(step, dict(metrics))
                        for metric, values in metrics.items():
                            if "step_count" not in metric:  # lines 242-267: every other metric is averaged
                                out[f"mean_{metric}"] = float(np.mean(np.asarray(values, float)))
                                if metric in metrics_to_normalize:
                                    low, high = minmax[metric]
                                    out[f"mean_norm_{metric}"] = float(np.mean(
                                        (np.asarray(values, float) - low) / (high - low + 1e-6)))
                            else:  # lines 268-272: the step counter is a number, subtracted from the previous
                                assert isinstance(values, (int, float)) and not isinstance(values, bool), values
                                step_count = values - step_count
    invalid = check_comma_in_algo_names(algorithms)
    if invalid:
        raise ValueError("Algorithm names must not contain commas. "
                         f"Please update the following invalid names: {invalid}")
    return processed


def create_matrices_for_rliable(processed, environment_name, metrics_to_normalize):
    """data_processing_utils.py 313-497: the [runs, tasks] matrices of the absolute metric and the
    [runs, tasks, steps] tensors of the curves, taking tasks, algorithms, runs and steps from the first of each
    (lines 367-370) and indexing every other with them (KeyError where one lacks a key)."""
    data = processed[environment_name.lower()]
    tasks = list(data)
    algorithms = list(data[tasks[0]])
    runs = list(data[tasks[0]][algorithms[0]])
    steps = list(data[tasks[0]][algorithms[0]][runs[0]])
    absolute = check_absolute_metric(steps)
    if absolute is None:  # lines 373-379, re-raised at 499-509
        raise Exception("The final logging step for a given run should contain the absolute_metrics values in a "
                        "step called absolute_metrics.")
    names = list(data[tasks[0]][algorithms[0]][runs[0]][absolute])
    plotted = [m for m in names if m.split("_")[0] == "mean" and (  # lines 385-405
        (set(m.split("_")) & set(metrics_to_normalize) and m.split("_")[1] == "norm")
        or not set(m.split("_")) & set(metrics_to_normalize))]
    final = {m: {a: np.array([[np.mean(data[t][a][r][absolute][m]) for t in tasks] for r in runs])
                 for a in algorithms} for m in plotted}
    steps.remove(absolute)  # line 450: only that one key; any other holding "absolute" is read as a step
    curves = {m: {a: np.stack([np.array([[np.mean(data[t][a][r][s][m]) for t in tasks] for r in runs])
                               for s in steps], axis=2) for a in algorithms} for m in plotted}
    return final, curves


def check_data(raw):
    """diagnose_data_errors.py 127-216 (DiagnoseData.check_data): per environment, the same algorithms on every
    task, the same number of runs for every algorithm, of step keys for every run, the same metrics in every
    step but step_count, and no comma in an algorithm's name."""
    for env, tasks in lower_case_dictionary_keys(raw).items():
        algos = [sorted(a) for a in tasks.values()]
        runs = [len(r) for a in tasks.values() for r in a.values()]
        steps = [len(s) for a in tasks.values() for r in a.values() for s in r.values()]
        metrics = [sorted(set(m) - {"step_count"}) for a in tasks.values() for r in a.values() for s in r.values()
                   for m in s.values()]
        assert all(a == algos[0] for a in algos), f"{env}: other algorithms on other tasks"
        assert len(set(runs)) == 1, f"{env}: runs {runs}"
        assert len(set(steps)) == 1, f"{env}: step keys {steps}"
        assert all(m == metrics[0] for m in metrics), f"{env}: metrics {metrics}"
        assert not check_comma_in_algo_names(algos[0]), f"{env}: commas in {algos[0]}"


def assert_marl_eval_reads(summary, metric="episode_return"):
    """Every check above, on one summary.json's dict -> the matrices marl-eval would plot."""
    check_data(summary)
    for seeds in (s for tasks in summary.values() for algos in tasks.values() for s in algos.values()):
        for seed, steps in seeds.items():
            get_seed_number(seed)
            assert [k for k in steps if "absolute" in k] == ["absolute_metrics"]
            # marl-eval reads the steps in the order the file lists them (line 370), never sorting them:
            # step_0, step_1, ..., step_10, ... must come in the order of their step counts.
            counts = [v["step_count"] for k, v in steps.items() if k != "absolute_metrics"]
            assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    processed = data_process_pipeline(summary, [metric])
    return {env: create_matrices_for_rliable(processed, env, [metric]) for env in processed}


# ---- the scripts' names -----------------------------------------------------------------------------------------

def points(module):
    """Two grid points over flags every script has, in HPARAMS order, with values %g writes in every form (an
    exponent, a fraction, inf); and, for the MAGPO scripts, the README's delta x alpha example."""
    found = [{"clip_eps": 0.2, "ent_coef": 1e-05, "max_grad_norm": np.inf},
             {"clip_eps": 0.1, "ent_coef": 0.01, "max_grad_norm": 0.5}]
    if "delta" in module.HPARAMS:
        found += [{"delta": 1.5, "alpha": 1.0}, {"delta": np.inf, "alpha": 0.0}]
    for point in found:
        assert set(point) <= set(module.HPARAMS)
    return found


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


def test_grid_point_names_pass_marl_evals_checks_and_are_safe_file_names(script):
    """`magpo_sable` + point_name({"delta": 1.5, "alpha": 1.0}): no comma (marl-eval refuses it), no upper case
    (marl-eval lower-cases keys), no character a shell or a file system treats specially (the names are also
    the saved parameter files' names, `actor_best<point>.msgpack`), and one reading back (aggregate.py)."""
    names = set()
    for point in points(script):
        suffix = script.point_name(point)
        for name in [script.ALGORITHM + suffix] + ([f"{script.ALGORITHM}_guider{suffix}"] if script.ALGORITHM in GUIDED
                                                   else []):
            assert check_comma_in_algo_names([name]) == [], f"marl-eval refuses {name!r}: a comma"
            assert name == name.lower(), f"marl-eval would rename {name!r} to {name.lower()!r}"
            assert name not in names and name.lower() not in {n.lower() for n in names}
            names.add(name)
            assert aggregate.split_point(name) == (name[:len(name) - len(suffix)],
                                                   {flag: f"{value:g}" for flag, value in point.items()})
        file_name = f"actor_best{suffix}.msgpack"
        assert re.fullmatch(r"[A-Za-z0-9._=+-]+", file_name) and not file_name.startswith("-"), file_name
        assert shlex.quote(file_name) == file_name, f"{file_name!r} needs quoting in a shell"
    assert script.point_name({}) == ""


def evaluations(num_runs, episodes, count, guided, seed=0):
    """What the scripts pass marl_eval_summary: per evaluation its step count and, per policy, each metric's
    [runs, episodes] values."""
    rng = np.random.default_rng(seed)
    found = []
    for i in range(count):
        entry = {"env_steps": 1_000 * (i + 1)}
        for prefix in [""] + (["guider_"] if guided else []):
            entry[f"{prefix}eval"] = {"episode_return": rng.normal(i, 1.0, (num_runs, episodes)),
                                      "episode_length": np.full((num_runs, episodes), 25.0)}
        found.append(entry)
    return found


def summary_of_a_grid(module, count=12, with_absolute=True):
    """summary.json's dict for two grid points of 2 seeds, every policy of the script, as write_summary
    assembles it from marl_eval_summary (module.marl_eval_summary, called as the scripts call it)."""
    env = types.SimpleNamespace(env_id="coordsum-3x10", suite="coordsum")
    args = types.SimpleNamespace(num_seeds=2, seed=3)
    grid = points(module)[:2]
    guided = module.ALGORITHM in GUIDED
    evals = evaluations(len(grid) * args.num_seeds, 4, count, guided)
    absolute = {prefix: {"episode_return": np.full((len(grid) * args.num_seeds, 40), 7.0 + len(prefix)),
                         "episode_length": np.full((len(grid) * args.num_seeds, 40), 25.0)}
                for prefix in [""] + (["guider_"] if guided else [])}
    summary = {}
    for p, point in enumerate(grid):
        for prefix in absolute:
            name = (f"{module.ALGORITHM}_{prefix[:-1]}" if prefix else module.ALGORITHM) + module.point_name(point)
            part = module.marl_eval_summary(env, args, evals, absolute[prefix] if with_absolute else None, name,
                                            f"{prefix}eval", slice(p * args.num_seeds, (p + 1) * args.num_seeds))
            summary.setdefault("coordsum", {}).setdefault("3x10", {}).update(part["coordsum"]["3x10"])
    return json.loads(json.dumps(summary)), evals, grid  # as the file holds it


def test_summary_json_is_what_marl_eval_reads(script):
    """A grid's summary.json through marl-eval's pipeline: every policy of every point its own algorithm, seeds
    `seed_<n>`, 12 evaluations in order (step_10 after step_9), the absolute metric where marl-eval looks for it."""
    summary, evals, grid = summary_of_a_grid(script)
    final, curves = assert_marl_eval_reads(summary)["coordsum"]
    per_point = 1 + (script.ALGORITHM in GUIDED)
    assert len(final["mean_norm_episode_return"]) == len(grid) * per_point
    name = script.ALGORITHM + script.point_name(grid[1])
    assert final["mean_norm_episode_return"][name].shape == (2, 1)  # [runs, tasks]
    tensor = curves["mean_episode_return"][name]
    assert tensor.shape == (2, 1, 12)  # [runs, tasks, evaluations]
    # Point 1's second seed is run 3 of the [runs, ...] arrays.
    np.testing.assert_allclose(tensor[1, 0], [np.mean(e["eval"]["episode_return"][3]) for e in evals])
    assert list(summary["coordsum"]["3x10"][name]) == ["seed_3", "seed_4"]


def test_the_restated_checks_refuse_what_marl_eval_refuses():
    """The checks above fail where marl-eval's do: a comma in a name (the grid names before this test), and a run
    with no absolute_metrics (a run stopped before it finished): marl-eval's create_matrices_for_rliable raises,
    it does not fall back on the last step."""
    module = importlib.import_module("magpo_sable")
    summary, _, _ = summary_of_a_grid(module, count=3)
    algos = summary["coordsum"]["3x10"]
    algos["magpo_sable[alpha=1,delta=1.5]"] = algos.pop(next(iter(algos)))
    with pytest.raises(ValueError, match="Algorithm names must not contain commas"):
        data_process_pipeline(summary, ["episode_return"])
    stopped, _, _ = summary_of_a_grid(module, count=3, with_absolute=False)
    processed = data_process_pipeline(stopped, ["episode_return"])  # the pipeline itself takes it
    with pytest.raises(Exception, match="should contain the absolute_metrics values"):
        create_matrices_for_rliable(processed, "coordsum", ["episode_return"])
    with pytest.raises(ValueError):
        get_seed_number("seed_0_a")
