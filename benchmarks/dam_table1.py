"""Reproduce Table 1 of the DAM paper (shared/papers/dam.txt): average return after
10 rounds for Baseline / DAM (minvar only) / DAM (disc only) / DAM, with unimodal
(Gaussian) and multimodal (MDN) models, on IcyRoad-v0 and Intersection-v0.

    python benchmarks/dam_table1.py [--protocol paper] [--out results/dam_table1]
        [--weight-modes exp sigmoid] [--seeds 0 1 2] [--rounds 10] [--envs ...] [--models ...] [--methods ...]

--protocol paper (default): Algorithm 3, one random episode, then one planner episode
per round; rich: 5 random, then 5 per round (3 on Intersection), our first table.
Every run is an ordinary mbrlax run directory under OUT/runs; finished runs are
reused and unfinished ones resumed, so the script can be interrupted and re-run
(`--envs`, `--seeds` and `taskset -c` split the work over cores). Writes, for the
runs of this invocation: OUT/runs.csv (one row per run: final return, the last
round's model and discriminator diagnostics from metrics.csv, their means over
rounds 1-R, and what the saved planner does in benchmarks/dam_probe.py's episodes),
OUT/table_MODE.{csv,md} (mean ± standard error over seeds next to the paper's
numbers) and OUT/diagnostics_MODE.md (per cell, the means over seeds of that
evidence). With a subset of --envs, --models, --methods, --weight-modes or other
--seeds, the file names end in them.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

import mbrlax
from mbrlax.api import load_config
from mbrlax.config import preset
from mbrlax.run.checkpoint import has_checkpoint
from mbrlax.run.metrics import read_metrics

from dam_probe import probe_run

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
# The last round's metrics.csv columns copied into runs.csv.
DIAGNOSTICS = ("eval_return_std", "env_steps", "model/holdout_mse", "model/sample_mae", "disc/accuracy",
               "disc/holdout_accuracy", "disc/steps", "disc/real_logit_mean", "disc/real_logit_std",
               "disc/model_logit_mean", "disc/model_logit_std", "disc/plan_logit_mean", "disc/plan_logit_std",
               "time/wall")


def run_config(env: str, method: str, model: str, seed: int, rounds: int, weight_mode: str, protocol: str,
               run_dir: Path):
    objective, correction = METHODS[method]
    cfg = preset(env, "dam", seed=seed, out=str(run_dir), progress=False)
    dam = replace(cfg.dam, model=MODELS[model], objective=objective, correction=correction, rounds=rounds,
                  eval_every=rounds, weight_mode=weight_mode, protocol=protocol)
    if protocol == "rich" and env == "Intersection-v0":
        dam = replace(dam, episodes_per_round=3)  # as in our first (data-rich) table
    return replace(cfg, dam=dam)


def run_one(out: Path, env: str, method: str, model: str, seed: int, rounds: int, weight_mode: str,
            protocol: str, train: bool = True) -> dict | None:
    """One table cell's seed (trained or resumed as needed; with train=False None unless it is finished): its
    runs.csv row."""
    correction = METHODS[method][1]
    mode = f"_{weight_mode}" if correction == "discriminator" else ""  # runs without it are shared
    run_dir = out / "runs" / f"{env}_{MODELS[model]}_{'_'.join(METHODS[method])}{mode}_s{seed}"
    m = read_metrics(run_dir) if (run_dir / "metrics.csv").exists() else {"round": []}
    if not (len(m.get("round", [])) and int(m["round"][-1]) == rounds):
        if not train:
            return None
        if has_checkpoint(run_dir):
            mbrlax.resume(run_dir)
        else:
            mbrlax.train(run_config(env, method, model, seed, rounds, weight_mode, protocol, run_dir))
        m = read_metrics(run_dir)
    row = {"env": env, "model": model, "method": method, "weight_mode": weight_mode if mode else "",
           "seed": seed, "eval_return": float(m["eval_return"][-1])}
    row.update({k: float(m[k][-1]) if k in m else float("nan") for k in DIAGNOSTICS})
    row.update(round_summary(m, load_config(run_dir).dam))
    row["train_returns"] = " ".join(f"{r:.0f}" for r in m["train/episode_return"])  # one per round
    row.update(cached_probe(run_dir))
    return row


def round_summary(m: dict, dam) -> dict:
    """Means over the planner rounds 1..R: the planner episode's return, the model's sample error and the
    discriminator's held-out accuracy and planning-time logits, and in how many rounds early stopping
    kept the discriminator's initialization (no update beat it on held-out rows: logits ~ 0)."""
    later = m["round"] >= 1
    mean = lambda k: float(np.nanmean(m[k][later])) if k in m and np.isfinite(m[k][later]).any() else float("nan")
    kept = m["disc/steps"][later] <= dam.disc_patience * dam.disc_check_every if "disc/steps" in m else []
    return {"rounds_train_return": mean("train/episode_return"), "rounds_sample_mae": mean("model/sample_mae"),
            "rounds_disc_holdout_accuracy": mean("disc/holdout_accuracy"),
            "rounds_disc_plan_logit_mean": mean("disc/plan_logit_mean"),
            "rounds_disc_plan_logit_std": mean("disc/plan_logit_std"),
            "rounds_disc_kept_init": int(np.sum(kept)) if dam.correction == "discriminator" else ""}


