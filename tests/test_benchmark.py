"""benchmark/run.py: which of the paper's tuned values each script gets, and a run made through it."""
import csv
import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import REFERENCE, ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmark"))
import run  # noqa: E402
import sps  # noqa: E402


def paper_row(system, task):
    with open(os.path.join(REFERENCE, "paper_hyperparameters.csv")) as f:
        return next(r for r in csv.DictReader(f) if r["system_name"] == system and r["task"] == task)


def test_magpo_sable_gets_the_magpo_row_and_plain_sable_the_sable_row():
    values, source = run.paper_values("magpo_sable", "coordsum-3x10")
    row = paper_row("magpo", "3x10")
    assert source == "magpo row"
    assert values == {"num_minibatches": int(row["num_minibatches"]), "max_grad_norm": float(row["max_grad_norm"]),
                      "ppo_epochs": int(row["ppo_epochs"]), "clip_eps": float(row["clip_eps"]),
                      "ent_coef": float(row["ent_coef"]), "embed_dim": int(row["n_embd"]), "n_head": int(row["n_head"]),
                      "n_block": int(row["n_block"]), "decay_scaling_factor": float(row["decay_scaling_factor"]),
                      "alpha": float(row["alpha"]), "delta": float(row["delta"]), "lr": float(row["critic_lr"])}
    plain, source = run.paper_values("magpo_sable", "coordsum-3x10", plain=True)
    sable = paper_row("sable", "3x10")
    assert source == "sable row"
    assert plain["embed_dim"] == int(sable["n_embd"]) and plain["ppo_epochs"] == int(sable["ppo_epochs"])
    assert plain["delta"] == math.inf and plain["alpha"] == 0.0


def test_rows_for_the_other_scripts():
    # ctds: its teacher is Sable -> Sable's CoordSum row; elsewhere MAGPO's row without delta and alpha
    # (the paper tuned only those two on top of Sable's values).
    assert run.paper_values("ctds", "coordsum-3x10")[1] == "sable row"
    values, source = run.paper_values("ctds", "rware-tiny-2ag")
    assert source == "magpo row without delta and alpha"
    assert values["embed_dim"] == int(paper_row("magpo", "tiny-2ag")["n_embd"]) and "delta" not in values
    # magpo_mat: MAT's row on CoordSum, its defaults where the paper has no MAT row.
    assert run.paper_values("magpo_mat", "coordsum-3x10")[0]["n_head"] == int(paper_row("mat", "3x10")["n_head"])
    assert run.paper_values("magpo_mat", "rware-tiny-2ag") == ({}, "defaults (no mat row)")
    # ippo keeps its two learning rates.
    values, _ = run.paper_values("ippo", "coordsum-3x10")
    assert values["actor_lr"] == float(paper_row("ippo", "3x10")["actor_lr"]) and "lr" not in values
    assert run.paper_values("ippo", "con-5x5x3a") == ({}, "defaults (no row)")


def test_authors_defaults_apply_what_the_authors_code_ran(capsys):
    # The paper's 8x15 MAGPO row fills only critic_lr (0.001); rec_magpo.py reads actor_lr (default 2.5e-4).
    paper, _ = run.paper_values("magpo_sable", "coordsum-8x15")
    authors, source = run.authors_values("magpo_sable", "coordsum-8x15")
    assert paper["lr"] == float(paper_row("magpo", "8x15")["critic_lr"]) == 0.001
    assert authors["lr"] == 2.5e-4 and authors["gae_lambda"] == 0.95 and authors["vf_coef"] == 0.5
    assert {k: v for k, v in authors.items() if k not in ("lr", "gae_lambda", "vf_coef")} == \
        {k: v for k, v in paper.items() if k != "lr"}
    assert source == "magpo row, the authors' config values"
    assert run.authors_values("magpo_mat", "coordsum-3x10")[0]["lr"] == 5e-4  # mat.yaml's actor_lr
    # IPPO's rows fill both rates, which rec_ippo.py both reads: only lambda and the value coefficient change.
    ippo_paper, ippo_authors = run.paper_values("ippo", "coordsum-3x10")[0], run.authors_values("ippo", "coordsum-3x10")[0]
    assert ippo_authors == {**ippo_paper, "gae_lambda": 0.95, "vf_coef": 0.5}
    run.main(["magpo_sable", "coordsum-8x15", "--authors-defaults", "--print-only"])
    printed = capsys.readouterr().out
    assert "--gae-lambda 0.95" in printed and "--vf-coef 0.5" in printed and "--lr 0.00025" in printed


