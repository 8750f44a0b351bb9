#!/usr/bin/env bash
# Every run behind results/, then the tables and plots. Resumable: a run whose benchmark.json is
# already in results/runs/ (written when a run finishes) is skipped, so the job can be stopped and
# started again. On the 2-core CPU this was made on, CoordSum-3x10's seven runs took 1 h 43 min.
#   bash results/reproduce.sh            # runs, then aggregation
#   bash results/reproduce.sh aggregate  # tables and plots from the runs already there
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=results/runs
SEEDS=3
# The paper trains 20M steps per seed; on 2 CPU cores that is days per configuration, so every run
# here uses the same reduced budget, 12 updates of 128 envs x 128 steps = 196,608 steps per seed,
# with an evaluation after every 2 updates.
BUDGET=(--total-timesteps 196608 --num-evaluations 6 --num-seeds "$SEEDS" --output-dir "$RUNS")

finished() {  # finished SCRIPT ENV_ID PLAIN -> success if that run is already in $RUNS
  python - "$RUNS" "$@" <<'PY'
import glob, json, sys
runs, script, env_id, plain = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "plain"
done = any(json.load(open(p)).get("script") == script and json.load(open(p)).get("env_id") == env_id
           and json.load(open(p)).get("plain") == plain for p in glob.glob(f"{runs}/*/benchmark.json"))
sys.exit(0 if done else 1)
PY
}

run() {  # run SCRIPT ENV_ID [plain]
  local plain="${3:-}"
  if finished "$1" "$2" "${plain:-guided}"; then echo "have $1 $2 $plain"; return; fi
  python benchmark/run.py "$1" "$2" ${plain:+--plain} "${BUDGET[@]}"
}

if [ "${1:-}" != aggregate ]; then
  # A run stopped halfway leaves a folder without benchmark.json; drop it, or aggregate.py would pool it.
  for dir in "$RUNS"/*/; do
    if [ -d "$dir" ] && [ ! -f "$dir/benchmark.json" ]; then echo "removing unfinished $dir"; rm -rf "$dir"; fi
  done
  # CoordSum-3x10 first (the paper's headline task), then one task of every other suite for
  # magpo_sable and mappo, then the other three CoordSum tasks.
  for task in coordsum-3x10; do
    for script in ippo mappo magpo_mat magpo_sable ctds; do run "$script" "$task"; done
    run magpo_mat "$task" plain
    run magpo_sable "$task" plain
  done
  for task in rware-tiny-2ag lbf-2s-8x8-2p-2f-coop con-5x5x3a mpe-simple_spread_3ag smax-2s3z; do
    run mappo "$task"
    run magpo_sable "$task"
  done
  for task in coordsum-3x30 coordsum-5x20 coordsum-8x15; do
    for script in ippo mappo magpo_mat magpo_sable ctds; do run "$script" "$task"; done
    run magpo_mat "$task" plain
    run magpo_sable "$task" plain
  done
fi
python benchmark/aggregate.py "$RUNS" --out results
