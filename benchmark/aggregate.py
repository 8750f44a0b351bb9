"""Aggregate runs the way the paper reports them (after Mava and Gorsane et al.), with rliable.

    python benchmark/aggregate.py runs                 # writes runs/aggregate/
    python benchmark/aggregate.py runs --out my_tables

Give it the folder that holds the run folders (a script's --output-dir), not a run folder itself. Reads every
runs/*/summary.json (marl-eval's layout, as every script writes it) and writes to --out (default:
RUNS_DIR/aggregate). It refuses to write over tables and plots already there unless given --overwrite
(results/reproduce.sh, which regenerates the committed results/ on purpose, gives it):
  * tasks.md / tasks.json: per task and algorithm, the mean over seeds of the final score (the absolute
    metric: best parameters over 10x the episodes; the last checkpoint where a run has none) with a 95%
    bootstrap confidence interval over seeds, the steps each seed trained, and the paper's Table 1 figure
    (benchmark/reference/paper_table1.csv: mean ± std over 10 seeds at 20M steps) where it has one;
  * suites.md / suites.json: per suite, the interquartile mean of min-max normalised final scores
    with 95% stratified bootstrap confidence intervals (normalised per task by the lowest and highest
    score any algorithm reached there; a task only one algorithm ran is left out, with a note: normalised
    over one algorithm, its worst seed would be 0 and its best 1 whatever they scored);
  * <suite>__<task>.png: sample-efficiency curves per task (mean over seeds, 95% bootstrap band), the
    learner solid and its guider dashed where a script has one; <suite>.png: the normalised IQM per
    checkpoint over the suite's tasks;
  * for a grid (a run with several values per flag, e.g. `magpo_sable.py --delta 1.2 1.5 inf --alpha 0 1 2`,
    whose points summary.json names `magpo_sable--alpha=1--delta=1.5`, the point's flags as a command line
    gives them; the older `magpo_sable[alpha=1,delta=1.5]`, which marl-eval refuses for its comma, is read too
    and reported in the new form): grid.md / grid.json, per task and
    script a row per point (its values, final score with 95% CI, the best point in bold) and, for two flags,
    the learner's mean final score as a matrix; <suite>__<task>__<script>_grid.png, that score over the grid
    (a heatmap for two flags, bars otherwise) beside every point's learning curve. Grid points stay out of
    the other plots and of suites.md, which compare algorithms.
Every run of a (task, algorithm) under runs_dir is pooled as one more seed: keep one configuration per
folder. Runs made with `benchmark/run.py --plain` count as plain Sable / MAT: their guider is named
`sable` or `mat`. rliable needs arch < 8, which needs pandas < 3: hence pandas 2.3.3 in requirements.txt.
The score is the win rate on SMAX and the episode return elsewhere, as in the paper.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import sys
from collections import defaultdict

import numpy as np
from rliable import library as rly
from rliable import metrics

PLAIN_NAMES = {"magpo_sable_guider": "sable", "magpo_mat_guider": "mat"}
PAPER_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "paper_table1.csv")
# Our names -> Table 1's columns: the learners of magpo_sable.py and ctds.py are the paper's MAGPO and CTDS.
# magpo_mat.py's learner and the guiders have no column there.
PAPER_NAMES = {"magpo_sable": "magpo", "ctds": "ctds", "ippo": "ippo", "mappo": "mappo", "sable": "sable", "mat": "mat"}


def paper_scores(path: str = PAPER_TABLE) -> dict:
    """{(suite, task, our algorithm name): (mean, std or None)} from Table 1 (first row where one repeats)."""
    ours = {paper: name for name, paper in PAPER_NAMES.items()}
    scores = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["algorithm"] in ours:
                key = (r["suite"], r["task"], ours[r["algorithm"]])
                scores.setdefault(key, (float(r["mean"]), float(r["std"]) if r["std"] else None))
    return scores


def headline_metric(suite: str) -> str:
    return "win_rate" if suite == "smax" else "episode_return"


def load_runs(runs_dir: str, skipped: list | None = None) -> dict:
    """-> {(suite, task, algorithm): [per-seed run dicts]} over every summary.json below runs_dir. Grid points'
    names are given in the current form (`magpo_sable--alpha=1`, see split_point). Seeds of a run stopped before
    its first evaluation hold nothing to score: they are left out and, where `skipped` is a list, listed in it
    as (summary.json's path, algorithm, seeds left out)."""
    runs = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "summary.json"))):
        plain = False
        info = os.path.join(os.path.dirname(path), "benchmark.json")
        if os.path.exists(info):
            plain = json.load(open(info)).get("plain", False)
        for suite, tasks in json.load(open(path)).items():
            for task, algorithms in tasks.items():
                for algorithm, seeds in algorithms.items():
                    base, point = split_point(algorithm)
                    if plain:
                        base = PLAIN_NAMES.get(base, f"{base}_plain_learner")
                    algorithm = join_point(base, point)
                    kept = [seed for seed in seeds.values() if any(k.startswith("step_") for k in seed)]
                    if len(kept) < len(seeds) and skipped is not None:
                        skipped.append((path, algorithm, len(seeds) - len(kept)))
                    runs[suite, task, algorithm].extend(kept)
    return {key: seeds for key, seeds in runs.items() if seeds}