def test_an_unknown_env_id_gets_the_scripts_own_message(capsys):
    with pytest.raises(SystemExit) as stop:
        run.main(["ippo", "rwaretiny", "--print-only"])
    assert "unknown --env-id 'rwaretiny'" in str(stop.value) and "rware-tiny-2ag" in str(stop.value)


def test_plain_is_refused_for_scripts_without_a_guider_band(capsys):
    with pytest.raises(SystemExit):
        run.main(["ippo", "coordsum-3x10", "--plain"])
    assert "--plain is for magpo_sable and magpo_mat" in capsys.readouterr().err


def test_a_run_through_it_uses_the_paper_values_under_the_users_flags(tmp_path):
    run_dir = run.main(["magpo_sable", "coordsum-3x10", "--plain", "--num-envs", "4", "--rollout-length", "8",
                        "--total-timesteps", "32", "--num-evaluations", "1", "--num-eval-episodes", "2",
                        "--num-minibatches", "2", "--ppo-epochs", "1", "--embed-dim", "8", "--layer-size", "8",
                        "--gru-size", "8", "--output-dir", str(tmp_path)])
    used = json.load(open(os.path.join(run_dir, "args.json")))
    sable = paper_row("sable", "3x10")
    assert used["num_minibatches"] == 2 and used["embed_dim"] == 8  # the user's flags win
    assert used["n_block"] == int(sable["n_block"]) and used["max_grad_norm"] == float(sable["max_grad_norm"])
    assert used["delta"] == math.inf and used["alpha"] == 0.0
    record = json.load(open(os.path.join(run_dir, "benchmark.json")))
    assert record["paper_source"] == "sable row" and record["plain"] is True
    assert len(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines()) == 1


def write_run(runs_dir, name, suite, task, algorithm, finals, curves, plain=False):
    """A run directory as the scripts write it: marl-eval summary.json (and benchmark.json)."""
    metric = "win_rate" if suite == "smax" else "episode_return"
    seeds = {}
    for i, (final, curve) in enumerate(zip(finals, curves)):
        run = {f"step_{j}": {"step_count": 100 * (j + 1), metric: [v, v]} for j, v in enumerate(curve)}
        run["absolute_metrics"] = {metric: [final - 1.0, final + 1.0]}  # mean = final
        seeds[f"seed_{i}"] = run
    os.makedirs(os.path.join(runs_dir, name))
    with open(os.path.join(runs_dir, name, "summary.json"), "w") as f:
        json.dump({suite: {task: {algorithm: seeds}}}, f)
    if plain:
        with open(os.path.join(runs_dir, name, "benchmark.json"), "w") as f:
            json.dump({"plain": True}, f)


def test_aggregate_tables_and_plots(tmp_path):
    import aggregate

    runs_dir, out = str(tmp_path / "runs"), str(tmp_path / "results")
    write_run(runs_dir, "a", "coordsum", "3x10", "ippo", [1.0, 2.0, 3.0], [[0, 1], [0, 2], [0, 3]])
    write_run(runs_dir, "b", "coordsum", "3x10", "magpo_sable_guider", [4.0, 5.0, 6.0], [[1, 4], [1, 5], [1, 6]],
              plain=True)
    aggregate.main([runs_dir, "--out", out, "--reps", "300"])
    tasks = {r["algorithm"]: r for r in json.load(open(os.path.join(out, "tasks.json")))}
    assert set(tasks) == {"ippo", "sable"}  # a --plain run's guider is plain Sable
    assert tasks["ippo"]["mean"] == pytest.approx(2.0) and tasks["sable"]["mean"] == pytest.approx(5.0)
    # Beside each, Table 1's figure (plain Sable is the paper's Sable column) and the steps trained.
    assert (tasks["ippo"]["paper_mean"], tasks["ippo"]["paper_std"]) == (107.08, 0.39)
    assert (tasks["sable"]["paper_mean"], tasks["sable"]["paper_std"]) == (133.04, 4.02)
    assert tasks["ippo"]["steps"] == 200
    assert "| coordsum | 3x10 | ippo | 3 | 200 | 2.00 [" in open(os.path.join(out, "tasks.md")).read()
    for r in tasks.values():  # a bootstrap CI of a mean lies within the seeds' range and around the mean
        assert min(r["scores"]) <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= max(r["scores"])
    # Normalised per task by the lowest (1) and highest (6) score: ippo [0, .2, .4], sable [.6, .8, 1].
    suites = {r["algorithm"]: r for r in json.load(open(os.path.join(out, "suites.json")))}
    assert suites["ippo"]["iqm"] == pytest.approx(0.2) and suites["sable"]["iqm"] == pytest.approx(0.8)
    for name in ("coordsum__3x10.png", "coordsum.png", "tasks.md", "suites.md"):
        assert os.path.getsize(os.path.join(out, name)) > 100


