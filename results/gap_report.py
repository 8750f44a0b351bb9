"""The imitation gap at CPU scale: per-seed table, plateau check, the paper's three claims with bootstrap CIs,
and the learning curves, from the runs of `bash results/reproduce.sh gap`.

    python results/gap_report.py results/gap/runs --out results/gap

Reads every run folder below RUNS (summary.json, metrics.jsonl, benchmark.json) and writes gap.md, the tasks
side by side (final scores, then the claims), and per task:
  gap_<task>.md / .json   the per-seed table and the claims, each with its verdict;
  gap_<task>.png          every policy's mean curve over seeds (shaded: its 95% bootstrap CI), learners and
                          students solid, guiders and teachers dashed, the uniform policy dotted.
A policy has plateaued unless it is still rising: per seed, its last checkpoint minus the one two before it;
still rising when the mean of that rise over seeds has a 95% bootstrap CI above 0 that reaches RISE_MARGIN (1
point of return). The verdicts are mechanical, on two 95% intervals of each difference: the percentile bootstrap
(seeds resampled within each method, 10,000 times), which is narrow on 5 seeds (it cannot reach beyond the seeds'
own range), and the t-interval (Student's for one group, Welch's for two). A difference whose intervals both lie
above 0 "holds", both below 0 "does not hold", and one where either includes 0 is "not resolved (CI includes 0)":
these seeds cannot tell the two apart, which is not the same as showing them level.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmark"))
sys.path.insert(0, os.path.join(ROOT, "results"))
from aggregate import curve, final_score  # noqa: E402

METRIC = "episode_return"
# The policies compared: (the run's script, plain or not, summary.json's name) -> how the tables say it.
POLICIES = {
    ("magpo_sable", False, "magpo_sable"): "MAGPO learner",
    ("magpo_sable", False, "magpo_sable_guider"): "MAGPO guider",
    ("ctds", False, "ctds"): "CTDS student",
    ("ctds", False, "ctds_guider"): "CTDS teacher",
    ("magpo_sable", True, "magpo_sable_guider"): "Sable",
    ("ippo", False, "ippo"): "IPPO",
    ("mappo", False, "mappo"): "MAPPO",
}
CENTRALISED = {"MAGPO guider", "CTDS teacher", "Sable"}
REPS = 10_000
# A rise shown to be smaller than this (its CI's upper end below it) is a plateau: 1 point of return, 1% of the
# 100 a fixed strategy earns. Without a margin, a policy that creeps towards its limit by a tenth of a point is
# "rising" for as long as its seeds agree closely enough to see it, however long it trains.
RISE_MARGIN = 1.0


def load(runs_dir: str) -> dict:
    """-> {env_id: {policy: {"runs": per-seed summary dicts, "outside_band": per-seed means (MAGPO's learner)}}}."""
    tasks: dict = {}
    for summary_path in sorted(glob.glob(os.path.join(runs_dir, "*", "summary.json"))):
        run_dir = os.path.dirname(summary_path)
        info_path = os.path.join(run_dir, "benchmark.json")
        if not os.path.exists(info_path):
            continue  # unfinished: benchmark/run.py writes benchmark.json last
        info = json.load(open(info_path))
        records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        for _suite, by_task in json.load(open(summary_path)).items():
            for algorithm, seeds in next(iter(by_task.values())).items():
                name = POLICIES.get((info["script"], info["plain"], algorithm))
                if name is None:
                    continue
                # Several runs of one method on one task pool their seeds, as aggregate.py pools them.
                entry = tasks.setdefault(info["env_id"], {}).setdefault(
                    name, {"runs": [], "outside_band": []}
                )
                entry["runs"] += list(seeds.values())
                if (
                    name == "MAGPO learner"
                ):  # the share of probability ratios outside [1/delta, delta], per seed
                    band = np.mean([r["outside_band"] for r in records if "outside_band" in r], axis=0)
                    entry["outside_band"] += [float(x) for x in band]
    return tasks


def bootstrap_mean_difference(a, b=None, reps: int = REPS, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) (or mean(a)), 95% percentile bootstrap CI, seeds resampled within each group."""
    rng = np.random.default_rng(seed)
    a = np.asarray(a, float)
    draws = a[rng.integers(0, len(a), (reps, len(a)))].mean(1)
    point = a.mean()
    if b is not None:
        b = np.asarray(b, float)
        draws = draws - b[rng.integers(0, len(b), (reps, len(b)))].mean(1)
        point -= b.mean()
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(point), float(low), float(high)


def t_interval_mean_difference(a, b=None, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) (or mean(a)) with its t-interval: Student's over len(a) - 1 degrees of freedom for one
    group, Welch's (unequal variances, Welch-Satterthwaite degrees of freedom) for two. Groups with no spread
    give a point; a group of one seed, no interval at all (-inf, inf)."""
    from scipy import stats

    groups = [np.asarray(a, float)] + ([np.asarray(b, float)] if b is not None else [])
    point = groups[0].mean() - (groups[1].mean() if b is not None else 0.0)
    if min(len(g) for g in groups) < 2:
        return float(point), -np.inf, np.inf
    parts = [g.var(ddof=1) / len(g) for g in groups]  # each mean's squared standard error
    variance = sum(parts)
    if variance == 0:
        return float(point), float(point), float(point)
    df = variance**2 / sum(v**2 / (len(g) - 1) for v, g in zip(parts, groups))
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(variance)
    return float(point), float(point - half), float(point + half)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "holds"
    if high < 0:
        return "does not hold"
    return "not resolved (CI includes 0)"


def claims(scores: dict) -> list[dict]:
    """The paper's three claims (Sec. 3 and Table 1's CoordSum block) on per-seed final scores."""
    out = []

    def add(text, a, b):
        point, low, high = bootstrap_mean_difference(a, b)
        _, t_low, t_high = t_interval_mean_difference(a, b)
        out.append(
            {
                "claim": text,
                "difference": point,
                "ci_low": low,
                "ci_high": high,
                "t_low": t_low,
                "t_high": t_high,
                # Resolved only where both intervals agree: each must lie on the same side of 0.
                "verdict": verdict(min(low, t_low), max(high, t_high)),
            }
        )

    if {"CTDS teacher", "CTDS student", "MAGPO guider", "MAGPO learner"} <= scores.keys():
        ctds_gap = np.subtract(scores["CTDS teacher"], scores["CTDS student"])
        magpo_gap = np.subtract(scores["MAGPO guider"], scores["MAGPO learner"])
        add(
            "CTDS's student ends below its teacher by more than MAGPO's learner ends below its guider "
            "(teacher - student) - (guider - learner)",
            ctds_gap,
            magpo_gap,
        )
    if {"MAGPO learner", "CTDS student"} <= scores.keys():
        add(
            "MAGPO's learner ends at or above CTDS's student (learner - student)",
            scores["MAGPO learner"],
            scores["CTDS student"],
        )
    for other in ("IPPO", "MAPPO"):
        if {"MAGPO learner", other} <= scores.keys():
            add(
                f"MAGPO's learner ends at or above {other} (learner - {other})",
                scores["MAGPO learner"],
                scores[other],
            )
    return out


def checkpoints(policy: dict) -> np.ndarray:
    """[seeds, checkpoints]: every seed's mean evaluation return at each checkpoint."""
    return np.array([curve(run, METRIC)[1] for run in policy["runs"]])


def plateau(curves: np.ndarray, margin: float = RISE_MARGIN) -> dict:
    """Is the policy still learning? Per seed, its rise over the last three checkpoints (the last one minus the
    one two before it); the policy is still rising when the mean rise's 95% percentile bootstrap CI over seeds
    lies above 0 (the verdicts' bootstrap interval, without their t-interval) and reaches the margin: a rise
    shown to be under it is a plateau. Pairing each seed with itself takes the seeds' offsets out, so a rise
    that every seed shares still counts, and a noisy, flat curve does not."""
    rise, low, high = bootstrap_mean_difference(curves[:, -1] - curves[:, -3])
    return {
        "last3": curves[:, -3:].mean(0).tolist(),
        "rise": rise,
        "rise_ci": [low, high],
        "margin": margin,
        "plateau": bool(low <= 0 or high < margin),
    }


def plateau_words(p: dict) -> str:
    if not p["plateau"]:
        return "no"
    return "yes" if p["rise_ci"][0] <= 0 else f"yes (rise under {p['margin']:g})"


def uniform_score(env_id: str) -> float:
    from uniform_coordsum import uniform_return

    return uniform_return(env_id)[0]


def report(env_id: str, policies: dict, uniform: float) -> tuple[str, dict]:
    order = [name for name in POLICIES.values() if name in policies]
    scores = {name: [final_score(run, METRIC) for run in policies[name]["runs"]] for name in order}
    seeds = min(len(s) for s in scores.values())
    lines = [
        f"### {env_id}: per seed",
        "",
        f"Final score (absolute metric: the best checkpoint's parameters re-evaluated) per seed; the uniform "
        f"random policy scores {uniform:.2f}.",
        "",
        "| seed | " + " | ".join(order) + " | MAGPO gap (guider - learner) | CTDS gap (teacher - student) | "
        "MAGPO outside band |",
        "| ---: |" + " ---: |" * (len(order) + 3),
    ]
    band = policies.get("MAGPO learner", {}).get("outside_band") or None
    for s in range(seeds):
        cells = [f"{scores[name][s]:.2f}" for name in order]
        gaps = [
            f"{scores[c][s] - scores[d][s]:.2f}" if {c, d} <= scores.keys() else ""
            for c, d in (("MAGPO guider", "MAGPO learner"), ("CTDS teacher", "CTDS student"))
        ]
        cells += gaps + [f"{band[s]:.1%}" if band is not None else ""]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"### {env_id}: mean over {seeds} seeds [95% bootstrap CI] and the plateau check",
        "",
        "| policy | final score | last 3 checkpoints (mean over seeds) | rise over them [95% CI] | plateau |",
        "| --- | --- | --- | --- | --- |",
    ]
    curves = {name: checkpoints(policies[name]) for name in order}
    plateaus = {}
    for name in order:
        mean, low, high = bootstrap_mean_difference(scores[name])
        plateaus[name] = plateau(curves[name])
        p = plateaus[name]
        lines.append(
            f"| {name} | {mean:.2f} [{low:.2f}, {high:.2f}] | {', '.join(f'{x:.1f}' for x in p['last3'])} | "
            f"{p['rise']:.2f} [{p['rise_ci'][0]:.2f}, {p['rise_ci'][1]:.2f}] | {plateau_words(p)} |"
        )
    found = claims(scores)
    # The same claims on each of the last three checkpoints' evaluations: a verdict that changes between them
    # depends on where training stopped.
    recent = [claims({name: c[:, k] for name, c in curves.items()}) for k in (-3, -2, -1)]
    lines += [
        "",
        f"### {env_id}: the paper's claims",
        "",
        "| claim | difference [95% bootstrap CI] | 95% t-interval | verdict (both intervals) | the same on the last 3 "
        "checkpoints' evaluations |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, c in enumerate(found):
        then = ", ".join(f"{r[i]['difference']:.2f} {r[i]['verdict'].split(' (')[0]}" for r in recent)
        lines.append(
            f"| {c['claim']} | {c['difference']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] | "
            f"[{c['t_low']:.2f}, {c['t_high']:.2f}] | **{c['verdict']}** | {then} |"
        )
    data = {
        "env_id": env_id,
        "uniform": uniform,
        "scores": scores,
        "plateau": plateaus,
        "claims": found,
        "claims_last3_checkpoints": recent,
        "outside_band": band,
    }
    return "\n".join(lines) + "\n", data


def overview(results: dict) -> str:
    """The sizes side by side: every policy's final score, then every claim's difference and verdict."""
    sizes = sorted(results, key=lambda env_id: [int(n) for n in env_id.split("-")[1].split("x")])
    head = "| | " + " | ".join(sizes) + " |"
    rule = "| --- |" + " --- |" * len(sizes)
    lines = [
        "Final score, mean over seeds [95% bootstrap CI]; * = still rising by the plateau check "
        "(per-size tables: gap_<size>.md).",
        "",
        head.replace("| |", "| policy |", 1),
        rule,
    ]
    for name in POLICIES.values():
        if not any(name in results[size]["scores"] for size in sizes):
            continue
        cells = []
        for size in sizes:
            scores = results[size]["scores"].get(name)
            if scores is None:
                cells.append("")
                continue
            mean, low, high = bootstrap_mean_difference(scores)
            rising = "" if results[size]["plateau"][name]["plateau"] else "*"
            cells.append(f"{mean:.2f} [{low:.2f}, {high:.2f}]{rising}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| uniform random | " + " | ".join(f"{results[size]['uniform']:.2f}" for size in sizes) + " |")
    claims_head = head.replace("| |", "| claim |", 1)
    lines += ["", "The paper's claims: difference [95% bootstrap CI] (95% t-interval), verdict on both intervals.", "",
              claims_head, rule]
    for claim in dict.fromkeys(c["claim"] for size in sizes for c in results[size]["claims"]):
        cells = []
        for size in sizes:
            found = [c for c in results[size]["claims"] if c["claim"] == claim]
            cells.append(
                f"{found[0]['difference']:.2f} [{found[0]['ci_low']:.2f}, {found[0]['ci_high']:.2f}] "
                f"(t: [{found[0]['t_low']:.2f}, {found[0]['t_high']:.2f}]) **{found[0]['verdict']}**" if found else ""
            )
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(env_id: str, policies: dict, uniform: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "MAGPO": "tab:red",
        "CTDS": "tab:blue",
        "Sable": "tab:purple",
        "IPPO": "tab:green",
        "MAPPO": "tab:orange",
    }
    fig, ax = plt.subplots(figsize=(7, 4.2))
    rng = np.random.default_rng(0)
    for name in (n for n in POLICIES.values() if n in policies):
        steps = curve(policies[name]["runs"][0], METRIC)[0]
        curves = checkpoints(policies[name])
        draws = curves[rng.integers(0, len(curves), (2000, len(curves)))].mean(1)
        low, high = np.percentile(draws, [2.5, 97.5], axis=0)
        colour = colours[name.split()[0]]
        ax.plot(steps, curves.mean(0), color=colour, ls="--" if name in CENTRALISED else "-", label=name)
        ax.fill_between(steps, low, high, color=colour, alpha=0.15)
    ax.axhline(uniform, color="grey", ls=":", label="uniform random")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"{env_id}: solid = decentralised, dashed = centralised")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args(argv)
    tasks = load(opts.runs_dir)
    if not tasks:
        sys.exit(f"error: no finished run (with benchmark.json) below {opts.runs_dir}")
    os.makedirs(opts.out, exist_ok=True)
    results = {}
    for env_id, policies in sorted(tasks.items()):
        uniform = uniform_score(env_id)
        text, data = report(env_id, policies, uniform)
        task = env_id.removeprefix("coordsum-")
        with open(os.path.join(opts.out, f"gap_{task}.md"), "w") as f:
            f.write(text)
        with open(os.path.join(opts.out, f"gap_{task}.json"), "w") as f:
            json.dump(data, f, indent=1)
        plot(env_id, policies, uniform, os.path.join(opts.out, f"gap_{task}.png"))
        print(text)
        results[env_id] = data
    text = overview(results)
    with open(os.path.join(opts.out, "gap.md"), "w") as f:
        f.write(text)
    print(text)
    return results


if __name__ == "__main__":
    main()
