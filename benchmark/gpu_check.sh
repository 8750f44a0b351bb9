#!/usr/bin/env bash
# The GPU check, in one call of at most 8 minutes on a machine with an NVIDIA GPU (CUDA 12.9+ driver):
#   1. install requirements-gpu.txt in a fresh virtualenv (skipped when PYTHON names one already set up),
#      and fail unless JAX's first device is the GPU;
#   2. train every script briefly on coordsum-3x10 and rware-tiny-2ag (the five scripts x two tasks run
#      side by side: compilation is host work, and the GPU is far from full);
#   3. benchmark/sps.py for every script at the paper's values with 128 and 1,024 environments (the four
#      task x size tables run side by side, so each figure is a lower bound: say so beside them).
#
#   bash benchmark/gpu_check.sh [OUT]            # logs, runs and tables under OUT (default benchmark/results/gpu)
#
# On a CPU, the same steps at toy sizes, to check the script itself (what CI's machine can do):
#   GPU_CHECK_CPU=1 JAX_PLATFORMS=cpu PYTHON=.venv/bin/python bash benchmark/gpu_check.sh /tmp/gpu-check
# (GPU_CHECK_SCRIPTS="ippo" GPU_CHECK_TASKS="coordsum-3x10" narrow it, e.g. for a 2-core CPU.)
# A machine without PyPI: PIP_FIND_LINKS=<wheel folder> PIP_NO_INDEX=1 (made with `pip download -r requirements-gpu.txt`).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-benchmark/results/gpu}")"
mkdir -p "$out/logs"
started=$SECONDS
say() { echo "[gpu_check $((SECONDS - started))s] $*" | tee -a "$out/gpu_check.log"; }

if [ -z "${PYTHON:-}" ]; then
  say "installing requirements-gpu.txt into /tmp/gpu-check-venv"
  python3 -m venv /tmp/gpu-check-venv
  /tmp/gpu-check-venv/bin/pip install -q -r requirements-gpu.txt
  PYTHON=/tmp/gpu-check-venv/bin/python
fi
cpu="${GPU_CHECK_CPU:-}"
"$PYTHON" - "$cpu" <<'EOF' | tee "$out/devices.txt"
import sys, jax
device = jax.devices()[0]
print(f"jax {jax.__version__}, devices {jax.devices()}, kind {device.device_kind}")
if not sys.argv[1] and device.platform != "gpu":
    sys.exit(f"gpu_check: JAX's first device is {device.platform}, not a GPU (GPU_CHECK_CPU=1 for a CPU dry run)")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia-smi.csv" 2>/dev/null || true

read -r -a scripts <<< "${GPU_CHECK_SCRIPTS:-ippo mappo magpo_sable ctds magpo_mat}"
read -r -a tasks <<< "${GPU_CHECK_TASKS:-coordsum-3x10 rware-tiny-2ag}"
if [ -n "$cpu" ]; then
  train=(--num-envs 4 --rollout-length 8 --total-timesteps 64 --num-evaluations 2 --num-eval-episodes 2)
  bench=(--rollout-length 8 --updates 1 --repeats 1)
  sizes=(8 16)  # the paper rows split the environments into 8 minibatches
else
  train=(--total-timesteps 65536 --num-evaluations 2 --num-eval-episodes 32)
  bench=(--updates 2 --repeats 2)
  sizes=(128 1024)
fi

say "short training: ${scripts[*]} on ${tasks[*]}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # ten processes share one GPU
pids=()
for script in "${scripts[@]}"; do
  for task in "${tasks[@]}"; do
    "$PYTHON" "$script.py" --env-id "$task" "${train[@]}" --output-dir "$out/runs" \
      > "$out/logs/train_${script}_${task}.log" 2>&1 &
    pids+=($!)
  done
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
say "short training done: $failed of ${#pids[@]} failed (logs in $out/logs)"
grep -H "^absolute" "$out"/logs/train_*.log | tee -a "$out/gpu_check.log" || true

say "benchmark/sps.py at the paper's values with ${sizes[*]} environments"
pids=()
for n in "${sizes[@]}"; do
  for task in "${tasks[@]}"; do
    "$PYTHON" benchmark/sps.py --scripts "${scripts[@]}" --env-ids "$task" --hparams paper --num-envs "$n" \
      "${bench[@]}" --out "$out" --name "sps_${task}_${n}envs" > "$out/logs/sps_${task}_${n}.log" 2>&1 &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
cat "$out"/sps_*.md >> "$out/gpu_check.log"
say "done: $failed step(s) failed"
exit $((failed > 0))
