"""Markdown table of eval returns at given env steps for a set of runs.

    python benchmarks/summarize.py --steps 10000,20000,30000 --mean-between 10000,30000 RUN_DIR...
    python benchmarks/summarize.py --first-reaching 900 RUN_DIR...
    python benchmarks/summarize.py --group --steps 10000,20000,30000 --mean-between 10000,30000 \
        --csv results/hopper30k_summary.csv RUN_DIR...

--group: one row per variant (run directory names without their trailing _sN), mean +- standard
error over its seeds (a seed's window value is the mean of its evals in the window), the agent
updates and the wall time per 1000 env steps (the run's mean, split by phase, and the median over
its learning intervals, which leaves pauses and busy neighbours mostly out); --csv also writes those rows.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from mbrlax.run.metrics import read_metrics
from mbrlax.run.summary import PHASES, eval_keys, fmt, group_rows, run_values, write_csv


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[],
                   help="comma-separated env steps, e.g. 10000,20000,30000")
    p.add_argument("--first-reaching", type=float, default=None)
    p.add_argument("--mean-between", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="A,B: also the mean of the evals at env steps A..B (and how many there were)")
    p.add_argument("--group", action="store_true", help="one row per variant: mean +- s.e. over seeds")
    p.add_argument("--csv", default=None, help="with --group: also write the rows to this CSV file")
    args = p.parse_args()
    if args.group:
        return grouped(args)
    cols = [f"{s // 1000}k" for s in args.steps]
    if args.mean_between is not None:
        lo, hi = args.mean_between
        cols.append(f"mean of the evals {lo // 1000}k-{hi // 1000}k")
    if args.first_reaching is not None:
        cols += [f"first step with eval >= {args.first_reaching:g}", "final eval"]
    cols.append("wall time")
    print("| run | algo | seed | " + " | ".join(cols) + " |")
    print("|---" * (3 + len(cols)) + "|")
    for run in args.runs:
        if not (Path(run) / "config.json").is_file():
            print(f"(skipped {run}: not a run directory)", file=sys.stderr)
            continue
        m = read_metrics(run)
        cfg = json.loads((Path(run) / "config.json").read_text())
        row = []
        for s in args.steps:
            hit = m["env_steps"] == s
            row.append(f"{m['eval_return'][hit][0]:.0f}" if hit.any() else "-")
        if args.mean_between is not None:
            window = m["eval_return"][(m["env_steps"] >= lo) & (m["env_steps"] <= hi)]
            row.append(f"{window.mean():.0f} ({len(window)} evals)" if len(window) else "-")
        if args.first_reaching is not None:
            ok = np.nonzero(m["eval_return"] >= args.first_reaching)[0]
            row.append(str(int(m["env_steps"][ok[0]])) if len(ok) else "never")
            row.append(f"{m['eval_return'][-1]:.0f} at {int(m['env_steps'][-1])}")
        row.append(f"{m['time/wall'][-1]:.0f} s" if "time/wall" in m else "-")
        print(f"| {Path(run).name} | {cfg['algo']} | {cfg['seed']} | " + " | ".join(row) + " |")


def grouped(args) -> None:
    groups: dict[str, list[dict]] = {}
    for run in args.runs:
        if not (Path(run) / "config.json").is_file():
            print(f"(skipped {run}: not a run directory)", file=sys.stderr)
            continue
        values = run_values(read_metrics(run), args.steps, args.mean_between)
        groups.setdefault(re.sub(r"_s\d+$", "", Path(run).name), []).append(values)
    lo_hi = f"{args.mean_between[0] // 1000}k-{args.mean_between[1] // 1000}k" if args.mean_between else None
    cols = [f"{s // 1000}k" for s in args.steps] + ([f"mean {lo_hi}"] if lo_hi else [])
    print("| variant | seeds (last step) | " + " | ".join(cols) + " | agent updates | s per 1k steps (SAC / model / rollouts) | median s per 1k |")
    print("|---" * (5 + len(cols)) + "|")
    rows = group_rows(groups, args.steps, args.mean_between)
    for row in rows:
        cells = [fmt(row[k], row[f"{k}_se"], row[f"{k}_n"]) for k in eval_keys(args.steps, args.mean_between)]
        t = {ph: row[f"s_per_1k_{ph}"] for ph in PHASES + ("total", "median")}
        print(f"| {row['variant']} | {row['seeds']} ({row['last_steps']}) | " + " | ".join(cells)
              + f" | {row['agent_updates']:.0f} | {t['total']:.0f} ({t['agent_update']:.0f} / {t['model_train']:.0f} / {t['rollout']:.0f}) | {t['median']:.0f} |")
    if args.csv and rows:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)


if __name__ == "__main__":
    main()
