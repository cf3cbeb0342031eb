#!/usr/bin/env bash
# The README's "MBPO on InvertedPendulum-v5" table: the default job (`mbrlax train`: MBPO, 5,000 env steps,
# 5 evaluation episodes every 250 steps) for seeds 0-4 as one sweep, then each seed's metrics.csv, the sweep's
# summary.csv and the per-seed table into results/ip_mbpo/. Resumable: run it again to continue.
#
#   taskset -c 1 bash benchmarks/ip_mbpo.sh        # on one core (the sweep runs one trial per usable core)
set -euo pipefail
OUT=${OUT:-runs/ip_mbpo}
mbrlax sweep --algo mbpo --env InvertedPendulum-v5 --seeds 0-4 --steps 2500,5000 --out "$OUT"
mkdir -p results/ip_mbpo
for d in "$OUT"/mbpo__InvertedPendulum-v5__s*; do cp "$d/metrics.csv" "results/ip_mbpo/${d##*__}.csv"; done
cp "$OUT/summary.csv" results/ip_mbpo/summary.csv
python benchmarks/summarize.py --first-reaching 900 "$OUT"/mbpo__InvertedPendulum-v5__s* | tee results/ip_mbpo/table.md
