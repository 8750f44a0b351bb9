"""Long runs (README, "Long runs"): a run killed after a checkpoint and resumed writes what the run that
was never stopped writes; Ctrl-C stops within an update and leaves a resumable run; a saved policy
evaluates to the run's absolute metric (tests/test_e2e.py, on the runs it makes anyway); bad --resume / --evaluate input gets one line before compiling."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

TINY = ["--env-id", "coordsum-3x10", "--num-envs", "4", "--rollout-length", "8", "--num-eval-episodes", "3",
        "--num-minibatches", "2", "--ppo-epochs", "1", "--layer-size", "16", "--gru-size", "16", "--num-seeds", "2"]
TINY_NETWORKS = ["--embed-dim", "16", "--n-block", "1", "--n-head", "1"]
WALL = ("wall_time", "sps")  # the only fields allowed to differ between a resumed run and an unbroken one


def flags(script, checkpoints, updates_per_checkpoint=2):
    extra = TINY_NETWORKS if script != "ippo" else []
    return [*TINY, *extra, "--num-evaluations", str(checkpoints),
            "--total-timesteps", str(checkpoints * updates_per_checkpoint * 32)]


def start(script, args, out_dir):
    return subprocess.Popen([sys.executable, f"{script}.py", *args, "--output-dir", str(out_dir)], cwd=ROOT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def read_until(process, marker, timeout=600):
    """The output up to and including the first line that starts with marker."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(marker):
            return "".join(seen)
    raise AssertionError(f"no line starting with {marker!r} in:\n{''.join(seen)[-3000:]}")


def only_run(out_dir):
    [name] = os.listdir(out_dir)
    return os.path.join(out_dir, name)


