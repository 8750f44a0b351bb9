"""Short end-to-end runs of every script on one task of every suite, as a user runs them (main()),
checking what they wrote: args.json, one metrics line per checkpoint, a marl-eval summary, models."""
import importlib
import json
import os

import numpy as np
import pytest

SCRIPTS = ["ippo", "mappo", "magpo_sable", "ctds", "magpo_mat"]
SUITE_TASKS = ["coordsum-3x10", "rware-tiny-2ag", "lbf-2s-8x8-2p-2f-coop", "con-5x5x3a", "mpe-simple_spread_3ag", "smax-2s3z"]
TINY = dict(num_envs=4, rollout_length=8, total_timesteps=2 * 4 * 8, num_evaluations=2, num_eval_episodes=3,
            num_minibatches=2, ppo_epochs=1, layer_size=16, gru_size=16, num_seeds=2, save_model=True)


# Scripts that train a centralised guider beside the decentralised learner and report both.
GUIDED = {"magpo_sable", "ctds", "magpo_mat"}
# Per script: the tiny size of its own networks.
TINY_NETWORKS = {name: dict(embed_dim=16, n_block=1, n_head=1) for name in ("magpo_sable", "ctds", "magpo_mat")}


def run(script, env_id, tmp_path, **overrides):
    module = importlib.import_module(script)
    args = module.Args(env_id=env_id, output_dir=str(tmp_path), **{**TINY, **TINY_NETWORKS.get(script, {}), **overrides})
    return module, args, module.main(args)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# The fast suite runs every script but mappo on CoordSum, the guided magpo_sable on MPE (continuous actions, which
# reach the guider's own Gaussian head too) and mappo on SMAX (action masks, wins); the other 24 of the 30 pairs, a
# minute or two each on 2 cores, run with `-m slow`. The environments are one file, envs.py, whose
# test_adapter.py steps every suite.
FAST_PAIRS = {(script, "coordsum-3x10") for script in SCRIPTS if script != "mappo"} | {
    ("magpo_sable", "mpe-simple_spread_3ag"), ("mappo", "smax-2s3z")}


@pytest.mark.parametrize("script, env_id", [
    pytest.param(script, env_id, marks=() if (script, env_id) in FAST_PAIRS else pytest.mark.slow)
    for script in SCRIPTS for env_id in SUITE_TASKS])
def test_short_run_writes_finite_metrics_for_two_seeds(script, env_id, tmp_path):
    # magpo_sable's saved learner and guider, re-evaluated (ippo's: the slow test below; the code is the long-run
    # helpers, the same text in every script)
    reproduce = env_id == "coordsum-3x10" and script == "magpo_sable"
    module, args, run_dir = run(script, env_id, tmp_path, capture_video=reproduce)
    assert os.path.basename(run_dir).startswith(f"{env_id}__{script}__0__")
    assert json.load(open(os.path.join(run_dir, "args.json")))["env_id"] == env_id
    records = read_metrics(run_dir)
    env = module.make_env(env_id)
    assert [r["checkpoint"] for r in records] == [1, 2]
    assert [r["env_steps"] for r in records] == [32, 64]
    prefixes = ("", "guider_") if script in GUIDED else ("",)
    losses = getattr(module, "LOSSES", ("actor_loss", "value_loss", "entropy"))
    for record in records:
        for name in module.eval_metric_names(env.suite):
            for prefix in prefixes:
                for stat in ("mean", "std"):
                    values = record[f"{prefix}{name}_{stat}"]
                    assert len(values) == 2 and np.all(np.isfinite(values)), (prefix, name, values)
        assert all(np.isfinite(record[k]).all() for k in losses)
        # Evaluation ran whole episodes: none is longer than the time limit, and fixed-horizon suites hit it.
        assert max(record["episode_length_mean"]) <= env.time_limit
        if env.suite in ("coordsum", "mpe"):
            assert record["episode_length_mean"] == [env.time_limit, env.time_limit]
        # Two seeds are two different runs compiled once: their losses differ.
        assert record[losses[0]][0] != record[losses[0]][1]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    for algorithm in (script, f"{script}_guider") if script in GUIDED else (script,):
        seeds = list(list(summary[env.suite].values())[0][algorithm].values())
        assert len(seeds) == 2 and len(seeds[0]["absolute_metrics"]["episode_return"]) == 10 * args.num_eval_episodes
        assert seeds[0]["step_1"]["step_count"] == 64 and len(seeds[0]["step_1"]["episode_return"]) == args.num_eval_episodes
    models = ("actor", "guider") if script in GUIDED else ("actor",)
    for name in (f"{model}_{which}.msgpack" for model in models for which in ("final", "best")):
        assert os.path.getsize(os.path.join(run_dir, name)) > 1000
    if reproduce:
        saved_policies_reproduce_the_absolute_metric(module, args, run_dir, summary[env.suite]["3x10"])


