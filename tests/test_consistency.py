"""What every algorithm script must share by design: the learner network, the grid, output and long-run
helpers, main() and the evaluation protocol. Each script carries its own copy (a script is copied into a new
experiment with envs.py alone); these tests hold the copies together, by text and by running the same inputs
through each. The environments are not copied: they live once, in envs.py (tests/test_adapter.py)."""
import importlib
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT

SCRIPTS = [s for s in ("ippo", "mappo", "magpo_sable", "ctds", "magpo_mat") if os.path.exists(os.path.join(ROOT, f"{s}.py"))]
# (first line of the block, its end marker): the text between them is the same in every script.
BLOCKS = {
    "learner network and distributions": ("# Learner network and distributions (identical in every script",
                                          "# End of the learner network and distributions."),
    "grid helpers": ("# Many runs in one program: seeds and hyperparameter grids (identical in every script)",
                     "# End of the grid helpers."),
    "output helpers": ("# Outputs: run directory, metrics lines, marl-eval summary, parameter files, wandb (identical",
                       "# End of the output helpers."),
    "long-run helpers": ("# Long runs: checkpoints, resuming, stopping, progress, saved policies (identical",
                         "# End of the long-run helpers."),
    "main()": ("# main(): prepare, train, finish (identical in every script)", "# End of main()."),
}


def section(name, begin, end):
    text = open(os.path.join(ROOT, f"{name}.py")).read()
    assert text.count(begin) == 1 and text.count(end) == 1, f"{name}.py lacks the markers {begin!r}"
    return text[text.index(begin):text.index(end)]


@pytest.mark.parametrize("block", BLOCKS)
def test_every_script_carries_the_same_text(block):
    reference = section("ippo", *BLOCKS[block])
    for name in SCRIPTS:
        assert section(name, *BLOCKS[block]) == reference, f"{name}.py's {block} differ from ippo.py's"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b != "learner network and distributions"])
def test_the_shared_text_names_no_algorithm(block):
    """Text every script carries is truly common: no MAGPO flag, guider or teacher in ippo.py and mappo.py."""
    text = section("ippo", *BLOCKS[block]).lower()
    for word in ("guider", "teacher", "student", "delta", "alpha", "magpo", "sable", "learner"):
        assert word not in text, (block, word)


def test_every_name_is_defined_above_its_first_use():
    """Reading order: a reader never meets a module-level name (function, class, constant, import) before the
    line that defines it."""
    import ast

    for name in [*SCRIPTS, "envs", "coordsum"]:
        tree = ast.parse(open(os.path.join(ROOT, f"{name}.py")).read())
        defined = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [(a.asname or a.name).split(".")[0] for a in node.names]
            else:
                names = [n.id for t in getattr(node, "targets", [getattr(node, "target", None)]) if t is not None
                         for n in ast.walk(t) if isinstance(n, ast.Name)]
            for n in names:
                defined.setdefault(n, node.lineno)
        early = sorted({(n.id, n.lineno, defined[n.id]) for n in ast.walk(tree)
                        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in defined
                        and n.lineno < defined[n.id]}, key=lambda x: x[1])
        assert not early, f"{name}.py uses before defining (name, used, defined): {early[:5]}"


