"""Many runs in one program (README, "Many runs in one program"): a grid of hyperparameter values times the
seeds trains in one compiled program, and each of its runs computes what the single run with its values and
seed computes; every value is checked before anything compiles, and a flag that changes shapes takes one."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

TINY = dict(env_id="coordsum-3x10", num_envs=8, rollout_length=8, total_timesteps=8 * 8 * 6, num_evaluations=3,
            num_eval_episodes=2, num_minibatches=2, ppo_epochs=1, layer_size=16, gru_size=16)
TINY_GUIDER = dict(embed_dim=16, n_block=1, n_head=1)


def outputs(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, "summary.json")) as f:
        return records, json.load(f)["coordsum"]["3x10"]


def cli(script, flags, out_dir):
    """The script from the command line, with XLA's default optimisation (the fast suite compiles with the
    backend optimisation off, tests/conftest.py, under which a single run's one-trip loop compiles to other
    roundings than a loop over several runs)."""
    flags = [*flags, "--output-dir", str(out_dir)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")}
    return subprocess.Popen([sys.executable, f"{script}.py", *flags], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_grid_point_and_seed_is_the_single_run_with_its_values_and_seed(tmp_path):
    """magpo_sable.py --delta 1.2 inf --alpha 0 1 --num-seeds 2: 8 runs in one program. The point (alpha 1, delta
    inf)'s second seed equals, to the last bit at every checkpoint, the single run with --alpha 1 --delta inf
    --seed 4 (the CPU's loop keeps each run's arithmetic its own)."""
    tiny = ["--env-id", "coordsum-3x10", "--num-envs", "8", "--rollout-length", "8", "--total-timesteps", "384",
            "--num-evaluations", "3", "--num-eval-episodes", "2", "--num-minibatches", "2", "--ppo-epochs", "1",
            "--layer-size", "16", "--gru-size", "16", "--embed-dim", "16", "--n-block", "1", "--n-head", "1"]
    grid = cli("magpo_sable", [*tiny, "--seed", "3", "--num-seeds", "2", "--delta", "1.2", "inf", "--alpha", "0", "1"],
               tmp_path / "grid")
    single = cli("magpo_sable", [*tiny, "--seed", "4", "--delta", "inf", "--alpha", "1"], tmp_path / "single")
    for process in (grid, single):
        assert process.wait(timeout=900) == 0, process.stdout.read()[-3000:]
    records, summary = outputs(tmp_path / "grid" / os.listdir(tmp_path / "grid")[0])
    single_records, single_summary = outputs(tmp_path / "single" / os.listdir(tmp_path / "single")[0])
    names = [f"magpo_sable--alpha={a}--delta={d}" for a in (0, 1) for d in ("1.2", "inf")]
    # metrics.jsonl: a line per point and evaluation, with the point's name and values
    assert [(r["checkpoint"], r["algorithm"]) for r in records] == [(c, n) for c in (1, 2, 3) for n in names]
    assert [(r["alpha"], r["delta"]) for r in records[:4]] == [(0, 1.2), (0, float("inf")), (1, 1.2),
                                                              (1, float("inf"))]
    point = [r for r in records if r["algorithm"] == "magpo_sable--alpha=1--delta=inf"]
    for grid_line, alone in zip(point, single_records, strict=True):
        for key, values in alone.items():
            if isinstance(values, list):  # per seed; wall time and steps/s are the machine's
                assert grid_line[key][1] == values[0], (grid_line["checkpoint"], key)
    # summary.json: the learner and the guider of every point, each under its own name
    assert sorted(summary) == sorted(n.replace("--", sfx + "--", 1) for n in names for sfx in ("", "_guider"))
    for algorithm in ("magpo_sable", "magpo_sable_guider"):
        grid_seed = summary[algorithm + "--alpha=1--delta=inf"]["seed_4"]
        assert grid_seed == single_summary[algorithm]["seed_4"]  # every checkpoint and the absolute metric
    # alpha reaches the learner's training (delta leaves no trace in a run this short: no ratio left its band)
    last = {r["algorithm"]: r for r in records[-4:]}
    without, with_kl = (last[f"magpo_sable--alpha={a}--delta=inf"]["distill_loss"] for a in (0, 1))
    assert without != with_kl


@pytest.mark.slow  # about 95 s of worker time; a CPU batches runs with the loop, the accelerators with vmap
def test_vmap_batching_computes_what_the_loop_does_to_rounding(tmp_path):
    """--run-batching vmap (the accelerators' default) and loop hold the same runs: the same grid's metrics
    agree to float rounding, not to the bit (README: what equals what)."""
    import ippo

    common = dict(**TINY, seed=1, num_seeds=2, actor_lr=(1e-3, 3e-3), ent_coef=(0.0, 0.02))
    loop, _ = outputs(ippo.main(ippo.Args(**common, run_batching="loop", output_dir=str(tmp_path / "a"))))
    vmap, _ = outputs(ippo.main(ippo.Args(**common, run_batching="vmap", output_dir=str(tmp_path / "b"))))
    assert len(loop) == len(vmap) == 3 * 4
    for a, b in zip(loop, vmap):
        assert a["algorithm"] == b["algorithm"]
        for key in ("actor_loss", "value_loss", "entropy", "episode_return_mean"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=f"{a['algorithm']} {key}")


@pytest.mark.parametrize("overrides, message", [
    (dict(delta=(1.2, 0.9)), "--delta must be > 1 (the band is (1/delta, delta); inf removes it), got 0.9"),
    (dict(alpha=(1.0, -1.0)), "--alpha must be >= 0, got -1.0"),
    (dict(lr=(1e-3, float("nan"))), "--lr must be a positive number, got nan"),
    (dict(gamma=(0.99, 1.5)), "--gamma must be in [0, 1], got 1.5"),
    (dict(delta=(1.2, 1.5, 1.2)), "--delta lists a value twice (1.2 1.5 1.2): each grid point trains once"),
])
def test_every_grid_value_is_checked_before_compiling(overrides, message, tmp_path):
    import magpo_sable as ms

    with pytest.raises(SystemExit) as stop:
        ms.main(ms.Args(**TINY, **overrides, output_dir=str(tmp_path)))
    assert str(stop.value) == f"error: {message}"
    assert not os.listdir(tmp_path)  # no run directory


@pytest.mark.parametrize("argv, message", [
    (["--ppo-epochs", "4", "8"], "error: --ppo-epochs takes one value, got 2 (4 8): only --gamma, --gae-lambda, "
     "--clip-eps, --ent-coef, --vf-coef, --max-grad-norm, --lr, --alpha, --delta take several (a grid, trained "
     "in one program); run one command per --ppo-epochs value"),
    (["--delta", "1.2", "0.9"], "error: --delta must be > 1 (the band is (1/delta, delta); inf removes it), got 0.9"),
])
def test_the_command_line_gets_one_line_for_a_bad_grid(argv, message, tmp_path):
    out = subprocess.run([sys.executable, "magpo_sable.py", "--env-id", "coordsum-3x10", *argv, "--output-dir",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 1 and out.stderr.strip() == message and "compiling" not in out.stdout
    assert not os.listdir(tmp_path)  # no run directory