@pytest.mark.slow
def test_a_decentralised_scripts_saved_policy_reproduces_its_absolute_metric(tmp_path):
    module, args, run_dir = run("ippo", "coordsum-3x10", tmp_path, capture_video=True)
    with open(os.path.join(run_dir, "summary.json")) as f:
        saved_policies_reproduce_the_absolute_metric(module, args, run_dir, json.load(f)["coordsum"]["3x10"])


def saved_policies_reproduce_the_absolute_metric(module, args, run_dir, summary):
    """--evaluate of the best parameters, with 10x the run's episodes, gives the run's absolute metric exactly
    (the learner's file and the guider's, told apart by their parameter trees), and with --capture-video the
    training run's GIF again, byte for byte."""
    trained_video = open(os.path.join(run_dir, "actor_best.gif"), "rb").read()
    for field, algorithm in (("actor", module.ALGORITHM), ("guider", f"{module.ALGORITHM}_guider")):
        if algorithm not in summary:
            continue
        again = module.main(module.Args(**{**vars(args), "evaluate": os.path.join(run_dir, f"{field}_best.msgpack"),
                                           "num_eval_episodes": 10 * args.num_eval_episodes, "save_model": False}))
        video = open(os.path.join(run_dir, f"{field}_best.gif"), "rb").read()  # the guider's: its own file
        if field == "actor":
            assert video == trained_video  # the same episode of the same parameters, drawn again
        for s in range(args.num_seeds):
            for metric, values in summary[algorithm][f"seed_{args.seed + s}"]["absolute_metrics"].items():
                np.testing.assert_array_equal(np.asarray(again[metric][s], np.float32), np.float32(values), metric)


@pytest.mark.slow  # to the bit from the command line: tests/test_grid.py's first test, in the fast suite
def test_seed_i_of_a_multi_seed_run_equals_a_single_run_with_that_seed(tmp_path):
    longer = dict(total_timesteps=16 * 4 * 8, num_evaluations=4, save_model=False)  # 16 updates
    _, _, both = run("ippo", "coordsum-3x10", tmp_path / "a", seed=7, **longer)
    _, _, single = run("ippo", "coordsum-3x10", tmp_path / "b", seed=8, num_seeds=1, **longer)
    # On a CPU the runs are looped inside the program (--run-batching auto): the same operations, to the bit with
    # XLA's default optimisation (tests/test_grid.py, from the command line); the fast suite compiles with the
    # backend optimisation off, where the single run's one-trip loop rounds differently: equal to rounding.
    assert len(read_metrics(single)) == 4
    for multi, alone in zip(read_metrics(both), read_metrics(single), strict=True):
        for key, values in alone.items():
            if isinstance(values, list):
                np.testing.assert_allclose(multi[key][1], values[0], rtol=1e-3, atol=1e-6, err_msg=key)


# ippo in the fast suite; the guard is the same text in every script (test_consistency.py).
@pytest.mark.parametrize("script, absurd_lr", [("ippo", dict(actor_lr=1e30, critic_lr=1e30)),
                                               pytest.param("magpo_sable", dict(lr=1e30), marks=pytest.mark.slow),
                                               pytest.param("ctds", dict(lr=1e30), marks=pytest.mark.slow),
                                               pytest.param("magpo_mat", dict(lr=1e30), marks=pytest.mark.slow)])
def test_non_finite_loss_stops_with_message_and_keeps_metrics(script, absurd_lr, tmp_path, capsys):
    # An absurd learning rate blows the networks up within a few updates.
    with pytest.raises(SystemExit) as stop:
        run(script, "mpe-simple_spread_3ag", tmp_path, **absurd_lr, num_evaluations=4,
            total_timesteps=4 * 3 * 4 * 8, num_seeds=1, save_model=False)
    message = str(stop.value)
    assert "non-finite loss at update" in message and "metrics.jsonl" in message
    run_dir = os.path.join(tmp_path, os.listdir(tmp_path)[0])
    update = int(message.split("update ")[1].split(" ")[0])
    assert len(read_metrics(run_dir)) == (update - 1) // 3  # every checkpoint before the bad one was kept
    assert os.path.exists(os.path.join(run_dir, "summary.json"))


