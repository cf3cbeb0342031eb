"""Mean +- standard error over seeds of runs' eval returns at given env steps and over a window of steps,
with their agent updates and wall time per 1000 env steps (`mbrlax sweep`, benchmarks/summarize.py --group).

    values = [run_values(read_metrics(d), steps, window) for d in run_dirs_of_one_setting]
    rows = group_rows({"setting A": values, ...}, steps, window)   # one dict per setting
    write_csv(rows, "summary.csv")

A row holds, for every value `k` (`eval_<step>`, `window_mean`, `agent_updates`, `s_per_1k_<phase>`), its mean
over seeds `k`, standard error `k_se` (nan for one seed) and the number of seeds that have it `k_n`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

PHASES = ("agent_update", "before_updates", "model_train", "rollout", "env_step", "evaluate", "checkpoint")


def mean_se(values) -> tuple[float, float, int]:
    """Mean, standard error and count of the finite values (nan, nan, 0 for none; s.e. nan for one)."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"), len(v)


def fmt(m: float, se: float, n: int, digits: int = 0) -> str:
    """`mean ± s.e.` as table text (`-` without values, the mean alone for one)."""
    if n == 0:
        return "-"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {se:.{digits}f}"


def increments(col) -> np.ndarray:
    """Per row, the time a cumulative column (time/*) gained since the row before, nan (a phase not yet run) as
    0. A drop is a restart from 0: older code kept time/wall across a resume but restarted the phase times."""
    v = np.nan_to_num(np.asarray(col, float))
    step = np.diff(v, prepend=0.0)
    return np.where(step < 0, v, step)


def run_total(col) -> float:
    """The total of a cumulative column over a run, restarts included (`increments`)."""
    return float(increments(col).sum())


def run_values(m: dict, steps: list[int], window) -> dict:
    """One run's values (metrics `m`, at least one row): evals at the steps, the window mean, updates, phase
    time per 1k steps (run means), the median interval cost and its last env step. The window mean
    (`window` = (A, B)) is nan unless the run reached step B."""
    out = {"last_step": int(m["env_steps"][-1])}
    for s in steps:
        hit = m["env_steps"] == s
        out[f"eval_{s}"] = float(m["eval_return"][hit][0]) if hit.any() else float("nan")
    if window:
        sel = (m["env_steps"] >= window[0]) & (m["env_steps"] <= window[1])
        full = sel.any() and m["env_steps"][-1] >= window[1]
        out["window_mean"] = float(m["eval_return"][sel].mean()) if full else float("nan")
    per_1k = 1000.0 / m["env_steps"][-1]
    out["agent_updates"] = float(m["agent/updates"][-1]) if "agent/updates" in m else float("nan")
    for ph in PHASES:
        col = m.get(f"time/{ph}")
        out[f"s_per_1k_{ph}"] = run_total(col) * per_1k if col is not None else float("nan")
    out["s_per_1k_total"] = run_total(m["time/wall"]) * per_1k if "time/wall" in m else float("nan")
    out["s_per_1k_median"] = median_interval_cost(m)
    return out


def median_interval_cost(m: dict) -> float:
    """Median over the evaluation intervals with agent updates of the wall time per 1000 env steps: the cost
    of a learning step with pauses and busy neighbours (which inflate the mean) mostly left out."""
    if "time/wall" not in m or "agent/updates" not in m:
        return float("nan")
    learning = np.diff(m["agent/updates"], prepend=0.0) > 0
    rate = 1000.0 * increments(m["time/wall"]) / np.diff(m["env_steps"], prepend=0.0)
    return float(np.median(rate[learning])) if learning.any() else float("nan")


def eval_keys(steps: list[int], window) -> list[str]:
    """The eval values of a row: one per step, then the window mean."""
    return [f"eval_{s}" for s in steps] + (["window_mean"] if window else [])


def group_rows(groups: dict[str, list[dict]], steps: list[int], window, label: str = "variant") -> list[dict]:
    """One row per group of `run_values` dicts: `{label: name, seeds, last_steps, k, k_se, k_n, ...}`."""
    rows = []
    for name, runs in groups.items():
        row = {label: name, "seeds": len(runs), "last_steps": ", ".join(str(r["last_step"]) for r in runs)}
        for k in eval_keys(steps, window) + ["agent_updates"] + [f"s_per_1k_{ph}" for ph in PHASES + ("total", "median")]:
            mean, se, n = mean_se(r[k] for r in runs)
            row[k], row[f"{k}_se"], row[f"{k}_n"] = mean, se, n
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """The rows as a CSV file (columns: the first row's keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
