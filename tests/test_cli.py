"""Bad input fails before anything compiles, with a message naming the flag and what it accepts."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPTS = ["ippo", "mappo", "magpo_sable", "ctds", "magpo_mat"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=SCRIPTS)
def script(request):
    return importlib.import_module(request.param)


@pytest.mark.parametrize("overrides, message", [
    ({"num_envs": 0}, "--num-envs must be a positive integer"),
    ({"num_seeds": -1}, "--num-seeds must be a positive integer"),
    ({"num_envs": 6, "num_minibatches": 4}, "--num-envs (6) must be divisible by --num-minibatches (4)"),
    ({"gamma": 1.5}, "--gamma must be in [0, 1]"),
    ({"clip_eps": 0.0}, "--clip-eps must be a positive number"),
    ({"ent_coef": -0.1}, "--ent-coef must be >= 0"),
    ({"progress_seconds": 0.0}, "--progress-seconds must be a positive number of seconds"),
    ({"total_timesteps": 1000, "num_evaluations": 10}, "--total-timesteps (1000) is too small for --num-evaluations (10)"),
])
def test_bad_flag_values_name_the_flag(script, overrides, message):
    args = script.Args(env_id="coordsum-3x10", **overrides)
    with pytest.raises(script.UsageError) as error:
        script.validate(args)
    assert message in str(error.value)


def test_bad_learning_rate_names_the_flag(script):
    flags = [f for f in ("actor_lr", "critic_lr", "lr") if hasattr(script.Args, f)]
    assert flags
    for flag in flags:
        with pytest.raises(script.UsageError) as error:
            script.validate(script.Args(env_id="coordsum-3x10", **{flag: float("nan")}))
        assert f"--{flag.replace('_', '-')} must be a positive number" in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    ({"delta": 1.0}, "--delta must be > 1"),
    ({"delta": float("nan")}, "--delta must be > 1"),
    ({"alpha": -1.0}, "--alpha must be >= 0"),
])
@pytest.mark.parametrize("name", ["magpo_sable", "magpo_mat"])
def test_magpo_specific_flags(name, overrides, message):
    module = importlib.import_module(name)
    with pytest.raises(module.UsageError) as error:
        module.validate(module.Args(env_id="coordsum-3x10", **overrides))
    assert message in str(error.value)


@pytest.mark.parametrize("name", ["magpo_sable", "ctds"])
@pytest.mark.parametrize("overrides, message", [
    ({"decay_scaling_factor": 0.0}, "--decay-scaling-factor must be in (0, 1]"),
    ({"embed_dim": 30, "n_head": 4}, "--embed-dim (30) must be even and divisible by --n-head (4)"),
    ({"chunk_size": 48}, "--chunk-size (48) must be a positive divisor of --rollout-length (128)"),
    ({"n_block": 0}, "--n-block must be a positive integer"),
])
def test_sable_flags(name, overrides, message):
    module = importlib.import_module(name)
    with pytest.raises(module.UsageError) as error:
        module.validate(module.Args(env_id="coordsum-3x10", **overrides))
    assert message in str(error.value)


def test_ctds_has_no_magpo_flags(capsys):
    """CTDS is MAGPO without the band and the RL term: asking for either is an error, not a silent no-op."""
    import tyro

    import ctds

    for flag in ("--delta", "--alpha"):
        with pytest.raises(SystemExit):
            tyro.cli(ctds.Args, args=[flag, "1.5"])
        assert flag in capsys.readouterr().err


def test_delta_inf_and_the_paper_kl_direction_parse_from_the_command_line():
    import tyro

    for module in (importlib.import_module("magpo_sable"), importlib.import_module("magpo_mat")):
        args = tyro.cli(module.Args, args=["--delta", "inf", "--alpha", "0", "--kl-direction", "learner-guider"])
        assert args.delta == float("inf") and args.alpha == 0.0 and args.kl_direction == "learner-guider"
        module.validate(args)  # plain Sable / plain MAT is a valid configuration
        with pytest.raises(SystemExit):
            tyro.cli(module.Args, args=["--kl-direction", "sideways"])


def test_unknown_env_id_lists_closest_valid_ids_first(script):
    with pytest.raises(script.UsageError) as error:
        script.validate(script.Args(env_id="rware-tiny-2agg"))
    text = str(error.value)
    assert "--env-id" in text and "rware-tiny-2ag" in text
    listed = text[text.index("rware-tiny-2ag"):]
    assert listed.index("rware-tiny-2ag") < listed.index("coordsum-3x10")  # closest first, then the rest


def test_cli_exits_with_message_before_compiling(script, tmp_path):
    result = subprocess.run([sys.executable, f"{script.__name__}.py", "--env-id", "smax-2s3zz",
                             "--output-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "error: unknown --env-id 'smax-2s3zz'" in result.stderr and "smax-2s3z" in result.stderr
    assert "compiled" not in result.stdout and not os.listdir(tmp_path)  # nothing built, nothing written


def test_distributed_without_a_cluster_names_the_flag(script, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR"))}
    result = subprocess.run([sys.executable, f"{script.__name__}.py", "--env-id", "coordsum-3x10", "--distributed",
                             "--output-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "error: --distributed found no cluster to join" in result.stderr
    assert "compiled" not in result.stdout and not os.listdir(tmp_path)


@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_output_dir_that_cannot_hold_a_run_names_the_flag(script, where, tmp_path, capsys):
    output_dir = str(tmp_path / "taken") if where == "a file" else "/proc/magpo-runs"
    if where == "a file":
        open(output_dir, "w").close()
    with pytest.raises(SystemExit) as stop:
        script.main(script.Args(env_id="coordsum-3x10", output_dir=output_dir))
    assert str(stop.value).startswith(f"error: --output-dir {output_dir!r} cannot hold a run directory")
    assert "compiled" not in capsys.readouterr().out


def test_runs_started_in_the_same_second_never_share_a_directory(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script.time, "time", lambda: 1_700_000_000.0)
    args = script.Args(env_id="coordsum-3x10", output_dir=str(tmp_path))
    dirs = [script.make_run_dir(args) for _ in range(3)]
    assert len(set(dirs)) == 3 and sorted(os.listdir(tmp_path)) == sorted(os.path.basename(d) for d in dirs)
    assert dirs[1] == dirs[0] + "_2" and all(os.path.exists(os.path.join(d, "args.json")) for d in dirs)


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(script):
    # coordsum-1000x1000: 1,000 agents, each seeing a 1,001-float view (id and target) and masking 1,000 actions
    # per step; the global state holds the 1,000 agents' targets. 5 seeds x 2 grid points: 10 runs.
    args = script.Args(env_id="coordsum-1000x1000", num_seeds=5, gamma=(0.9, 0.99))
    with pytest.raises(script.UsageError) as error:
        script.validate(args)
    text = str(error.value)
    assert text.startswith("coordsum-1000x1000 with --num-envs 128 x --rollout-length 128 x --num-seeds 5 x 2 grid "
                           "point(s) needs at least")
    need = 10 * 128 * 128 * (1000 * (4 * 1001 + 1000) + 4 * 1000)
    assert f"{need / 2**30:,.1f} GiB for its rollout alone" in text and "lower --num-envs" in text


def test_exploded_loss_names_the_first_loss_past_the_bound(script):
    stats = {name: np.zeros((2, 3)) for name in script.LOSSES}
    assert script.exploded_loss(stats) is None
    stats["value_loss"][1, 2] = -5e31
    assert script.exploded_loss(stats) == ("value_loss", 5e31)
