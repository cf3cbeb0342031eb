"""Reproduce Table 1 of the DAM paper (shared/papers/dam.txt): average return after
10 rounds for Baseline / DAM (minvar only) / DAM (disc only) / DAM, with unimodal
(Gaussian) and multimodal (MDN) models, on IcyRoad-v0 and Intersection-v0.

    python benchmarks/dam_table1.py --out results/dam_table1 [--seeds 0 1 2] [--rounds 10]

Every run is an ordinary mbrlax run directory under --out; finished runs are
reused and unfinished ones resumed, so the script can be interrupted and re-run.
Writes table.md (mean +- standard error over seeds, next to the paper's numbers).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import mbrlax
from mbrlax.config import preset
from mbrlax.run.checkpoint import has_checkpoint
from mbrlax.run.metrics import read_metrics

METHODS = {  # name: (objective, correction)
    "Baseline": ("mle", "none"),
    "DAM (minvar only)": ("minvar", "none"),
    "DAM (disc only)": ("mle", "discriminator"),
    "DAM": ("minvar", "discriminator"),
}
MODELS = {"Unimodal": "gaussian", "Multimodal": "mdn"}
ENVS = ("IcyRoad-v0", "Intersection-v0")
PAPER = {  # Table 1: mean +- s.e. over 3 seeds
    ("Baseline", "IcyRoad-v0"): ("0.71 ± 1.72", "5.34 ± 0.84"),
    ("DAM (minvar only)", "IcyRoad-v0"): ("0.86 ± 0.79", "4.55 ± 3.50"),
    ("DAM (disc only)", "IcyRoad-v0"): ("4.88 ± 0.50", "3.30 ± 2.75"),
    ("DAM", "IcyRoad-v0"): ("2.32 ± 1.76", "7.94 ± 0.92"),
    ("Baseline", "Intersection-v0"): ("62.67 ± 22.10", "29.58 ± 0.105"),
    ("DAM (minvar only)", "Intersection-v0"): ("31.40 ± 1.111", "31.30 ± 1.634"),
    ("DAM (disc only)", "Intersection-v0"): ("87.79 ± 15.34", "60.18 ± 19.58"),
    ("DAM", "Intersection-v0"): ("46.76 ± 9.543", "97.72 ± 5.127"),
}


def final_return(run_dir: Path, rounds: int) -> tuple[float, float] | None:
    """(eval_return, wall seconds) of the last round if the run finished, else None."""
    if not (run_dir / "metrics.csv").exists():
        return None
    m = read_metrics(run_dir)
    done = len(m["round"]) and int(m["round"][-1]) == rounds
    return (float(m["eval_return"][-1]), float(m["time/wall"][-1])) if done else None


def run_one(out: Path, env: str, method: str, model: str, seed: int, rounds: int,
            weight_mode: str) -> tuple[float, float]:
    """(final eval return, run wall time) of one table cell's seed; trains or resumes as needed."""
    objective, correction = METHODS[method]
    mode = f"_{weight_mode}" if correction == "discriminator" else ""  # runs without it are shared
    run_dir = out / f"{env}_{MODELS[model]}_{objective}_{correction}{mode}_s{seed}"
    done = final_return(run_dir, rounds)
    if done is not None:
        return done
    if has_checkpoint(run_dir):
        mbrlax.resume(run_dir)
    else:
        cfg = preset(env, "dam", seed=seed, out=str(run_dir), progress=False)
        cfg = replace(cfg, dam=replace(cfg.dam, model=MODELS[model], objective=objective,
                                       correction=correction, rounds=rounds, eval_every=rounds,
                                       weight_mode=weight_mode))
        mbrlax.train(cfg)
    return final_return(run_dir, rounds)


def table(results: dict, seeds: int, env_ids=ENVS) -> str:
    lines = [f"Average return after the last round, mean ± s.e. over {seeds} seeds (paper's Table 1 in brackets)", "",
             "| method | " + " | ".join(f"{e} {m}" for e in env_ids for m in MODELS) + " |",
             "|---|" + "---|" * (len(env_ids) * len(MODELS))]
    for method in METHODS:
        cells = []
        for env in env_ids:
            for j, model in enumerate(MODELS):
                r = np.asarray(results[(env, method, model)])
                se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
                cells.append(f"{r.mean():.2f} ± {se:.2f} ({PAPER[(method, env)][j]})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/dam_table1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--weight-mode", choices=["exp", "sigmoid"], default="exp",
                   help="importance weight from the discriminator logit: exp (Eq. 8) or sigmoid (Algorithm 1)")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, run_seconds = {}, 0.0
    for env in args.envs:
        for model in MODELS:
            for method in METHODS:
                runs = [run_one(out, env, method, model, s, args.rounds, args.weight_mode) for s in args.seeds]
                results[(env, method, model)] = [ret for ret, _ in runs]
                run_seconds += sum(wall for _, wall in runs)
                print(f"{env} {model} {method}: {results[(env, method, model)]}", flush=True)
    text = (f"Discriminator weights: {args.weight_mode}\n\n" + table(results, len(args.seeds), args.envs)
            + f"\nwall time: {run_seconds:.0f} s summed over the runs,"
            f" {time.perf_counter() - t0:.0f} s for this invocation\n")
    (out / f"table_{args.weight_mode}_{'_'.join(args.envs)}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