def test_aggregate_gives_the_same_confidence_intervals_every_time(tmp_path):
    """The bootstrap is seeded: the same runs aggregated twice, whatever else drew random numbers in between,
    give the same tables to the last digit (rliable 1.2 alone ignores its seed)."""
    import aggregate

    runs_dir = str(tmp_path / "runs")
    write_run(runs_dir, "a", "coordsum", "3x10", "ippo", [1.0, 2.0, 7.0, 3.0, 10.0], [[0, 1]] * 5)
    write_run(runs_dir, "b", "coordsum", "3x10", "mappo", [4.0, 0.0, 6.0, 9.0, 2.0], [[1, 4]] * 5)
    tables = []
    for i in range(2):
        np.random.rand(17 * (i + 1))  # the global generator left in another state
        out = str(tmp_path / f"results{i}")
        aggregate.main([runs_dir, "--out", out, "--reps", "300"])
        tables.append([open(os.path.join(out, name)).read() for name in ("tasks.md", "suites.md")])
    assert tables[0] == tables[1]
    tasks = {r["algorithm"]: r for r in json.load(open(os.path.join(out, "tasks.json")))}
    assert tasks["ippo"]["ci_low"] < tasks["ippo"]["mean"] < tasks["ippo"]["ci_high"]  # a real interval


@pytest.mark.parametrize("name", ["{policy}--alpha={alpha}--delta={delta}", "{policy}[alpha={alpha},delta={delta}]"],
                         ids=["current names", "older names"])