def test_a_copied_script_runs_with_envs_py_and_stops_without_it(tmp_path):
    """README: copy the file with envs.py (plus coordsum.py for CoordSum) into a new experiment and it runs.
    Every script is copied into an empty folder and imported there, in one interpreter; then without
    envs.py it stops at import with one line naming the file."""
    for name in SCRIPTS:
        shutil.copy(os.path.join(ROOT, f"{name}.py"), tmp_path)
    shutil.copy(os.path.join(ROOT, "envs.py"), tmp_path)
    code = (f"for name in {SCRIPTS!r}:\n"
            "    m = __import__(name)\n"
            "    print(name, m.make_env('lbf-2s-8x8-2p-2f-coop').num_agents)\n"
            "    try:\n        m.make_env('coordsum-3x10')\n    except ValueError as e:\n        print(e)\n")
    env = {**os.environ, "PYTHONPATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    message = "--env-id coordsum-3x10 needs coordsum.py beside envs.py: copy it from the repository"
    assert out.stdout.splitlines() == [line for name in SCRIPTS for line in (f"{name} 2", message)]
    os.remove(tmp_path / "envs.py")
    for name in SCRIPTS:
        out = subprocess.run([sys.executable, f"{name}.py", "--env-id", "coordsum-3x10"], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 1 and out.stderr.strip() == (
            f"{name}.py needs envs.py beside it: copy envs.py from the repository (and coordsum.py for the "
            "CoordSum tasks)"), out.stderr[-2000:]


def test_envs_lists_the_registered_coordsum_tasks():
    import coordsum
    import envs

    assert envs._COORDSUM == tuple(coordsum.TASK_MAXVAL)


def test_output_helpers_agree():
    evaluation = {"episode_return": np.array([[1.0, 3.0], [2.0, 2.0]]), "win_rate": np.array([[0.0, 1.0], [1.0, 1.0]])}
    checkpoints = [{"env_steps": 100, "eval": evaluation}]
    results = []
    for name in SCRIPTS:
        module = importlib.import_module(name)
        env = module.make_env("smax-2s3z")
        args = module.Args(env_id="smax-2s3z", num_seeds=2, seed=5)
        summary = module.marl_eval_summary(env, args, checkpoints, evaluation)
        results.append((module.summarise(evaluation), summary[env.suite][env.env_id.split("-", 1)[1]]))
        assert module.headline_metric("smax") == "win_rate" and module.headline_metric("rware") == "episode_return"
    first_summary, first_layout = results[0]
    assert first_summary == {"episode_return_mean": [2.0, 2.0], "episode_return_std": [1.0, 0.0],
                             "win_rate_mean": [0.5, 1.0], "win_rate_std": [0.5, 0.0]}
    seeds = list(first_layout.values())[0]
    assert list(seeds) == ["seed_5", "seed_6"]
    assert seeds["seed_6"]["step_0"] == {"step_count": 100, "episode_return": [2.0, 2.0], "win_rate": [1.0, 1.0]}
    assert seeds["seed_5"]["absolute_metrics"]["episode_return"] == [1.0, 3.0]
    for summary, layout in results[1:]:
        assert summary == first_summary
        assert list(layout.values())[0] == seeds


def test_decentralised_evaluation_is_the_same_protocol():
    """Same actor parameters and key -> the same evaluation metrics from every script."""
    results = []
    for name in SCRIPTS:
        module = importlib.import_module(name)
        args = module.Args(env_id="coordsum-3x10", num_envs=4, rollout_length=4, total_timesteps=16,
                           num_evaluations=1, num_minibatches=2, layer_size=16, gru_size=16)
        env = module.make_env(args.env_id)
        trainer = module.make_train(args, env)
        runner = trainer.init(jax.random.PRNGKey(0), module.hparams_from_args(args))
        results.append(jax.device_get(jax.jit(trainer.evaluate_actor, static_argnums=2)(
            runner.actor_params, jax.random.PRNGKey(1), 8)))
    for other in results[1:]:
        jax.tree.map(np.testing.assert_array_equal, results[0], other)
    assert np.all(results[0]["episode_length"] == 100)


def test_guided_scripts_evaluate_the_same_guider_the_same_way():
    """magpo_sable.py's guider and ctds.py's teacher are one network with one evaluation protocol:
    same seed -> same parameters -> the same evaluation metrics."""
    guided = [s for s in SCRIPTS if s in ("magpo_sable", "ctds")]
    if len(guided) < 2:
        pytest.skip("needs magpo_sable.py and ctds.py")
    results = []
    for name in guided:
        module = importlib.import_module(name)
        args = module.Args(env_id="coordsum-3x10", num_envs=4, rollout_length=4, total_timesteps=16,
                           num_evaluations=1, num_minibatches=2, layer_size=16, gru_size=16, embed_dim=16)
        trainer = module.make_train(args, module.make_env(args.env_id))
        runner = trainer.init(jax.random.PRNGKey(0), module.hparams_from_args(args))
        results.append(jax.device_get(jax.jit(trainer.evaluate_guider, static_argnums=2)(
            runner.guider_params, jax.random.PRNGKey(1), 8)))
    jax.tree.map(np.testing.assert_array_equal, results[0], results[1])
    assert np.all(results[0]["episode_length"] == 100) and np.any(results[0]["episode_return"] != results[0]["episode_return"][0])


def test_run_directory_memory_check_and_loss_guards_are_the_same_code():
    """The helpers main() calls, held identical by their compiled source too (a marker moved by mistake would
    let a block differ unseen)."""
    import inspect

    names = ("make_run_dir", "first_non_finite", "exploded_loss", "rollout_bytes", "free_bytes", "summarise",
             "format_duration", "marl_eval_summary", "main", "prepare", "train_loop", "finish")
    reference = importlib.import_module("ippo")
    for name in SCRIPTS:
        module = importlib.import_module(name)
        for helper in names:
            assert inspect.getsource(getattr(module, helper)) == inspect.getsource(getattr(reference, helper)), (name, helper)
        assert module.LOSS_WARNING == reference.LOSS_WARNING
        # validate() differs by each script's own flags, but ends with the same environment and memory checks.
        tail = inspect.getsource(reference.validate).split("    try:\n        env = make_env")[1]
        assert inspect.getsource(module.validate).endswith(tail), name


def test_every_script_turns_ynnpack_fusions_off_unless_the_user_says_otherwise():
    def block(name):
        text = open(os.path.join(ROOT, f"{name}.py")).read()
        start = text.index("# XLA:CPU in jax 0.10 hands small matmuls to YNNPACK")
        return text[start:text.index("\n\n", start)]

    assert all(block(name) == block("ippo") for name in SCRIPTS)
    code = "import ippo, os; print(os.environ.get('XLA_FLAGS'))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for given, expected in [(None, "--xla_cpu_experimental_ynn_fusion_type="),
                            ("--xla_backend_optimization_level=0",
                             "--xla_backend_optimization_level=0 --xla_cpu_experimental_ynn_fusion_type="),
                            ("--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                             "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")]:
        run_env = env if given is None else {**env, "XLA_FLAGS": given}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr[-2000:]