SUMMARY = {"return": "eval_return", "planner episodes": "rounds_train_return",
           "model sample error": "rounds_sample_mae", "D held-out acc.": "rounds_disc_holdout_accuracy",
           "D final held-out acc.": "disc/holdout_accuracy", "rounds D kept init": "rounds_disc_kept_init",
           "planning logit mean": "rounds_disc_plan_logit_mean", "planning logit std": "rounds_disc_plan_logit_std"}


def diagnostics(rows: list[dict], title: str) -> str:
    """Per cell, means over seeds of the final return and of round_summary's evidence."""
    lines = [title, "", "| env | model | method | " + " | ".join(SUMMARY) + " | probe (return actions) |",
             "|---" * (4 + len(SUMMARY)) + "|"]
    for key in dict.fromkeys((r["env"], r["model"], r["method"]) for r in rows):
        cell = [r for r in rows if (r["env"], r["model"], r["method"]) == key]
        with warnings.catch_warnings():  # cells without a discriminator: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            vals = [np.nanmean([float(r[k]) if r[k] != "" else np.nan for r in cell]) for k in SUMMARY.values()]
        probes = "; ".join(" ".join(f"{r[k]:.0f}" if "return" in k else r[k] for k in r if k.startswith("probe_"))
                           for r in cell)
        lines.append("| " + " | ".join(key) + " | " + " | ".join(f"{v:.2f}" for v in vals) + f" | {probes} |")
    return "\n".join(lines) + "\n"


def cached_probe(run_dir: Path) -> dict:
    """benchmarks/dam_probe.py's episodes of the saved planner, computed once (RUN_DIR/probe.json)."""
    path = run_dir / "probe.json"
    if not path.exists():
        probes = {f"probe_{case}_{k}": v for case, (ret, actions) in probe_run(run_dir).items()
                  for k, v in (("return", ret), ("actions", actions))}
        path.write_text(json.dumps(probes))
    return json.loads(path.read_text())


def cells(rows: list[dict], env_ids) -> list[dict]:
    """Mean and standard error (ddof 1) over seeds per (method, env, model) that has runs, with the paper's cell."""
    out = []
    for method in METHODS:
        for env in env_ids:
            for j, model in enumerate(MODELS):
                r = np.asarray([x["eval_return"] for x in rows if (x["method"], x["env"], x["model"]) ==
                                (method, env, model)])
                if not len(r):
                    continue
                se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else float("nan")
                out.append({"method": method, "env": env, "model": model, "mean": r.mean(), "se": se,
                            "seeds": len(r), "paper": PAPER[(method, env)][j]})
    return out


