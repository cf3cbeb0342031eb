#!/usr/bin/env bash
# PMAC vs MBPO on Hopper-v5 (issue 10, experiment 2): 30k env steps, 3 seeds each,
# 5 deterministic evaluation episodes every 1000 steps (the Hopper preset's epoch).
# Runs are queued on the cores in CORES (one run per core at a time, each pinned with
# taskset); a run directory that already holds a checkpoint is continued with
# `mbrlax resume`, a finished one is skipped, so re-running the script resumes everything.
#
#   bash benchmarks/pmac_hopper.sh                       # all 6 runs on cores 0 and 1
#   CORES="1" SEEDS="0" ALGOS="pmac" bash benchmarks/pmac_hopper.sh
#   TOTAL=300 EXTRA="--init-steps 200 --steps-per-epoch 100 --model.train-freq 100" OUT=/tmp/smoke \
#       bash benchmarks/pmac_hopper.sh                   # smoke check
# Summary afterwards:
#   python benchmarks/summarize.py --steps 10000,20000,30000 --mean-between 10000,30000 results/hopper30k_*
#   mbrlax plot results/hopper30k_* -o results/hopper30k.png
set -euo pipefail
OUT=${OUT:-results}
TOTAL=${TOTAL:-30000}
SEEDS=${SEEDS:-"0 1 2"}
ALGOS=${ALGOS:-"pmac mbpo"}
CORES=${CORES:-"0 1"}
EXTRA=${EXTRA:-}

run_one() {  # core algo seed
  local core=$1 algo=$2 seed=$3 dir="$OUT/hopper30k_${2}_s${3}"
  if [[ -f "$dir/checkpoints/ckpt.npz" || -f "$dir/checkpoints/ckpt.prev.npz" ]]; then
    if python - "$dir" "$TOTAL" <<'EOF'
import sys
from mbrlax.run.metrics import read_metrics
m = read_metrics(sys.argv[1])
sys.exit(0 if len(m["env_steps"]) and m["env_steps"][-1] >= int(sys.argv[2]) else 1)
EOF
    then echo "done: $dir"; return; fi
    echo "resume: $dir (core $core)"
    taskset -c "$core" mbrlax resume "$dir" > "$dir.log" 2>&1
  else
    echo "train: $dir (core $core)"
    mkdir -p "$OUT"
    # shellcheck disable=SC2086
    taskset -c "$core" mbrlax train --env Hopper-v5 --algo "$algo" --seed "$seed" --total-steps "$TOTAL" \
      --eval-episodes 5 --no-progress --out "$dir" $EXTRA > "$dir.log" 2>&1
  fi
}

jobs=()
for seed in $SEEDS; do for algo in $ALGOS; do jobs+=("$algo $seed"); done; done
cores=($CORES)
for i in "${!cores[@]}"; do
  (
    for j in "${!jobs[@]}"; do
      if (( j % ${#cores[@]} == i )); then run_one "${cores[$i]}" ${jobs[$j]}; fi
    done
  ) &
done
wait
