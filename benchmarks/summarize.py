"""Markdown table of eval returns at given env steps for a set of runs.

    python benchmarks/summarize.py --steps 10000,20000,30000 --mean-between 10000,30000 RUN_DIR...
    python benchmarks/summarize.py --first-reaching 900 RUN_DIR...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mbrlax.run.metrics import read_metrics


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], default=[],
                   help="comma-separated env steps, e.g. 10000,20000,30000")
    p.add_argument("--first-reaching", type=float, default=None)
    p.add_argument("--mean-between", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="A,B: also the mean of the evals at env steps A..B (and how many there were)")
    args = p.parse_args()
    cols = [f"{s // 1000}k" for s in args.steps]
    if args.mean_between is not None:
        lo, hi = args.mean_between
        cols.append(f"mean of the evals {lo // 1000}k-{hi // 1000}k")
    if args.first_reaching is not None:
        cols += [f"first step with eval >= {args.first_reaching:g}", "final eval"]
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
        print(f"| {Path(run).name} | {cfg['algo']} | {cfg['seed']} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
