"""A user's own environment (README, "Your own environment"): `--env-id module:function` trains any script on
it without editing the script; a factory that does not fit gets one line before anything compiles."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
EXAMPLE = "examples.target_matching:make_env"


def train(script, flags, out_dir, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, f"{script}.py"), *flags, "--output-dir", str(out_dir)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)


def metrics(out_dir):
    [run_dir] = os.listdir(out_dir)
    with open(os.path.join(out_dir, run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_ippo_learns_the_worked_example_from_the_command_line(tmp_path):
    """Target matching pays 1 a step when both agents pick the target: a uniform policy scores 10 / 4 = 2.5 an
    episode, a learned one up to 10."""
    run = train("ippo", ["--env-id", EXAMPLE, "--num-envs", "16", "--rollout-length", "10", "--num-evaluations", "2",
                         "--total-timesteps", str(2 * 60 * 160), "--num-eval-episodes", "32", "--layer-size", "32",
                         "--gru-size", "32", "--actor-lr", "3e-3", "--critic-lr", "3e-3"], tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "ippo on examples.target_matching:make_env: 2 agents, obs 3, actions 4" in run.stdout
    lines = metrics(tmp_path)
    assert [line["episode_length_mean"] for line in lines] == [[10.0], [10.0]]  # the example's time limit
    assert lines[-1]["episode_return_mean"][0] > 6.0, lines  # far above the uniform policy's 2.5


def test_magpo_sable_trains_its_guider_and_learner_on_the_worked_example(tmp_path):
    run = train("magpo_sable", ["--env-id", EXAMPLE, "--num-envs", "8", "--rollout-length", "10",
                                "--num-evaluations", "1", "--total-timesteps", "160", "--num-eval-episodes", "4",
                                "--embed-dim", "16", "--n-head", "1", "--n-block", "1", "--layer-size", "16",
                                "--gru-size", "16"], tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    [line] = metrics(tmp_path)
    # Both policies were evaluated on the example: full-length episodes, returns within what it can pay.
    for prefix in ("", "guider_"):
        assert line[f"{prefix}episode_length_mean"] == [10.0]
        assert 0.0 <= line[f"{prefix}episode_return_mean"][0] <= 10.0
    assert "absolute episode_return of the learner" in run.stdout
    assert "absolute episode_return of the guider" in run.stdout


BAD = textwrap.dedent("""
    import jax.numpy as jnp

    import envs


    def not_a_spec():
        return {"reset": None}


    def mask_too_narrow():  # 4 actions declared, masks of 3
        def reset(key):
            return jnp.zeros(()), jnp.zeros((2, 1)), jnp.ones((2, 3), bool), jnp.zeros((2,))

        def step(key, state, actions):
            return state, jnp.zeros((2, 1)), jnp.ones((2, 3), bool), jnp.zeros((2,)), 0.0, True, False, False

        return envs.wrap_env("narrow", 2, 4, 5, reset, step)


    def step_changes_the_view():  # reset's view has 1 feature per agent, step's 2
        def reset(key):
            return jnp.zeros(()), jnp.zeros((2, 1)), jnp.ones((2, 4), bool), jnp.zeros((2,))

        def step(key, state, actions):
            return state, jnp.zeros((2, 2)), jnp.ones((2, 4), bool), jnp.zeros((2,)), 0.0, True, False, False

        return envs.wrap_env("changing", 2, 4, 5, reset, step)
""")


@pytest.mark.parametrize("factory, message", [
    ("not_a_spec", "error: --env-id 'bad_envs:not_a_spec': not_a_spec() returned a dict, not an envs.EnvSpec; "
                   "build one with envs.wrap_env (README, \"Your own environment\")"),
    ("mask_too_narrow", "error: --env-id 'bad_envs:mask_too_narrow': reset gives action_mask of shape (2, 3), "
                        "expected (2, 4) (2 agents, 4 actions)"),
    ("step_changes_the_view", "error: --env-id 'bad_envs:step_changes_the_view': step gives obs of shape (2, 4), "
                              "expected (2, 3) (2 agents, 4 actions)"),
    ("nowhere", "error: --env-id 'bad_envs:nowhere' names no factory that can be imported (module 'bad_envs' has "
                "no attribute 'nowhere'); give module:function, the module importable from where the script runs"),
])
@pytest.mark.parametrize("script", ["ippo", "magpo_sable"])
def test_a_factory_that_does_not_fit_gets_one_line_before_compiling(script, factory, message, tmp_path):
    (tmp_path / "bad_envs.py").write_text(BAD)  # a module of the user's, where the script is run from
    run = train(script, ["--env-id", f"bad_envs:{factory}"], tmp_path / "runs", cwd=tmp_path)
    assert run.returncode == 1 and "compiling" not in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert not os.path.exists(tmp_path / "runs")
