#!/usr/bin/env bash
# Every run behind results/, then the tables and plots. Resumable: a run whose benchmark.json is
# already in its runs folder (written when a run finishes) is skipped, so the job can be stopped and
# started again.
#   bash results/reproduce.sh            # both parts below, runs then tables and plots
#   bash results/reproduce.sh gap        # part 1 only: "The imitation gap at CPU scale" (results/gap/)
#   bash results/reproduce.sh budget     # part 2 only: the paper's tasks at 1% of its budget (results/runs/)
#   bash results/reproduce.sh aggregate  # the tables and plots of both parts from the runs already there
set -euo pipefail
cd "$(dirname "$0")/.."
PART="${1:-all}"
case "$PART" in all|gap|budget|aggregate) ;; *) echo "usage: bash results/reproduce.sh [gap|budget|aggregate]" >&2; exit 2;; esac

finished() {  # finished RUNS SCRIPT ENV_ID PLAIN [STEPS] -> success if that run is already in RUNS (at STEPS)
  python - "$@" <<'PY'
import glob, json, os, sys
runs, script, env_id, plain = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "plain"
steps = int(sys.argv[5]) if len(sys.argv) > 5 else None
found = []
for p in glob.glob(f"{runs}/*/benchmark.json"):
    info = json.load(open(p))
    if (info.get("script"), info.get("env_id"), info.get("plain")) == (script, env_id, plain):
        found.append(json.load(open(os.path.join(os.path.dirname(p), "args.json")))["total_timesteps"])
if steps is not None and any(n != steps for n in found):
    # A run at another budget would be pooled with the new one: the tables would mix budgets.
    print(f"error: {runs} has a {script} run on {env_id} at {found} steps, not {steps}: move it away first",
          file=sys.stderr)
    sys.exit(3)
sys.exit(0 if found else 1)
PY
}

drop_unfinished() {  # a run stopped halfway leaves a folder without benchmark.json: drop it, or it would be pooled
  for dir in "$1"/*/; do
    if [ -d "$dir" ] && [ ! -f "$dir/benchmark.json" ]; then echo "removing unfinished $dir"; rm -rf "$dir"; fi
  done
}

# ---------------------------------------------------------------------------------------------------------------
# Part 1, "The imitation gap at CPU scale" (results/README.md's first section, results/gap/). CoordSum sizes small
# enough to train on 2 cores in under an hour per method (the plateau check finds no policy still rising on 2x2 and
# 2x3; on 2x4 every policy is still rising), 5 seeds, every script at its defaults (the paper's Tables 2-3)
# with one rule shared by every method: 32 environments instead of 128 (4x the updates per step). Plain Sable is
# not run apart: with --delta inf --alpha 0 magpo_sable.py computes what ctds.py computes (tests/test_ctds.py), so
# CTDS's teacher is the Sable row. On a 2-core Intel Xeon (2026-12-05), two at a time, each pinned to one core
# (taskset), the 2x2 runs took 1 h 26 min and the 2x3 runs about 1 h 09 min; one after another, as below,
# longer. 2x4: about 55 min (an AMD EPYC).
GAP=results/gap
GAP_BUDGET=(--num-envs 32 --num-seeds 5 --num-evaluations 12 --output-dir "$GAP/runs")
gap_runs() {
  drop_unfinished "$GAP/runs"
  local task steps script
  for task in coordsum-2x2:2359296 coordsum-2x3:1769472 coordsum-2x4:393216; do
    steps="${task#*:}" task="${task%%:*}"
    for script in ctds magpo_sable ippo mappo; do
      if finished "$GAP/runs" "$script" "$task" guided "$steps"; then echo "have $script $task"; continue
      elif [ $? -ne 1 ]; then exit 2; fi
      # --save-model keeps the centralised policies, which results/joint_policy.py reads
      python benchmark/run.py "$script" "$task" "${GAP_BUDGET[@]}" --total-timesteps "$steps" \
        $([ "$script" = ctds ] || [ "$script" = magpo_sable ] && echo --save-model)
      # Keep what the tables and joint_policy.py read: the resume checkpoint and the other parameter files are
      # 25 MB a run, more than the rest of results/ together.
      for dir in "$GAP"/runs/*/; do rm -rf "$dir/checkpoint" "$dir"/actor_*.msgpack "$dir/guider_final.msgpack"; done
    done
  done
}
gap_tables() {
  if ! compgen -G "$GAP/runs/*/benchmark.json" > /dev/null; then echo "no finished runs in $GAP/runs: skipping"; return; fi
  python benchmark/aggregate.py "$GAP/runs" --out "$GAP" --overwrite  # replaces the committed tables on purpose
  python results/gap_report.py "$GAP/runs" --out "$GAP"
  local dir name
  for dir in "$GAP"/runs/*__ctds__*/ "$GAP"/runs/*__magpo_sable__*/; do
    [ -d "$dir" ] || continue
    name="$(python -c "import json,sys; a=json.load(open(sys.argv[1])); print(a['env_id'].split('-')[1] + '_' + a['algorithm'])" \
      "$dir/args.json")"  # e.g. 2x4_ctds
    python results/joint_policy.py "$dir" --out "$GAP/joint_policy_$name.md"
  done
}

# ---------------------------------------------------------------------------------------------------------------
# Part 2: the paper's tasks at 1% of its budget (results/runs/, the sections below the first in results/README.md).
RUNS=results/runs
SEEDS=3
# The paper trains 20M steps per seed; on 2 CPU cores that is days per configuration, so every run
# here uses the same reduced budget, 12 updates of 128 envs x 128 steps = 196,608 steps per seed,
# with an evaluation after every 2 updates. On the 2-core CPU this was made on, CoordSum-3x10's seven runs
# took 1 h 43 min.
BUDGET=(--total-timesteps 196608 --num-evaluations 6 --num-seeds "$SEEDS" --output-dir "$RUNS")

run() {  # run SCRIPT ENV_ID [plain]
  local plain="${3:-}"
  if finished "$RUNS" "$1" "$2" "${plain:-guided}"; then echo "have $1 $2 $plain"; return; fi
  python benchmark/run.py "$1" "$2" ${plain:+--plain} "${BUDGET[@]}"
}

budget_runs() {
  drop_unfinished "$RUNS"
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
}
budget_tables() {
  if ! compgen -G "$RUNS/*/benchmark.json" > /dev/null; then echo "no finished runs in $RUNS: skipping"; return; fi
  python benchmark/aggregate.py "$RUNS" --out results --overwrite  # replaces the committed tables on purpose
}

case "$PART" in
  gap) gap_runs; gap_tables ;;
  budget) budget_runs; budget_tables ;;
  aggregate) gap_tables; budget_tables ;;
  all) gap_runs; gap_tables; budget_runs; budget_tables ;;
esac