def test_aggregate_turns_a_grid_into_per_point_tables_and_a_plot(tmp_path, name):
    """A 2 x 2 delta x lambda grid of magpo_sable (its learner and guider per point) beside plain ippo and mappo:
    a row per point with its values and CI, the best in bold, the learner's mean as a delta x alpha matrix; grid
    points stay out of the suite comparison. Points named as the scripts name them (`magpo_sable--alpha=2--delta=1.2`)
    or as they did before (`magpo_sable[alpha=2,delta=1.2]`, which marl-eval refuses): the tables use the first."""
    import aggregate

    runs_dir, out = str(tmp_path / "runs"), str(tmp_path / "results")
    finals = {("0", "1.2"): 3.0, ("0", "inf"): 1.0, ("2", "1.2"): 7.0, ("2", "inf"): 5.0}
    for (alpha, delta), final in finals.items():
        for policy, shift in (("magpo_sable", 0.0), ("magpo_sable_guider", 10.0)):
            write_run(runs_dir, f"{policy}-{alpha}-{delta}", "coordsum", "3x10",
                      name.format(policy=policy, alpha=alpha, delta=delta),
                      [final + shift - 0.5, final + shift + 0.5], [[0, final + shift]] * 2)
    write_run(runs_dir, "ippo", "coordsum", "3x10", "ippo", [2.0, 2.0], [[0, 2], [0, 2]])
    write_run(runs_dir, "mappo", "coordsum", "3x10", "mappo", [3.0, 3.0], [[0, 3], [0, 3]])
    aggregate.main([runs_dir, "--out", out, "--reps", "300"])
    rows = {(r["algorithm"]): r for r in json.load(open(os.path.join(out, "grid.json")))}
    assert rows["magpo_sable--alpha=2--delta=1.2"]["point"] == {"alpha": "2", "delta": "1.2"}
    assert rows["magpo_sable--alpha=2--delta=1.2"]["mean"] == pytest.approx(7.0)
    assert rows["magpo_sable_guider--alpha=0--delta=inf"]["mean"] == pytest.approx(11.0)
    text = open(os.path.join(out, "grid.md")).read()
    learner = text.split("### coordsum 3x10: magpo_sable\n")[1].split("###")[0]
    assert "| 2 | 1.2 | 2 | 200 | **7.00 [" in learner and learner.count("**") == 2  # the best point, alone
    assert "| alpha \\ delta | 1.2 | inf |" in learner
    assert "| 0 | 3.00 | 1.00 |" in learner and "| 2 | 7.00 | 5.00 |" in learner
    assert [r["algorithm"] for r in json.load(open(os.path.join(out, "suites.json")))] == ["ippo", "mappo"]
    assert len(json.load(open(os.path.join(out, "tasks.json")))) == 10  # every point is a row there too
    for name in ("coordsum__3x10__magpo_sable_grid.png", "coordsum__3x10__magpo_sable_guider_grid.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000


def test_grid_point_names_split_and_join():
    import aggregate

    for name in ("magpo_sable--alpha=1--delta=1.5", "magpo_sable[alpha=1,delta=1.5]", "magpo_sable[alpha=1;delta=1.5]"):
        assert aggregate.split_point(name) == ("magpo_sable", {"alpha": "1", "delta": "1.5"})
    # A negative value, an exponent, a flag with underscores: still one reading.
    assert aggregate.split_point("ippo_guider--ent_coef=1e-05--gamma=-0.5") == \
        ("ippo_guider", {"ent_coef": "1e-05", "gamma": "-0.5"})
    assert aggregate.join_point("ippo_guider", {"ent_coef": "1e-05", "gamma": "-0.5"}) == \
        "ippo_guider--ent_coef=1e-05--gamma=-0.5"
    for plain in ("ippo", "magpo_sable_guider", "a--b", "x[y]"):  # not grid points
        assert aggregate.split_point(plain) == (plain, {})


def test_aggregate_skips_a_run_stopped_before_its_first_checkpoint(tmp_path, capsys):
    import aggregate

    runs_dir = str(tmp_path / "runs")
    write_run(runs_dir, "a", "coordsum", "3x10", "ippo", [1.0, 2.0, 3.0], [[0, 1], [0, 2], [0, 3]])
    empty = os.path.join(runs_dir, "b")  # what a script writes when stopped during its first interval
    os.makedirs(empty)
    json.dump({"coordsum": {"3x10": {"mappo": {"seed_0": {}, "seed_1": {}}}}}, open(os.path.join(empty, "summary.json"), "w"))
    aggregate.main([runs_dir, "--out", str(tmp_path / "results"), "--reps", "100"])
    tasks = json.load(open(tmp_path / "results" / "tasks.json"))
    assert [r["algorithm"] for r in tasks] == ["ippo"]
    assert "skipping 2 seed(s) of mappo" in capsys.readouterr().err


def test_aggregate_given_a_run_folder_names_the_folder_to_give(tmp_path, capsys):
    """A run's own folder (the one holding summary.json) is not what aggregate.py reads: one line says so and
    names the folder above it, instead of "no */summary.json under" a folder that holds one."""
    import aggregate

    runs_dir = tmp_path / "runs"
    write_run(str(runs_dir), "coordsum-3x10__ippo__0__1", "coordsum", "3x10", "ippo", [1.0, 2.0], [[0, 1], [0, 2]])
    run_dir = str(runs_dir / "coordsum-3x10__ippo__0__1")
    with pytest.raises(SystemExit) as stop:
        aggregate.main([run_dir, "--reps", "100"])
    message = str(stop.value)
    assert "\n" not in message and capsys.readouterr().err == ""
    assert message.startswith(f"error: {run_dir} is one run's folder (it holds summary.json)")
    assert message.endswith(f"python benchmark/aggregate.py {os.path.relpath(runs_dir)}")
    assert os.listdir(run_dir) == ["summary.json"]  # nothing written beside it


def test_aggregate_of_runs_stopped_before_their_first_evaluation_says_so_in_one_line(tmp_path, capsys):
    import aggregate

    runs_dir = tmp_path / "runs"
    stopped = runs_dir / "coordsum-3x10__mappo__0__1"
    stopped.mkdir(parents=True)  # what a script writes when stopped during its first interval
    json.dump({"coordsum": {"3x10": {"mappo": {"seed_0": {}}}}}, open(stopped / "summary.json", "w"))
    with pytest.raises(SystemExit) as stop:
        aggregate.main([str(runs_dir), "--reps", "100"])
    message = str(stop.value)
    assert "\n" not in message and capsys.readouterr().err == ""  # no "skipping" note before it
    assert message == (f"error: nothing to aggregate under {runs_dir}: every run there stopped before its first "
                       f"evaluation ({stopped}: 1 seed(s) of mappo)")
    with pytest.raises(SystemExit) as stop:  # and a folder with no run at all
        aggregate.main([str(tmp_path), "--reps", "100"])
    assert str(stop.value) == f"error: no run under {tmp_path}: none of its folders holds a summary.json"


def test_aggregate_writes_to_a_folder_of_its_own_and_overwrites_only_when_told(tmp_path, monkeypatch):
    """By default the tables go to RUNS_DIR/aggregate, not results/; tables already in --out (the committed
    results/, say) are replaced only with --overwrite, and without it one line names the flag."""
    import aggregate

    monkeypatch.chdir(tmp_path)
    write_run("runs", "a", "coordsum", "3x10", "ippo", [1.0, 2.0, 3.0], [[0, 1], [0, 2], [0, 3]])
    write_run("runs", "b", "coordsum", "3x10", "mappo", [2.0, 3.0, 4.0], [[0, 2], [0, 3], [0, 4]])
    os.makedirs("results")
    committed = {"tasks.md": "committed tasks\n", "coordsum__3x10.png": "committed plot"}
    for name, text in committed.items():
        open(os.path.join("results", name), "w").write(text)
    aggregate.main(["runs", "--reps", "100"])
    assert {"tasks.md", "suites.md", "coordsum__3x10.png"} <= set(os.listdir(os.path.join("runs", "aggregate")))
    with pytest.raises(SystemExit) as stop:
        aggregate.main(["runs", "--out", "results", "--reps", "100"])
    assert str(stop.value) == ("error: results already holds tasks.md, coordsum__3x10.png: pass --overwrite to "
                               "replace them, or --out another folder")
    assert sorted(os.listdir("results")) == sorted(committed)  # nothing written, nothing replaced
    assert all(open(os.path.join("results", name)).read() == text for name, text in committed.items())
    with pytest.raises(SystemExit) as stop:  # its own folder too, the second time
        aggregate.main(["runs", "--reps", "100"])
    assert "--overwrite" in str(stop.value) and "\n" not in str(stop.value)
    aggregate.main(["runs", "--out", "results", "--overwrite", "--reps", "100"])
    assert "| coordsum | 3x10 | ippo | 3 | 200 | 2.00 [" in open(os.path.join("results", "tasks.md")).read()


def test_aggregate_leaves_out_a_normalisation_over_one_algorithm_and_says_why(tmp_path, capsys):
    """One algorithm per task: normalised by its own lowest and highest score its seeds would become 0 and 1
    (IQM 0.5, whatever they scored): no such row, and a line per task says why, on the terminal and in suites.md."""
    import aggregate

    runs_dir, out = str(tmp_path / "runs"), str(tmp_path / "out")
    write_run(runs_dir, "a", "coordsum", "3x10", "ippo", [1.0, 2.0, 3.0], [[0, 1], [0, 2], [0, 3]])
    write_run(runs_dir, "b", "coordsum", "3x30", "ippo", [5.0, 6.0, 9.0], [[0, 5], [0, 6], [0, 9]])
    write_run(runs_dir, "c", "rware", "tiny-2ag", "mappo", [0.0, 0.5, 1.0], [[0, 0], [0, 1], [0, 1]])
    write_run(runs_dir, "d", "rware", "tiny-2ag", "ippo", [0.0, 1.0, 2.0], [[0, 0], [0, 1], [0, 2]])
    aggregate.main([runs_dir, "--out", out, "--reps", "100"])
    err = capsys.readouterr().err.splitlines()
    why = ("left out of the normalised scores (coordsum.png, suites.md): only ippo ran it, and a min-max "
           "normalisation over one algorithm only rescales its own seeds (worst 0, best 1), which says nothing "
           "about how well it did")
    assert err == [f"note: coordsum 3x10: {why}", f"note: coordsum 3x30: {why}"]
    suites = json.load(open(os.path.join(out, "suites.json")))
    assert [(r["suite"], r["algorithm"]) for r in suites] == [("rware", "ippo"), ("rware", "mappo")]
    text = open(os.path.join(out, "suites.md")).read()
    assert f"- coordsum 3x10: {why}.\n- coordsum 3x30: {why}.\n" in text and "| coordsum |" not in text
    assert not os.path.exists(os.path.join(out, "coordsum.png")) and os.path.exists(os.path.join(out, "rware.png"))
    assert os.path.exists(os.path.join(out, "coordsum__3x10.png"))  # the task's own curves stay


def test_sps_gives_both_sides_the_same_paper_row():
    # Plain MAT: our Args get delta=inf, alpha=0; their mat.py gets no alpha/clip_gpo (it has neither) and its
    # network keys sit one level higher than Sable's.
    ours, theirs, source = sps.paper_hparams("mat", "coordsum-3x10")
    row = paper_row("mat", "3x10")  # the file keeps MAT's one learning rate under critic_lr
    assert source == "mat row" and ours["delta"] == math.inf and ours["alpha"] == 0.0
    assert f"network.embed_dim={int(float(row['n_embd']))}" in theirs
    assert f"system.actor_lr={float(row['critic_lr'])}" in theirs and ours["lr"] == float(row["critic_lr"])
    assert not any(t.startswith(("system.alpha", "system.clip_gpo", "network.net_config")) for t in theirs)
    # MAGPO: its delta is their clip_gpo, and Sable's network keys are under net_config.
    ours, theirs, _ = sps.paper_hparams("magpo_sable", "coordsum-3x10")
    row = paper_row("magpo", "3x10")
    assert f"system.clip_gpo={float(row['delta'])}" in theirs and ours["delta"] == float(row["delta"])
    assert f"network.net_config.n_block={int(float(row['n_block']))}" in theirs


def test_sps_table_ratios_and_a_failed_authors_run():
    rows = [{"kind": "env", "env_id": "coordsum-3x10", "sps": 400_000},
            {"kind": "ours", "script": "ippo", "env_id": "coordsum-3x10", "sps": 6_000, "compile_s": 7.0, "peak_host_mib": 800},
            {"kind": "authors", "script": "ippo", "env_id": "coordsum-3x10", "sps": 2_400},
            {"kind": "ours", "script": "sable", "env_id": "coordsum-3x10", "sps": 1_000, "compile_s": 18.0,
             "peak_host_mib": 900, "values": "sable row"},
            {"kind": "authors", "script": "sable", "env_id": "coordsum-3x10", "error": "exit 1"},
            {"kind": "ours", "script": "magpo_sable", "env_id": "coordsum-3x10", "sps": 1_200, "compile_s": 20.0,
             "peak_host_mib": 900, "values": "magpo row"},
            {"kind": "authors", "script": "magpo_sable", "env_id": "coordsum-3x10", "error": "timed out",
             "timeout_s": 3600, "env_steps": 98_304}]
    lines = sps.table(rows, ["ippo", "sable", "magpo_sable"], ["coordsum-3x10"]).splitlines()
    ippo, sable, magpo = (line.split(" | ") for line in lines[2:])
    assert ippo[3] == "6,000" and ippo[7] == "1.5%" and ippo[8] == "2,400" and ippo[9] == "2.50x |"
    assert sable[2] == "sable row" and sable[8].startswith("failed") and sable[9] == "- |"
    # 98,304 steps not done in 3,600 s: under 27.3 steps/s, so ours at 1,200 is over 1,200 / 27.3 = 43.9x
    assert magpo[8] == "timed out: under 27.3 on average over 3,600 s" and magpo[9] == "over 43.9x |"


def test_sps_before_and_after_table():
    """--baseline: each cell shows the other checkout's figure beside ours, their ratio and each side's spread."""
    rows = [{"kind": "env", "env_id": "coordsum-3x10", "sps": 400_000, "side": "before"},
            {"kind": "env", "env_id": "coordsum-3x10", "sps": 500_000, "side": "after"},
            {"kind": "ours", "script": "ippo", "env_id": "coordsum-3x10", "sps": 2_000, "sps_repeats": [1_900, 2_000, 2_100],
             "compile_s": 7.0, "peak_host_mib": 800, "values": "ippo row", "side": "before"},
            {"kind": "ours", "script": "ippo", "env_id": "coordsum-3x10", "sps": 3_000, "sps_repeats": [3_000, 2_950, 3_010],
             "compile_s": 6.5, "peak_host_mib": 1_200, "values": "ippo row", "side": "after"},
            {"kind": "ours", "script": "mappo", "env_id": "coordsum-3x10", "sps": 1_000, "compile_s": 7.0,
             "peak_host_mib": 800, "side": "after"}]  # no before: left out
    lines = sps.compare_table(rows, ["ippo", "mappo"], ["coordsum-3x10"]).splitlines()
    assert len(lines) == 4
    env, ippo = (line.split(" | ") for line in lines[2:])
    assert env[3:6] == ["400,000", "500,000", "1.25x"] and env[8] == "-"
    assert ippo[2:10] == ["ippo row", "2,000", "3,000", "1.50x", "1,900-2,100", "2,950-3,010", "7.0, 6.5", "800, 1,200 |"]


def test_sps_authors_run_that_times_out_becomes_a_bound(tmp_path):
    """A stand-in for the authors' python that finishes its first interval and then never ends:
    measure_authors returns the steps it asked for, the timeout and the interval it saw finish,
    which the table turns into an upper bound on their speed."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho '[TIMING] interval 0 elapsed_s=12.5 env_steps=256 sps=20.5'\nexec sleep 30\n")
    python.chmod(0o755)
    row = sps.measure_authors("magpo_sable", "coordsum-3x10", str(tmp_path), str(tmp_path / "venv"), num_envs=8,
                              rollout_length=16, updates=2, intervals=3, timeout=1, hydra_overrides=[])
    assert row["timeout_s"] == 1 and row["env_steps"] == 8 * 16 * 2 * 3 and "sps" not in row
    assert row["intervals_done_s"] == [12.5]
    assert sps.authors_cell(row) == ("timed out: under 768.0 on average over 1 s (1 of 3 intervals done, "
                                     "the first, compilation included, in 12.5 s)")
    python.write_text("#!/bin/sh\nexec sleep 30\n")
    row = sps.measure_authors("magpo_sable", "coordsum-3x10", str(tmp_path), str(tmp_path / "venv"), num_envs=8,
                              rollout_length=16, updates=2, intervals=3, timeout=1, hydra_overrides=[])
    assert row["intervals_done_s"] == [] and sps.authors_cell(row).endswith("(0 of 3 intervals done)")


def test_cpu_model_reads_name_family_and_model(tmp_path):
    """Different AMD EPYC models can all call themselves "AMD EPYC" in a VM; the family
    and model numbers tell them apart."""
    info = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    info.write_text(block.format(0) + "\n" + block.format(1).replace("26", "25"))
    assert sps.cpu_model(str(info)) == "AMD EPYC (family 26, model 2)"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert sps.cpu_model(str(info)) == "Some CPU"
    assert sps.cpu_model(str(tmp_path / "absent")) == "unknown CPU"


def test_sps_results_name_the_cpu(tmp_path):
    """The ratios to the authors' code differ between CPUs (README, "On AMD EPYCs"), so the
    written results say which CPU they came from."""
    import argparse
    opts = argparse.Namespace(num_envs=64, rollout_length=128, updates=3, scripts=["ippo"], env_ids=["coordsum-3x10"],
                              out=str(tmp_path), name="t")
    rows = [{"kind": "ours", "script": "ippo", "env_id": "coordsum-3x10", "sps": 6_000, "compile_s": 7.0,
             "peak_host_mib": 800, "device": "cpu"}]
    sps.write_results(opts, rows)
    model = sps.cpu_model()
    assert model in open(tmp_path / "t.md").readline()
    assert json.load(open(tmp_path / "t.json"))["cpu"] == model


def test_sps_baseline_that_is_not_a_checkout_fails_at_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sps.py", "--baseline", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        sps.main()
    assert f"--baseline {tmp_path}: not a checkout of this repository" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # nothing measured, nothing written


def test_sps_figure_past_its_timeout_is_recorded_not_lost(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexec sleep 30\n")
    python.chmod(0o755)
    row = sps.in_subprocess("magpo_sable", "coordsum-3x10", "{}", python=str(python), timeout=0.5)
    assert row == {"kind": "ours", "script": "magpo_sable", "env_id": "coordsum-3x10", "timeout_s": 0.5}
    before = {**row, "side": "before"}
    after = {"kind": "ours", "script": "magpo_sable", "env_id": "coordsum-3x10", "sps": 600, "compile_s": 40.0,
             "peak_host_mib": 900, "side": "after"}
    line = sps.compare_table([before, after], ["magpo_sable"], ["coordsum-3x10"]).splitlines()[2].split(" | ")
    assert line[3:6] == ["not done in 0 s", "600", "-"] and line[8] == "-, 40.0"
