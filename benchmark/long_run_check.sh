#!/usr/bin/env bash
# By-hand checks of issue #25, longer than the tests' runs (minutes, not seconds), for every script:
#  1. kill and resume: a run of 8 evaluations, SIGKILLed once its 3rd metrics line is written, resumed with
#     --resume, must write metrics.jsonl and summary.json equal to an unbroken run's (wall_time and sps aside);
#  2. watch: each script trains on a task of its own suite with --save-model --capture-video, then evaluates and
#     draws its saved learner (and guider) with --evaluate ... --capture-video.
# Usage: bash benchmark/long_run_check.sh [OUT_DIR]   (about 25 minutes on 2 CPU cores)
set -u
OUT=${1:-/tmp/long_run_check}
PY=${PYTHON:-python}
rm -rf "$OUT" && mkdir -p "$OUT"
SIZE="--env-id coordsum-3x10 --num-envs 16 --rollout-length 32 --total-timesteps 32768 --num-evaluations 8 --num-seeds 2"
declare -A SMALL=([ippo]="" [mappo]="" [magpo_sable]="--embed-dim 32 --n-block 1 --n-head 1"
                  [ctds]="--embed-dim 32 --n-block 1 --n-head 1" [magpo_mat]="--embed-dim 32 --n-block 1 --n-head 1")
status=0
for script in ippo mappo magpo_sable ctds magpo_mat; do
  $PY "$script.py" $SIZE ${SMALL[$script]} --output-dir "$OUT/$script-unbroken" > "$OUT/$script-unbroken.log" 2>&1
  $PY "$script.py" $SIZE ${SMALL[$script]} --output-dir "$OUT/$script-killed" > "$OUT/$script-killed.log" 2>&1 &
  pid=$!
  until [ "$(cat "$OUT"/$script-killed/*/metrics.jsonl 2>/dev/null | wc -l)" -ge 3 ] || ! kill -0 $pid 2>/dev/null; do
    sleep 0.2
  done
  kill -9 $pid; wait $pid 2>/dev/null
  run=$(ls -d "$OUT"/$script-killed/*/)
  lines=$(wc -l < "$run/metrics.jsonl")
  $PY "$script.py" --resume "$run" > "$OUT/$script-resumed.log" 2>&1
  $PY - "$OUT/$script-unbroken" "$run" "$script" "$lines" <<'EOF' || status=1
import glob, json, os, sys
unbroken, killed, script, lines = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
a = glob.glob(os.path.join(unbroken, "*", "metrics.jsonl"))[0]
strip = lambda r: {k: v for k, v in r.items() if k not in ("wall_time", "sps")}
ra = [strip(json.loads(line)) for line in open(a)]
rb = [strip(json.loads(line)) for line in open(os.path.join(killed, "metrics.jsonl"))]
sa = json.load(open(os.path.join(os.path.dirname(a), "summary.json")))
sb = json.load(open(os.path.join(killed, "summary.json")))
ok = ra == rb and sa == sb
print(f"{script}: killed with {lines} metrics lines written, resumed: {len(rb)} lines, "
      f"{'identical to' if ok else 'DIFFERENT from'} the unbroken run's metrics.jsonl and summary.json")
sys.exit(0 if ok else 1)
EOF
done
# 2. Every script on a task of its own suite, learner and guider drawn from their saved files.
declare -A TASK=([ippo]=rware-tiny-2ag [mappo]=lbf-2s-8x8-2p-2f-coop [magpo_sable]=smax-2s3z
                 [ctds]=con-5x5x3a [magpo_mat]=mpe-simple_spread_3ag)
for script in ippo mappo magpo_sable ctds magpo_mat; do
  flags="--env-id ${TASK[$script]} --num-envs 8 --rollout-length 16 --total-timesteps 256 --num-evaluations 2 --num-eval-episodes 4 --layer-size 32 --gru-size 32 ${SMALL[$script]}"
  $PY "$script.py" $flags --save-model --capture-video --output-dir "$OUT/$script-watch" > "$OUT/$script-watch.log" 2>&1 || status=1
  run=$(ls -d "$OUT"/$script-watch/*/)
  for file in "$run"actor_best.msgpack "$run"guider_best.msgpack; do
    [ -f "$file" ] || continue
    $PY "$script.py" $flags --evaluate "$file" --capture-video >> "$OUT/$script-watch.log" 2>&1 || status=1
  done
  echo "$script on ${TASK[$script]}: $(grep -c '^video of' "$OUT/$script-watch.log") video(s): $(cd "$run" && ls *.gif | tr '\n' ' ')"
done
exit $status
