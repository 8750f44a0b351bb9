#!/usr/bin/env bash
# The GPU check in one command, on a machine as it is: its own python3 with jax (CUDA) and flax, optax, chex,
# orbax-checkpoint, numpy, scipy, matplotlib, pillow; no package registry needed. The packages the scripts need
# beyond those travel as wheels in benchmark/wheels/ (made beforehand, where PyPI is reachable, by
# benchmark/gpu_wheels.sh); they are installed here with `pip install --no-index --no-deps --target`, then
# benchmark/gpu_check.py imports every script, smoke-runs each, measures compile time, steps/s (1 and 10 seeds,
# --run-batching vmap) and GPU memory at the paper's values on coordsum-3x10 and rware-tiny-2ag, runs a short
# learning check and estimates the paper's protocol. About 7 minutes on one GPU (--budget-s 420 caps it).
#
#   bash benchmark/gpu_check.sh OUT                      # tables into OUT/gpu_check.{md,json,log}
#   bash benchmark/gpu_check.sh                          # OUT: $OUT where set (a device call), else benchmark/results/gpu
#   GPU_CHECK_TOY=1 bash benchmark/gpu_check.sh /tmp/gc  # toy sizes on a CPU: every step, ~10 min on 2 cores
#   bash benchmark/gpu_check.sh OUT --scripts ippo --tasks coordsum-3x10   # anything after OUT goes to gpu_check.py
#
# PYTHON picks the interpreter (default python3); GPU_CHECK_WHEELS the wheel folder (default benchmark/wheels; none
# there: the interpreter's own packages are used); GPU_CHECK_COMMIT names the commit where the tree has no .git.
# docs/gpu.md says how to run it on a lent GPU machine and behind a firewall.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-${OUT:-benchmark/results/gpu}}")"
[ $# -gt 0 ] && shift
python="${PYTHON:-python3}"
wheels="${GPU_CHECK_WHEELS:-benchmark/wheels}"
mkdir -p "$out"
started=$SECONDS
if compgen -G "$wheels/*.whl" > /dev/null; then
  site="$(mktemp -d)/site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "[gpu_check] $(ls "$wheels"/*.whl | wc -l) wheels from $wheels installed into $site in $((SECONDS - started)) s (no index)"
else
  echo "[gpu_check] no wheels in $wheels: the packages must be importable by $python already"
fi
toy=()
[ -n "${GPU_CHECK_TOY:-}" ] && toy=(--toy)
exec "$python" benchmark/gpu_check.py --out "$out" "${toy[@]}" "$@"