def find_runs(runs_dir: str) -> dict:
    """load_runs, or one line saying why there is nothing to aggregate under runs_dir (SystemExit)."""
    if not os.path.isdir(runs_dir):
        sys.exit(f"error: {runs_dir}: no such folder")
    if os.path.exists(os.path.join(runs_dir, "summary.json")):
        parent = os.path.dirname(os.path.abspath(runs_dir))
        sys.exit(f"error: {runs_dir} is one run's folder (it holds summary.json); give the folder that holds the "
                 f"runs: python benchmark/aggregate.py {os.path.relpath(parent)}")
    skipped: list = []
    runs = load_runs(runs_dir, skipped)
    if not runs and skipped:
        which = "; ".join(f"{os.path.dirname(path)}: {n} seed(s) of {algorithm}" for path, algorithm, n in skipped)
        sys.exit(f"error: nothing to aggregate under {runs_dir}: every run there stopped before its first "
                 f"evaluation ({which})")
    if not runs:
        sys.exit(f"error: no run under {runs_dir}: none of its folders holds a summary.json")
    for path, algorithm, n in skipped:
        print(f"note: skipping {n} seed(s) of {algorithm} in {path}: stopped before its first evaluation",
              file=sys.stderr)
    return runs


def final_score(run: dict, metric: str) -> float:
    """The absolute metric's mean where the run has one, else the last checkpoint's mean."""
    if "absolute_metrics" in run:
        return float(np.mean(run["absolute_metrics"][metric]))
    last = max((k for k in run if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    return float(np.mean(run[last][metric]))


def curve(run: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, mean evaluation metric) of every checkpoint, in order."""
    steps = sorted((k for k in run if k.startswith("step_")), key=lambda k: int(k.split("_")[1]))
    return np.array([run[k]["step_count"] for k in steps]), np.array([np.mean(run[k][metric]) for k in steps])


def bootstrap(scores: np.ndarray, func, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """rliable's stratified bootstrap over the runs (axis 0) of `scores` -> (func(scores), [2, ...] 95% CI)."""
    # rliable 1.2 draws its resamples from numpy's global generator (StratifiedBootstrap.update_indices
    # calls np.random.choice) whatever random_state it is given, so the same runs gave other CIs on every
    # call. Seed the global generator for this call and put the caller's state back afterwards.
    outer = np.random.get_state()
    np.random.seed(seed)
    try:
        point, ci = rly.get_interval_estimates({"x": scores}, func, reps=reps)
    finally:
        np.random.set_state(outer)
    return point["x"], ci["x"]


def interval(scores: np.ndarray, func, reps: int, seed: int) -> tuple[float, float, float]:
    """The bootstrap of a scalar aggregate `func` of a [runs, tasks] matrix -> (point, low, high)."""
    point, ci = bootstrap(scores, lambda x: np.array([func(x)]), reps, seed)
    return float(point[0]), float(ci[0, 0]), float(ci[1, 0])


def task_table(runs: dict, reps: int = 2000, seed: int = 0) -> list[dict]:
    rows, paper = [], paper_scores()
    for (suite, task, algorithm), seeds in sorted(runs.items()):
        scores = np.array([final_score(r, headline_metric(suite)) for r in seeds])
        mean, low, high = interval(scores[:, None], metrics.aggregate_mean, reps, seed)
        paper_mean, paper_std = paper.get((suite, task, algorithm), (None, None))
        rows.append({"suite": suite, "task": task, "algorithm": algorithm, "seeds": len(scores),
                     "steps": min(int(curve(r, headline_metric(suite))[0][-1]) for r in seeds), "mean": mean,
                     "ci_low": low, "ci_high": high, "scores": scores.tolist(), "paper_mean": paper_mean,
                     "paper_std": paper_std})
    return rows


def single_algorithm_tasks(rows: list[dict]) -> dict:
    """{(suite, task): its one algorithm} for every task only one algorithm ran: normalised by its own lowest
    and highest score, its worst seed would be 0 and its best 1 whatever they scored, so the suite's tables
    and plots leave such a task out."""
    by_task = defaultdict(set)
    for row in rows:
        by_task[row["suite"], row["task"]].add(row["algorithm"])
    return {key: next(iter(algs)) for key, algs in by_task.items() if len(algs) == 1}


def normalise(rows: list[dict]) -> dict:
    """Min-max normalisation per task over every algorithm's per-seed final scores ->
    {suite: {algorithm: [runs, tasks] matrix}} (runs cut to the fewest seeds any task has); tasks only one
    algorithm ran are left out (single_algorithm_tasks)."""
    alone = single_algorithm_tasks(rows)
    by_task = defaultdict(list)
    for row in rows:
        if (row["suite"], row["task"]) not in alone:
            by_task[row["suite"], row["task"]].append(row)
    out = defaultdict(lambda: defaultdict(list))
    for (suite, task), task_rows in sorted(by_task.items()):
        low = min(min(r["scores"]) for r in task_rows)
        high = max(max(r["scores"]) for r in task_rows)
        for r in task_rows:
            out[suite][r["algorithm"]].append((np.array(r["scores"]) - low) / max(high - low, 1e-8))
    return {suite: {alg: np.stack([s[:min(map(len, cols))] for s in cols], axis=1) for alg, cols in algs.items()}
            for suite, algs in out.items()}


def single_algorithm_note(suite: str, task: str, algorithm: str) -> str:
    return (f"{suite} {task}: left out of the normalised scores ({suite}.png, suites.md): only {algorithm} ran "
            f"it, and a min-max normalisation over one algorithm only rescales its own seeds (worst 0, best 1), "
            f"which says nothing about how well it did")


def suite_table(rows: list[dict], reps: int = 2000, seed: int = 0) -> list[dict]:
    table = []
    for suite, algorithms in normalise(rows).items():
        for algorithm, matrix in sorted(algorithms.items()):
            iqm, low, high = interval(matrix, metrics.aggregate_iqm, reps, seed)
            table.append({"suite": suite, "algorithm": algorithm, "tasks": matrix.shape[1], "runs": matrix.shape[0],
                          "iqm": iqm, "ci_low": low, "ci_high": high})
    return table


def is_guider(algorithm: str) -> bool:
    """A centralised policy reported beside a learner (drawn dashed)."""
    algorithm = split_point(algorithm)[0]
    return algorithm.endswith("_guider") or algorithm in PLAIN_NAMES.values()


def split_point(algorithm: str) -> tuple[str, dict[str, str]]:
    """A grid point's name -> (the script's policy name, {flag: value as written}); no grid: (name, {}).
    `magpo_sable--alpha=1--delta=1.5` -> ("magpo_sable", {"alpha": "1", "delta": "1.5"}), and the same from the
    older `magpo_sable[alpha=1,delta=1.5]` (or `[alpha=1;delta=1.5]`). Unambiguous: no policy name, flag or `%g`
    value holds "--" (a negative value follows "=": `--alpha=-1`), nor "," ";" or "=" in the bracketed form."""
    if "--" in algorithm:
        base, *items = algorithm.split("--")
        if base and all("=" in item for item in items):
            return base, dict(item.split("=", 1) for item in items)
    if algorithm.endswith("]") and "[" in algorithm:
        base, point = algorithm[:-1].split("[", 1)
        items = re.split("[,;]", point)
        if base and all("=" in item for item in items):
            return base, dict(item.split("=", 1) for item in items)
    return algorithm, {}


def join_point(base: str, point: dict[str, str]) -> str:
    """split_point's inverse, in the current form: ("magpo_sable", {"alpha": "1"}) -> `magpo_sable--alpha=1`."""
    return base + "".join(f"--{flag}={value}" for flag, value in point.items())


def grid_rows(task_rows: list[dict]) -> dict:
    """{(suite, task, script's policy name): [task rows of its grid points, in the grid's order]}."""
    grids = defaultdict(list)
    for row in task_rows:
        base, point = split_point(row["algorithm"])
        if point:
            grids[row["suite"], row["task"], base].append({**row, "point": point})
    return dict(grids)


def grid_markdown(grids: dict) -> str:
    lines = []
    for (suite, task, base), rows in sorted(grids.items()):
        flags = list(rows[0]["point"])
        rows = sorted(rows, key=lambda r: [float(r["point"][f]) for f in flags])
        best = max(rows, key=lambda r: r["mean"])
        lines += [f"### {suite} {task}: {base}", "",
                  "| " + " | ".join(flags) + " | seeds | steps per seed | final score (95% CI) |",
                  "| " + " | ".join("---:" for _ in flags) + " | ---: | ---: | --- |"]
        for r in rows:
            score = f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            lines.append("| " + " | ".join(r["point"][f] for f in flags) + f" | {r['seeds']} | {r['steps']:,} | "
                         + (f"**{score}**" if r is best else score) + " |")
        if len(flags) == 2:  # the matrix a delta x lambda sweep is read from
            first = sorted({r["point"][flags[0]] for r in rows}, key=float)
            second = sorted({r["point"][flags[1]] for r in rows}, key=float)
            means = {(r["point"][flags[0]], r["point"][flags[1]]): r["mean"] for r in rows}
            lines += ["", f"Mean final score, {flags[0]} (rows) x {flags[1]} (columns):", "",
                      f"| {flags[0]} \\ {flags[1]} | " + " | ".join(second) + " |",
                      "| --- |" + " ---: |" * len(second)]
            lines += [f"| {a} | " + " | ".join(f"{means[a, b]:.2f}" if (a, b) in means else "-" for b in second)
                      + " |" for a in first]
        lines.append("")
    return "\n".join(lines)


def plot_grids(runs: dict, grids: dict, out: str) -> list[str]:
    """Per grid: the final score over the points (heatmap for two flags, bars otherwise) and the curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for (suite, task, base), rows in sorted(grids.items()):
        flags = list(rows[0]["point"])
        rows = sorted(rows, key=lambda r: [float(r["point"][f]) for f in flags])
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        if len(flags) == 2:
            first = sorted({r["point"][flags[0]] for r in rows}, key=float)
            second = sorted({r["point"][flags[1]] for r in rows}, key=float)
            matrix = np.full((len(first), len(second)), np.nan)
            for r in rows:
                matrix[first.index(r["point"][flags[0]]), second.index(r["point"][flags[1]])] = r["mean"]
            image = left.imshow(matrix, cmap="viridis", aspect="auto")
            for (i, j), value in np.ndenumerate(matrix):
                left.text(j, i, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
            left.set(xticks=range(len(second)), xticklabels=second, yticks=range(len(first)), yticklabels=first,
                     xlabel=flags[1], ylabel=flags[0])
            fig.colorbar(image, ax=left)
        else:
            labels = [join_point("", r["point"]) for r in rows]
            means = np.array([r["mean"] for r in rows])
            errors = np.array([[r["mean"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean"] for r in rows]])
            left.bar(range(len(rows)), means, yerr=errors, capsize=3)
            left.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        left.set_title(f"{base}: final {headline_metric(suite)} (mean over seeds)")
        for r in rows:
            seeds = runs[suite, task, r["algorithm"]]
            curves = [curve(run, headline_metric(suite)) for run in seeds]
            n = min(len(c[1]) for c in curves)
            right.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0), "--" if is_guider(base) else "-",
                       label=join_point("", r["point"]))
        right.set(title=f"{suite} {task}: {base}, every point", xlabel="environment steps",
                  ylabel=headline_metric(suite))
        right.legend(fontsize=6)
        fig.tight_layout()
        path = os.path.join(out, f"{suite}__{task}__{base}_grid.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def plot(runs: dict, out: str, reps: int = 500, seed: int = 0) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, ax, title, xlabel, ylabel, file_name):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, file_name), dpi=110)
        plt.close(fig)
        files.append(os.path.join(out, file_name))

    files, by_task = [], defaultdict(dict)
    for (suite, task, algorithm), seeds in runs.items():
        if not split_point(algorithm)[1]:  # grid points: plot_grids
            by_task[suite, task][algorithm] = seeds
    suite_curves = defaultdict(lambda: defaultdict(list))  # suite -> algorithm -> per-task [runs, checkpoints]
    for (suite, task), algorithms in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        task_curves = {}
        for algorithm, seeds in sorted(algorithms.items()):
            curves = [curve(r, headline_metric(suite)) for r in seeds]
            n = min(len(c[1]) for c in curves)
            steps, values = curves[0][0][:n], np.stack([c[1][:n] for c in curves])
            task_curves[algorithm] = values
            # 95% band per checkpoint: rliable's bootstrap over seeds of a [runs, 1 task, checkpoints] array.
            _, ci = bootstrap(values[:, None, :], lambda x: x.mean(axis=(0, 1)), reps, seed)
            line, = ax.plot(steps, values.mean(axis=0), "--" if is_guider(algorithm) else "-",
                            label=f"{algorithm} ({len(seeds)} seeds)")
            ax.fill_between(steps, ci[0], ci[1], color=line.get_color(), alpha=0.2)
        save(fig, ax, f"{suite} {task}", "environment steps", headline_metric(suite), f"{suite}__{task}.png")
        if len(task_curves) < 2:  # normalised over one algorithm: meaningless (single_algorithm_tasks)
            continue
        low = min(v.min() for v in task_curves.values())
        high = max(v.max() for v in task_curves.values())
        for algorithm, values in task_curves.items():
            suite_curves[suite][algorithm].append((values - low) / max(high - low, 1e-8))
    for suite, algorithms in sorted(suite_curves.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for algorithm, per_task in sorted(algorithms.items()):
            runs_n, points = min(v.shape[0] for v in per_task), min(v.shape[1] for v in per_task)
            matrix = np.stack([v[:runs_n, :points] for v in per_task], axis=1)  # [runs, tasks, checkpoints]
            iqm = np.array([metrics.aggregate_iqm(matrix[:, :, i]) for i in range(points)])
            ax.plot(np.arange(1, points + 1), iqm, "--" if is_guider(algorithm) else "-",
                    label=f"{algorithm} ({matrix.shape[1]} tasks)")
        save(fig, ax, f"{suite}: normalised IQM", "checkpoint", "min-max normalised IQM", f"{suite}.png")
    return files


def markdown(task_rows: list[dict], suite_rows: list[dict], notes: list[str] = ()) -> tuple[str, str]:
    def paper(r):
        if r["paper_mean"] is None:
            return "-"
        return f"{r['paper_mean']:.2f}" + (f" ± {r['paper_std']:.2f}" if r["paper_std"] is not None else "")

    tasks = ["| suite | task | algorithm | seeds | steps per seed | final score (95% CI) | Table 1 (20M steps, 10 seeds) |",
             "| --- | --- | --- | ---: | ---: | --- | --- |"]
    tasks += [f"| {r['suite']} | {r['task']} | {r['algorithm']} | {r['seeds']} | {r['steps']:,} | {r['mean']:.2f} "
              f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] | {paper(r)} |" for r in task_rows]
    suites = ["| suite | algorithm | tasks | runs | normalised IQM (95% CI) |", "| --- | --- | ---: | ---: | --- |"]
    suites += [f"| {r['suite']} | {r['algorithm']} | {r['tasks']} | {r['runs']} | {r['iqm']:.3f} "
               f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] |" for r in suite_rows]
    if notes:
        suites += [""] + [f"- {note}." for note in notes]
    return "\n".join(tasks) + "\n", "\n".join(suites) + "\n"


def output_files(runs: dict) -> list[str]:
    """The names of every file main would write for these runs (tables first), to check before writing any."""
    tables = ["tasks.md", "tasks.json", "suites.md", "suites.json"]
    grids = sorted({(suite, task, split_point(alg)[0]) for suite, task, alg in runs if split_point(alg)[1]})
    if grids:
        tables += ["grid.md", "grid.json"]
    plain = {(suite, task) for suite, task, alg in runs if not split_point(alg)[1]}
    plots = [f"{suite}__{task}.png" for suite, task in sorted(plain)] + sorted({f"{suite}.png" for suite, _ in plain})
    return tables + plots + [f"{suite}__{task}__{base}_grid.png" for suite, task, base in grids]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", nargs="?", default="runs",
                        help="the folder that holds the run folders (a script's --output-dir)")
    parser.add_argument("--out", default=None, help="where the tables and plots go (default: RUNS_DIR/aggregate)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace tables and plots already in --out (without it, main refuses to)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    opts = parser.parse_args(argv)
    out = opts.out if opts.out is not None else os.path.join(opts.runs_dir, "aggregate")
    runs = find_runs(opts.runs_dir)
    there = [name for name in output_files(runs) if os.path.exists(os.path.join(out, name))]
    if there and not opts.overwrite:
        listed = ", ".join(there[:4]) + (f" and {len(there) - 4} more" if len(there) > 4 else "")
        sys.exit(f"error: {out} already holds {listed}: pass --overwrite to replace them, or --out another folder")
    os.makedirs(out, exist_ok=True)
    task_rows = task_table(runs, opts.reps)
    plain_rows = [r for r in task_rows if not split_point(r["algorithm"])[1]]
    notes = [single_algorithm_note(suite, task, alg)
             for (suite, task), alg in sorted(single_algorithm_tasks(plain_rows).items())]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    suite_rows = suite_table(plain_rows, opts.reps)
    tasks_md, suites_md = markdown(task_rows, suite_rows, notes)
    outputs = [("tasks", tasks_md, task_rows), ("suites", suites_md, suite_rows)]
    grids = grid_rows(task_rows)
    if grids:
        outputs.append(("grid", grid_markdown(grids), [r for rows in grids.values() for r in rows]))
    for name, text, data in outputs:
        with open(os.path.join(out, f"{name}.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1)
    files = plot(runs, out) + plot_grids(runs, grids, out)
    print("\n".join(text for _, text, _ in outputs) + "\n" + "\n".join(files))


if __name__ == "__main__":
    main()
