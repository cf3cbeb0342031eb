#!/usr/bin/env bash
# Paired speed run on one quiet machine: this checkout against another checkout of mbrlax
# (e.g. `git worktree add /tmp/old <commit>`), same venv, back to back. Per-unit figures
# (ms per model minibatch, ms per SAC update, s per 1000 env steps) go to OUT/*.json.
# usage: bash benchmarks/speed_pair.sh OLD_CHECKOUT OUT_DIR
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$(dirname "$0")/.." && pwd); mkdir -p "$2"; out=$(cd "$2" && pwd)
mkdir -p "$out"
bench() { (cd "$1" && python -m mbrlax.cli bench "${@:3}" | tail -1 > "$out/$2.json"); echo "$2: $(cat "$out/$2.json")"; }
for i in 1 2 3; do  # alternated: the machine's speed drifts
  bench "$new" throughput_new_$i --throughput
  bench "$old" throughput_old_$i --throughput
done
(cd "$new" && taskset -c 0 python -m mbrlax.cli bench --throughput | tail -1 > "$out/throughput_new_1core.json")
echo "throughput_new_1core: $(cat "$out/throughput_new_1core.json")"
bench "$new" hopper_new --env Hopper-v5
bench "$old" hopper_old --env Hopper-v5
