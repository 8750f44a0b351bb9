"""Data parallelism over several devices (the environment batch is split over all local
devices, gradients averaged across them). CPU stands in for GPUs here: XLA_FLAGS
--xla_force_host_platform_device_count=2 gives one process two devices, so each check runs in a
subprocess of its own. There, every script trains one interval twice from the same seeds: once as
it is (split over both devices) and once with the split turned off (everything on device 0). The
two must agree up to the order of floating-point sums, and the first must really be split."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_NETWORKS = {name: dict(embed_dim=16, n_block=1, n_head=1) for name in ("magpo_sable", "ctds", "magpo_mat")}

PROGRAM = """
import importlib, json, sys
import jax, jax.numpy as jnp, numpy as np
script, env_id, network = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
module = importlib.import_module(script)
args = module.Args(env_id=env_id, num_envs=8, rollout_length=8, total_timesteps=2 * 8 * 8, num_evaluations=1,
                   num_eval_episodes=4, num_minibatches=2, ppo_epochs=2, layer_size=16, gru_size=16, num_seeds=2,
                   **network)
env = module.validate(args)

def train_one_interval():
    trainer, hp = module.make_train(args, env), module.hparams_from_args(args)
    runner = jax.jit(jax.vmap(trainer.init, in_axes=(0, None)))(jax.vmap(jax.random.PRNGKey)(jnp.arange(2)), hp)
    learn = jax.jit(jax.vmap(trainer.learn, in_axes=(0, None))).lower(runner, hp).compile()
    runner, out = learn(runner, hp)
    envs_per_device = sorted({shard.data.shape[1] for shard in runner.start.addressable_shards})
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]).tolist()
    return {"envs_per_device": envs_per_device, "all_reduce": "all-reduce" in learn.as_text(),
            "out": flat(out), "params": flat(runner.actor_params)}

split = train_one_interval()
module.make_env_sharding = lambda: (lambda tree, env_axis=0: tree)
unsplit = train_one_interval()
try:
    module.validate(module.Args(env_id=env_id, num_envs=6, num_minibatches=2))
    error = None
except module.UsageError as e:
    error = str(e)
print("RESULT " + json.dumps({"devices": jax.device_count(), "split": split, "unsplit": unsplit, "error": error}))
"""


@pytest.mark.parametrize("script, env_id", [("ippo", "coordsum-3x10"),
                                            # mappo (its critic's global state sharded too) and the guided scripts
                                            # (the guider's state too): opt-in, for CI time
                                            pytest.param("mappo", "coordsum-3x10", marks=pytest.mark.slow),
                                            pytest.param("magpo_sable", "coordsum-3x10", marks=pytest.mark.slow),
                                            # RWARE's sharded grid state: 3 minutes on 2 cores, so opt-in
                                            pytest.param("magpo_sable", "rware-tiny-2ag", marks=pytest.mark.slow),
                                            pytest.param("ctds", "coordsum-3x10", marks=pytest.mark.slow),
                                            pytest.param("magpo_mat", "coordsum-3x10", marks=pytest.mark.slow)])
def test_two_devices_split_the_environments_and_match_one_device(script, env_id):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    done = subprocess.run([sys.executable, "-c", PROGRAM, script, env_id, json.dumps(TINY_NETWORKS.get(script, {}))],
                          cwd=ROOT, env={**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["devices"] == 2
    split, unsplit = result["split"], result["unsplit"]
    # Split: each device holds 4 of the 8 environments, and the gradients meet in an all-reduce.
    assert split["envs_per_device"] == [4] and split["all_reduce"]
    assert unsplit["envs_per_device"] == [8] and not unsplit["all_reduce"]
    # Same losses, evaluation and parameters either way.
    np.testing.assert_allclose(split["out"], unsplit["out"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(split["params"], unsplit["params"], rtol=1e-4, atol=1e-5)
    # 6 environments in 2 minibatches leave 3 per minibatch, which 2 devices cannot share.
    assert "--num-envs / --num-minibatches (3 environments per minibatch)" in result["error"]
    assert "2 devices" in result["error"]


def test_distributed_two_processes_train_like_one_process_with_two_devices(tmp_path):
    """`--distributed` on two hosts, played by two local processes with one CPU device each, started the
    way SLURM starts them (jax.distributed finds its peers from SLURM's variables; gloo carries the
    collectives between CPU processes). They must compute what one process with two devices computes,
    and only process 0 may write a run directory."""
    flags = ["--env-id", "coordsum-3x10", "--num-envs", "8", "--rollout-length", "8", "--total-timesteps", "128",
             "--num-evaluations", "2", "--num-eval-episodes", "4", "--num-minibatches", "2", "--ppo-epochs", "1",
             "--layer-size", "16", "--gru-size", "16", "--num-seeds", "2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    slurm = {**env, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo", "SLURM_JOB_ID": str(os.getpid()),
             "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2"}
    hosts = [subprocess.Popen([sys.executable, "ippo.py", *flags, "--distributed", "--output-dir", str(tmp_path / "hosts")],
                              cwd=ROOT, env={**slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    one = subprocess.run([sys.executable, "ippo.py", *flags, "--output-dir", str(tmp_path / "one")], cwd=ROOT,
                         env={**env, "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()},
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    outputs = [host.communicate(timeout=600)[0] for host in hosts]
    for host, output in zip(hosts, outputs):
        assert host.returncode == 0, output[-3000:]
    assert "ippo-process-" in outputs[1] and "ippo-process-" not in outputs[0]  # process 1 knew it was not 0
    [host_run] = os.listdir(tmp_path / "hosts")  # process 1 wrote nothing here
    [one_run] = os.listdir(tmp_path / "one")

    def read(folder):
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        return {k: np.asarray([r[k] for r in records], np.float64) for k in records[0]
                if k.endswith("_mean") or k in ("actor_loss", "value_loss", "entropy")}, len(records)

    (hosts_metrics, n_hosts), (one_metrics, n_one) = read(tmp_path / "hosts" / host_run), read(tmp_path / "one" / one_run)
    assert n_hosts == n_one == 2 and hosts_metrics.keys() == one_metrics.keys()
    for name in one_metrics:
        np.testing.assert_allclose(hosts_metrics[name], one_metrics[name], rtol=1e-4, atol=1e-5, err_msg=name)