def markdown(table: list[dict], title: str, seeds: int) -> str:
    """The table's cells as `mean ± s.e. (paper)`, with the seed count where fewer than `seeds` finished."""
    columns = list(dict.fromkeys((c["env"], c["model"]) for c in table))
    lines = [title, "", "| method | " + " | ".join(f"{e} {m}" for e, m in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method in dict.fromkeys(c["method"] for c in table):
        row = {(c["env"], c["model"]): c for c in table if c["method"] == method}
        lines.append(f"| {method} | " + " | ".join(_cell(row[k], seeds) if k in row else "not run" for k in columns)
                     + " |")
    return "\n".join(lines) + "\n"


def _cell(c: dict, seeds: int) -> str:
    fewer = "" if c["seeds"] == seeds else f", {c['seeds']} of {seeds} seeds"
    se = f" ± {c['se']:.2f}" if np.isfinite(c["se"]) else ""
    return f"{c['mean']:.2f}{se}{fewer} ({c['paper']})"


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", choices=["paper", "rich"], default="paper")
    p.add_argument("--out", default=None, help="default results/dam_table1 (paper), results/dam_table1_rich")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=ENVS)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--weight-modes", nargs="+", choices=["exp", "sigmoid"], default=["exp", "sigmoid"],
                   help="importance weight from the discriminator logit: sigmoid (Algorithm 1) or exp (Eq. 8)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: write the tables from the runs that finished (other cells: 'not run', or "
                        "the seed count)")
    args = p.parse_args()
    out = Path(args.out or ("results/dam_table1" if args.protocol == "paper" else "results/dam_table1_rich"))
    out.mkdir(parents=True, exist_ok=True)
    subset = [x for x, full in ((args.envs, ENVS), (args.models, MODELS), (args.methods, METHODS),
                                (args.weight_modes, ("exp", "sigmoid"))) if len(x) < len(full)]
    subset += [["seeds"] + [str(s) for s in args.seeds]] if args.seeds != [0, 1, 2] else []
    suffix = "".join("_" + "_".join(x).replace(" ", "").replace("(", "").replace(")", "") for x in subset)
    t0 = time.perf_counter()
    rows = []  # one per (table, run): the runs without the discriminator appear in both weight modes' tables
    # Multimodal first: the cells the paper's claim is about come first when the work is interrupted.
    for env in args.envs:
        for model in [m for m in reversed(MODELS) if m in args.models]:
            for mode in args.weight_modes:
                for method in [m for m in ("Baseline", "DAM", "DAM (disc only)", "DAM (minvar only)")
                               if m in args.methods]:
                    for s in args.seeds:
                        row = run_one(out, env, method, model, s, args.rounds, mode, args.protocol,
                                      train=not args.finished_only)
                        if row is None:
                            continue
                        rows.append((mode, row))
                        print(f"{env} {model} {method} {mode} seed {s}: {row['eval_return']:.2f}", flush=True)
    for mode in args.weight_modes:
        table = cells([r for m, r in rows if m == mode], args.envs)
        write_csv(out / f"table_{mode}{suffix}.csv", table)
        title = (f"Protocol {args.protocol}, discriminator weights {mode}: average return after round "
                 f"{args.rounds}, mean ± s.e. over {len(args.seeds)} seeds (paper's Table 1 in brackets)")
        (out / f"table_{mode}{suffix}.md").write_text(markdown(table, title, len(args.seeds)))
        print(markdown(table, title, len(args.seeds)))
        evidence = diagnostics([r for m, r in rows if m == mode], f"Protocol {args.protocol}, weights {mode}: "
                               "means over seeds (rounds 1-R where it says so)")
        (out / f"diagnostics_{mode}{suffix}.md").write_text(evidence)
    unique = {tuple(r[k] for k in ("env", "model", "method", "weight_mode", "seed")): r for _, r in rows}
    write_csv(out / f"runs{suffix}.csv", list(unique.values()))
    print(f"{len(unique)} runs, {sum(r['time/wall'] for r in unique.values()):.0f} s summed over the runs, "
          f"{time.perf_counter() - t0:.0f} s for this invocation", flush=True)


if __name__ == "__main__":
    main()