def test_ctrl_c_keeps_a_readable_metrics_file(tmp_path, monkeypatch):
    import ippo

    real_summarise, calls = ippo.summarise, []

    def interrupt_on_second_checkpoint(evaluation):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_summarise(evaluation)

    monkeypatch.setattr(ippo, "summarise", interrupt_on_second_checkpoint)
    with pytest.raises(SystemExit, match="interrupted after evaluation 1 of 3; "):
        run("ippo", "coordsum-3x10", tmp_path, num_evaluations=3, total_timesteps=3 * 32, save_model=False)
    run_dir = os.path.join(tmp_path, os.listdir(tmp_path)[0])
    assert [r["checkpoint"] for r in read_metrics(run_dir)] == [1]
    assert "step_0" in list(list(json.load(open(os.path.join(run_dir, "summary.json")))["coordsum"].values())[0]["ippo"].values())[0]


def test_track_logs_every_seeds_evaluations_to_wandb_offline_in_a_group(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, _, run_dir = run("ippo", "coordsum-3x10", tmp_path, track=True, num_seeds=2, seed=4, save_model=False,
                        wandb_group="sweep-17", wandb_tags=("first-try",))
    logs = [os.path.join(d, f) for d, _, files in os.walk(run_dir) for f in files if f.endswith(".wandb")]
    assert len(logs) == 1  # one offline wandb run, inside the run directory
    data = open(logs[0], "rb").read()  # protobuf records: the logged keys are stored as plain strings
    for key in ("episode_return_mean", "episode_length_mean", "actor_loss", "sps",  # the means over seeds
                "seed_4/episode_return_mean", "seed_5/episode_return_mean", "seed_5/actor_loss",  # each seed's
                "sweep-17", "first-try", "2 seeds"):  # the group and the tags
        assert key.encode() in data, key
    assert b"seed_6/" not in data


def test_pure_train_function_makes_the_updates_main_makes():
    """`train(key, hp)` (one pure function, PureJaxRL's shape) computes what main() computes one compiled
    update_then_evaluate call at a time."""
    import jax

    import ippo

    args = ippo.Args(env_id="coordsum-3x10", **{k: v for k, v in TINY.items() if k not in ("num_seeds", "save_model")})
    trainer = ippo.make_train(args, ippo.make_env(args.env_id))
    hp = ippo.hparams_from_args(args)
    key = jax.random.PRNGKey(11)
    _, metrics = jax.jit(trainer.train)(key, hp)
    runner, n = trainer.init(key, hp), trainer.num_updates_per_eval
    update = jax.jit(ippo.update_then_evaluate(trainer))
    for i in range(args.num_evaluations):
        for u in range(n):
            runner, stats, evaluation = update(runner, hp, u == n - 1)
            np.testing.assert_allclose(metrics["train"]["actor_loss"][i][u], stats["actor_loss"], rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(metrics["eval"]["episode_return"][i], evaluation["eval"]["episode_return"], rtol=1e-5)


@pytest.mark.parametrize("script", ["ippo", pytest.param("magpo_sable", marks=pytest.mark.slow)])
def test_a_loss_past_the_bound_warns_once_and_the_run_goes_on(script, tmp_path, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.setattr(module, "LOSS_WARNING", 0.0)  # every loss passes it, at every checkpoint
    _, _, run_dir = run(script, "coordsum-3x10", tmp_path, num_seeds=1, save_model=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "by evaluation 1 (above 0e+00)" in warnings[0]
    assert len(read_metrics(run_dir)) == 2  # a warning, not a stop


def test_every_plus_minus_on_the_terminal_says_what_it_is_over(capsys):
    """One seed: the spread of its evaluation episodes; several: the spread of the seeds' means."""
    from types import SimpleNamespace

    import ippo

    line = {"env_steps": 64, "sps": 10.0, "episode_return_mean": [6.0, 8.0], "episode_return_std": [4.0, 1.0]}
    for num_seeds, expected in [(2, "policy episode_return    7.000 ± 1.000 (sd over 2 seeds) | ETA"),
                                (1, "policy episode_return    6.000 ± 4.000 (sd over 32 episodes) | ETA")]:
        record = {k: v[:num_seeds] if isinstance(v, list) else v for k, v in line.items()}
        run = SimpleNamespace(args=ippo.Args(num_seeds=num_seeds), env=SimpleNamespace(suite="coordsum"),
                              records=[record], done=1, points=[{}])
        ippo.print_evaluation(run, eta=0.0)
        assert expected in capsys.readouterr().out
    assert ippo.spread(0.0, 1, "seed") == " (1 seed)"  # the absolute metric of one seed has no ± at all
