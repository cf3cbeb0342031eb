#!/usr/bin/env bash
# Hopper-v5 to 30k env steps, 5 deterministic evaluation episodes every 1000 steps, for the
# model-usage comparisons: PMAC vs MBPO (issue 10, experiment 2; the ablations of experiment 3)
# and MEMR vs MBPO vs uniform-start MEMR (issue 11, experiment 1). The MBPO runs serve both; SAC
# (real data only, 1 update per env step) is the model-free baseline.
#
# Variants: mbpo, sac, pmac, pmac-model-only, pmac-starts-only, memr, memr-uniform (--memr.alpha 0).
# Jobs go seed by seed (every variant's seed 0 first) to whichever core in CORES is free, one run
# per core at a time, each pinned with taskset and niced. A run directory that holds a checkpoint is
# continued with `mbrlax resume`, a finished one is skipped, and one that another process is
# writing is waited for, so re-running the script (e.g. in a new session) resumes everything.
#
#   bash benchmarks/hopper30k.sh                                   # everything, on cores 0 and 1
#   VARIANTS="memr memr-uniform" SEEDS="0" CORES="1" bash benchmarks/hopper30k.sh
#   TOTAL=300 EXTRA="--init-steps 200 --steps-per-epoch 100 --model.train-freq 100" OUT=/tmp/smoke \
#       VARIANTS="pmac memr" SEEDS=0 bash benchmarks/hopper30k.sh  # smoke check
#   bash benchmarks/hopper30k.sh collect    # copy each run's config.json + metrics.csv to results/hopper30k/
#                                           # and pack every unfinished run in OUT into results/carry/
# (each run is also collected as soon as it ends; RESULTS=dir copies elsewhere, e.g. when the script
# runs from a snapshot of the code outside the checkout). The machine may not outlive the session: commit
# results/carry/ after collecting; on a new machine the script first restores those packs into OUT
# (benchmarks/carry.py: the runs continue with their model buffers emptied at the packs' env steps).
# Summary and curves afterwards, from the run directories or from the copies in results/:
#   python benchmarks/summarize.py --group --steps 10000,20000,30000 --mean-between 10000,30000 results/hopper30k/*_s*
#   mbrlax plot results/hopper30k/*_s* -o results/hopper30k/curves.png
set -euo pipefail
OUT=${OUT:-/work/runs}
TOTAL=${TOTAL:-30000}
SEEDS=${SEEDS:-"0 1 2"}
VARIANTS=${VARIANTS:-"pmac mbpo sac memr memr-uniform pmac-model-only pmac-starts-only"}
CORES=${CORES:-"0 1"}
EXTRA=${EXTRA:-}
RESULTS=${RESULTS:-"$(cd "$(dirname "$0")/.." && pwd)/results/hopper30k"}  # where collect copies to
CARRY=${CARRY:-"$(dirname "$RESULTS")/carry"}  # packs of unfinished runs (benchmarks/carry.py)
CARRY_PY="$(dirname "$0")/carry.py"

variant_flags() {
  case $1 in
    pmac-model-only) echo "--algo pmac --pmac.no-for-starts" ;;
    pmac-starts-only) echo "--algo pmac --pmac.no-for-model" ;;
    memr-uniform) echo "--algo memr --memr.alpha 0" ;;
    mbpo|sac|pmac|memr) echo "--algo $1" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
}

finished() {  # dir: its metrics reach the config's total_steps (carry.py's test)
  python - "$1" "$CARRY_PY" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[2]).parent))
from carry import finished
sys.exit(0 if finished(Path(sys.argv[1])) else 1)
EOF
}

collect_one() {  # dir: copy its config.json + metrics.csv to $RESULTS/<variant>_s<seed>/
  local dest
  dest="$RESULTS/$(basename "$1" | sed 's/^hopper30k_//')"
  [[ -f "$1/metrics.csv" ]] || return 0
  if [[ -f "$dest/metrics.csv" ]] && (( $(wc -l < "$dest/metrics.csv") > $(wc -l < "$1/metrics.csv") )); then
    echo "kept $dest: it has more rows than $1 (move it aside to replace it)"; return 0
  fi
  mkdir -p "$dest" && cp "$1/config.json" "$1/metrics.csv" "$dest/" && echo "collected $dest"
}

run_one() {  # core variant seed
  local core=$1 variant=$2 seed=$3 dir="$OUT/hopper30k_${2}_s${3}"
  while pgrep -f -- "$dir( |$)" > /dev/null; do sleep 60; done  # written by another process
  if [[ -f "$dir/checkpoints/ckpt.npz" || -f "$dir/checkpoints/ckpt.prev.npz" ]]; then
    if finished "$dir"; then echo "done: $dir"; return; fi
    echo "resume: $dir (core $core)"
    nice -n 5 taskset -c "$core" mbrlax resume "$dir" >> "$dir.log" 2>&1 || echo "FAILED: $dir (see $dir.log)"
  else
    echo "train: $dir (core $core)"
    mkdir -p "$OUT"
    # shellcheck disable=SC2046,SC2086
    nice -n 5 taskset -c "$core" mbrlax train --env Hopper-v5 $(variant_flags "$variant") --seed "$seed" \
      --total-steps "$TOTAL" --eval-episodes 5 --no-progress --out "$dir" $EXTRA > "$dir.log" 2>&1 \
      || echo "FAILED: $dir (see $dir.log)"
  fi
  collect_one "$dir"  # each finished (or failed) run lands in results/ at once, not only at the end
}

if [[ ${1:-} == collect ]]; then  # results/hopper30k/<variant>_s<seed>/: what summarize.py and `mbrlax plot` read
  for dir in "$OUT"/hopper30k_*_s*/; do collect_one "${dir%/}"; done
  python "$CARRY_PY" pack "$OUT" "$CARRY"
  exit 0
fi
# A queue whose jobs cannot start would fail each one in turn, silently: check the venv first.
if ! command -v mbrlax > /dev/null || ! python -c "import mbrlax" 2> /dev/null; then
  echo "hopper30k.sh: needs 'mbrlax' on PATH and a 'python' that imports it; activate the venv that has mbrlax installed (. .venv/bin/activate)" >&2
  exit 2
fi

[[ -d "$CARRY" ]] && python "$CARRY_PY" restore "$CARRY" "$OUT"  # a new machine: the runs packed on the last one
jobs=()
for seed in $SEEDS; do for v in $VARIANTS; do variant_flags "$v" > /dev/null; jobs+=("$v $seed"); done; done
claims="$OUT/.claims.$$"  # a worker takes a job by creating its claim (mkdir is atomic)
mkdir -p "$claims"
trap 'rm -rf "$claims"' EXIT
for core in $CORES; do
  (
    for job in "${jobs[@]}"; do
      if mkdir "$claims/${job// /_}" 2> /dev/null; then run_one "$core" $job; fi
    done
  ) &
done
wait