def outputs(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [{k: v for k, v in json.loads(line).items() if k not in WALL} for line in f]
    with open(os.path.join(run_dir, "summary.json")) as f:
        return records, json.load(f)


@pytest.mark.parametrize("script, grid", [("ippo", ["--actor-lr", "0.001", "0.003"]),
                                          pytest.param("magpo_sable", [], marks=pytest.mark.slow)],  # CI time
                         ids=["ippo, a grid of 2 points", "magpo_sable"])
def test_a_run_killed_after_a_checkpoint_resumes_to_the_unbroken_run(script, grid, tmp_path):
    unbroken = start(script, flags(script, 4) + grid, tmp_path / "unbroken")
    killed = start(script, flags(script, 4) + grid, tmp_path / "killed")
    read_until(killed, "[  2/4]")  # the line comes after the checkpoint is written
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert unbroken.wait(timeout=600) == 0, unbroken.stdout.read()[-3000:]
    run_dir = only_run(tmp_path / "killed")
    # A kill can also land after the next metrics line was written but before its checkpoint: stand that in,
    # with half a line after it.
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"checkpoint": 3, "episode_return_mean": [0.0, 0.0]}) + '\n{"checkpoint": 4, "epi')
    resumed = subprocess.run([sys.executable, f"{script}.py", "--resume", run_dir], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resumed after evaluation 2" in resumed.stdout
    (records, summary), (expected_records, expected_summary) = outputs(run_dir), outputs(only_run(tmp_path / "unbroken"))
    points = 2 if grid else 1  # a line per grid point and checkpoint
    assert [r["checkpoint"] for r in records] == [c for c in (1, 2, 3, 4) for _ in range(points)]
    assert records == expected_records  # exactly: the resumed run computes what the unbroken one did
    assert summary == expected_summary


def test_a_progress_line_before_the_first_update_finishes_has_no_eta_yet(tmp_path):
    """An update slower than --progress-seconds: the line printed while the first one runs has no rate to
    estimate from (a run of 5 seeds crashed here dividing by zero)."""
    # Updates of 16,384 steps: seconds here, and still far longer than --progress-seconds on a faster machine.
    run = subprocess.run([sys.executable, "ippo.py", *TINY[:2], "--num-envs", "128", "--rollout-length", "128",
                          "--layer-size", "16", "--gru-size", "16", "--num-evaluations", "1",
                          "--total-timesteps", str(2 * 128 * 128), "--progress-seconds", "0.01",
                          "--output-dir", str(tmp_path)],
                         cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "training return - | ETA -" in run.stdout  # printed while the first update was still running
    assert "[  1/1]" in run.stdout


def test_ctrl_c_stops_within_an_update_and_leaves_a_resumable_run(tmp_path):
    run = start("ippo", flags("ippo", 2, updates_per_checkpoint=400), tmp_path)
    read_until(run, "[  1/2]")
    run.send_signal(signal.SIGINT)
    sent = time.time()
    rest, _ = run.communicate(timeout=120)
    assert time.time() - sent < 30  # an update here takes milliseconds; the interval, seconds
    assert run.returncode == 1 and "stopping after this update" in rest
    assert f"stopped after evaluation 1 of 2; the checkpoint and metrics are in {only_run(tmp_path)}; continue with " \
           f"python ippo.py --resume {only_run(tmp_path)}" in rest
    run_dir = only_run(tmp_path)
    records, summary = outputs(run_dir)
    assert [r["checkpoint"] for r in records] == [1]
    assert os.listdir(os.path.join(run_dir, "checkpoint")) == ["1"]
    assert len(summary["coordsum"]["3x10"]["ippo"]["seed_0"]) == 1  # step_0 only


def test_ctrl_c_while_compiling_exits_with_one_line_and_no_run_directory(tmp_path):
    run = start("ippo", flags("ippo", 2), tmp_path)
    read_until(run, "compiling")
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=60)
    assert run.returncode == 130
    assert rest.strip() == "interrupted while compiling: nothing was trained"
    assert os.listdir(tmp_path) == []


def test_a_saved_policy_from_another_network_is_refused_with_the_flag_that_differs(tmp_path, capsys):
    import ippo

    args = ippo.Args(env_id="coordsum-3x10", num_envs=4, rollout_length=8, total_timesteps=32, num_evaluations=1,
                     num_eval_episodes=2, num_minibatches=2, ppo_epochs=1, layer_size=16, gru_size=16,
                     save_model=True, output_dir=str(tmp_path))
    run_dir = ippo.main(args)
    with pytest.raises(SystemExit) as stop:
        ippo.main(ippo.Args(env_id="coordsum-3x10", layer_size=32, gru_size=16, total_timesteps=10_000_000, num_envs=8,
                            evaluate=os.path.join(run_dir, "actor_best.msgpack")))
    message = str(stop.value)
    assert message.startswith("error: --evaluate") and message.endswith(": --layer-size (the run used 16, here 32)")
    assert "\n" not in message


def test_bad_resume_input_gets_one_line_before_anything_compiles(tmp_path):
    import ippo
    import mappo

    def refused(module, expected, **overrides):
        with pytest.raises(SystemExit) as stop:
            module.main(module.Args(**overrides))
        assert str(stop.value).startswith("error: --") and expected in str(stop.value), (overrides, stop.value)

    run_dir = tmp_path / "run"
    refused(ippo, "is not a run directory (no readable args.json in it)", resume=str(run_dir))
    run_dir.mkdir()
    (run_dir / "args.json").write_text(json.dumps({**vars(ippo.Args()), "algorithm": "ippo", "layer_size": 16}))
    refused(mappo, "is a run of ippo.py: resume it with that script, not mappo.py", resume=str(run_dir))
    refused(ippo, "holds no checkpoint (it stopped before its first evaluation): there is nothing to resume; start "
                  "the run again", resume=str(run_dir))
    (run_dir / "checkpoint" / "3").mkdir(parents=True)
    refused(ippo, "--layer-size is 32 here and 16 in the run", resume=str(run_dir), layer_size=32)
    refused(ippo, "--resume and --evaluate exclude each other", resume=str(run_dir), evaluate="x.msgpack")


def test_ctrl_c_during_a_long_sable_update_exits_cleanly_and_keeps_the_run(tmp_path):
    """Ctrl-C lands while magpo_sable.py's update (seconds on RWARE) is still computing: the program
    waits for it before exiting (an interpreter exiting under a running XLA computation died with a segfault,
    status 139, 3 times out of 3), says what it kept and leaves its checkpoint."""
    # The paper's sizes (128 environments x 128 steps, Sable of width 64): an update of seconds, longer than
    # the interpreter takes to exit.
    args = ["--env-id", "rware-tiny-2ag", "--num-evaluations", "3", "--total-timesteps", str(3 * 2 * 128 * 128),
            "--num-eval-episodes", "2"]
    run = start("magpo_sable", args, tmp_path)
    read_until(run, "[  1/3]")
    time.sleep(0.5)  # the next update is under way
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=300)
    run_dir = only_run(tmp_path)
    assert run.returncode == 1, rest[-3000:]  # sys.exit with the message; a segfault is -11 (139 in a shell)
    assert "stopping after this update" in rest
    assert rest.strip().endswith(f"stopped after evaluation 1 of 3; the checkpoint and metrics are in {run_dir}; "
                                 f"continue with python magpo_sable.py --resume {run_dir}")
    records, summary = outputs(run_dir)
    assert [r["checkpoint"] for r in records] == [1] and os.listdir(os.path.join(run_dir, "checkpoint")) == ["1"]


