#!/usr/bin/env bash
# Reproduce the README's result tables (CPU, about 3 hours on 2 cores).
set -euo pipefail
OUT=${OUT:-results}
# MBPO on InvertedPendulum-v5, 5 seeds, 5000 env steps (the default `mbrlax train`).
for s in 0 1 2 3 4; do mbrlax train --seed $s --no-progress --out $OUT/ip_mbpo_s$s; done
python benchmarks/summarize.py --first-reaching 900 $OUT/ip_mbpo_s*
# Hopper-v5, MBPO (paper settings) vs SAC (1 update per step), 2 seeds, 30k env steps.
for s in 0 1; do
  mbrlax train --env Hopper-v5 --algo mbpo --seed $s --total-steps 30000 --no-progress --out $OUT/hopper_mbpo_s$s
  mbrlax train --env Hopper-v5 --algo sac --seed $s --total-steps 30000 --no-progress --out $OUT/hopper_sac_s$s
done
python benchmarks/summarize.py --steps 10000,20000,30000 $OUT/hopper_*
mbrlax plot $OUT/hopper_* -o $OUT/hopper.png
# Speed at MBPO's Hopper settings, and at mbrl-lib's defaults (40 updates, width 512).
mbrlax bench --env Hopper-v5
mbrlax bench --env Hopper-v5 --updates-per-step 40 --sac-width 512
mbrlax bench --throughput