def test_ctrl_c_before_the_first_evaluation_keeps_nothing_and_says_so(tmp_path):
    run = start("ippo", flags("ippo", 2, updates_per_checkpoint=100_000) + ["--progress-seconds", "0.2"], tmp_path)
    read_until(run, "      step")  # a progress line: training is under way
    run.send_signal(signal.SIGINT)
    rest, _ = run.communicate(timeout=120)
    assert run.returncode == 1, rest[-2000:]
    assert rest.strip().endswith("stopped before the first evaluation: nothing was kept; start the run again")
    assert os.listdir(tmp_path) == []  # no run directory that --resume would refuse


def test_resuming_a_finished_run_says_so_and_stops_at_once(tmp_path):
    import ippo

    args = ippo.Args(env_id="coordsum-3x10", num_envs=4, rollout_length=8, total_timesteps=32, num_evaluations=1,
                     num_eval_episodes=2, num_minibatches=2, ppo_epochs=1, layer_size=16, gru_size=16,
                     output_dir=str(tmp_path))
    run_dir = ippo.main(args)
    resumed = subprocess.run([sys.executable, "ippo.py", "--resume", run_dir], cwd=ROOT, capture_output=True,
                             text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.strip().splitlines()[-1] == (
        f"{run_dir} is finished (all 1 evaluations and the absolute metric are in its summary.json): nothing to "
        "resume")
    assert "compiling" not in resumed.stdout


def test_a_progress_line_comes_while_the_first_long_update_runs(tmp_path):
    """The progress line keeps its rhythm whatever an update's length: a run of one update (and its evaluation)
    prints progress lines while that single compiled call runs (it printed nothing for minutes)."""
    run = subprocess.run([sys.executable, "ippo.py", *TINY[:2], "--num-envs", "128", "--rollout-length", "128",
                          "--layer-size", "16", "--gru-size", "16", "--num-evaluations", "1", "--num-eval-episodes",
                          "32", "--total-timesteps", str(128 * 128), "--progress-seconds", "0.05",
                          "--output-dir", str(tmp_path)],
                         cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lines = run.stdout.splitlines()
    compiled = next(i for i, line in enumerate(lines) if line.startswith("compiled in"))
    evaluated = next(i for i, line in enumerate(lines) if line.startswith("[  1/1]"))
    waiting = [line for line in lines[compiled:evaluated] if line.endswith("training return - | ETA -")]
    assert len(waiting) >= 2, run.stdout[-3000:]  # the update of 16,384 steps takes far longer than 0.1 s


def test_a_saved_policy_of_another_script_is_refused_with_its_name(tmp_path):
    """mappo.py's actor has ippo.py's shapes: without the check it evaluated ippo.py's file as its own."""
    import ippo
    import mappo

    args = ippo.Args(env_id="coordsum-3x10", num_envs=4, rollout_length=8, total_timesteps=32, num_evaluations=1,
                     num_eval_episodes=2, num_minibatches=2, ppo_epochs=1, layer_size=16, gru_size=16,
                     save_model=True, output_dir=str(tmp_path))
    saved = os.path.join(ippo.main(args), "actor_best.msgpack")
    with pytest.raises(SystemExit) as stop:
        mappo.main(mappo.Args(env_id="coordsum-3x10", layer_size=16, gru_size=16, evaluate=saved))
    assert str(stop.value) == (f"error: --evaluate {saved!r} was saved by ippo.py (the args.json beside it says so): "
                               "evaluate it with that script, not mappo.py")
