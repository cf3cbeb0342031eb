"""Learning-curve plots of several runs, grouped by config (mean +- std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mbrlax.run.metrics import METRICS_NAME, read_metrics

IGNORED_KEYS = frozenset({"seed", "out", "run_dir"})
LABEL_KEYS = ("algo", "env")


# --------------------------------------------------------------------------- grouping


def _load_config(run_dir: Path) -> dict:
    """The run's ``config.json`` (ValueError if missing or not a JSON object)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"run {run_dir} has no config.json")
    config = json.loads(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def _strip_ignored(config: Any) -> Any:
    """Copy of ``config`` without the keys that differ between seeds of one config."""
    if isinstance(config, dict):
        return {k: _strip_ignored(v) for k, v in config.items() if k not in IGNORED_KEYS}
    if isinstance(config, list):
        return [_strip_ignored(v) for v in config]
    return config


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict as ``{"a.b": value}``."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _fmt_value(value: Any) -> str:
    """Short text of a config value."""
    return value if isinstance(value, str) else json.dumps(value)


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Flat config keys whose value is not the same in all ``configs``."""
    keys = list(dict.fromkeys(k for config in configs for k in config))
    return [k for k in keys
            if len({json.dumps(c[k]) if k in c else None for c in configs}) > 1]


def _label(config: dict[str, Any], differing: list[str], n_runs: int) -> str:
    """Legend label: algo and env values, other differing fields, number of seeds."""
    parts = [_fmt_value(config[k]) for k in LABEL_KEYS if k in config]
    parts += [f"{k}={_fmt_value(config[k])}"
              for k in differing if k not in LABEL_KEYS and k in config]
    seeds = f"({n_runs} seed{'' if n_runs == 1 else 's'})"
    return " ".join(parts + [seeds]) if parts else f"run {seeds}"


def group_runs(run_dirs: list[str | Path]) -> dict[str, list[Path]]:
    """Group runs whose config (ignoring seed / out / run_dir keys) is equal.

    Returns ``{legend label: [run dirs]}`` in order of first appearance.
    """
    groups: dict[str, tuple[dict, list[Path]]] = {}
    for run_dir in map(Path, run_dirs):
        config = _flatten(_strip_ignored(_load_config(run_dir)))
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, (config, []))[1].append(run_dir)
    differing = _differing_keys([config for config, _ in groups.values()])
    return {_label(config, differing, len(runs)): runs for config, runs in groups.values()}


# --------------------------------------------------------------------------- curves


def _run_curve(run_dir: Path, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(x, y)`` points of one run, skipping rows where either is nan."""
    if not (run_dir / METRICS_NAME).is_file():
        raise ValueError(f"run {run_dir} has no {METRICS_NAME}")
    metrics = read_metrics(run_dir)
    for column in (x, y):
        if column not in metrics:
            raise ValueError(
                f"column {column!r} missing from {run_dir / METRICS_NAME} "
                f"(columns: {list(metrics)})")
    xs, ys = metrics[x], metrics[y]
    valid = ~(np.isnan(xs) | np.isnan(ys))
    if not valid.any():
        raise ValueError(f"{run_dir / METRICS_NAME} has no rows with both {x!r} and {y!r}")
    xs, first = np.unique(xs[valid], return_index=True)
    return xs, ys[valid][first]


def _group_curve(curves: list[tuple[np.ndarray, np.ndarray]]):
    """Mean and std over runs on the union of x values that all runs cover."""
    lo = max(xs[0] for xs, _ in curves)
    hi = min(xs[-1] for xs, _ in curves)
    grid = np.unique(np.concatenate([xs for xs, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if grid.size == 0:
        raise ValueError(f"runs of a group share no common x range ({lo} > {hi})")
    ys = np.stack([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def plot_runs(run_dirs: list[str | Path], out: str | Path,
              x: str = "env_steps", y: str = "eval_return") -> Path:
    """Plot ``y`` against ``x`` for runs grouped by config; save a PNG to ``out``.

    Each group is drawn as its mean curve with a +- one std band over seeds.
    """
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, runs in group_runs(run_dirs).items():
        grid, mean, std = _group_curve([_run_curve(run, x, y) for run in runs])
        (line,) = ax.plot(grid, mean, label=label)
        if len(runs) > 1:
            ax.fill_between(grid, mean - std, mean + std, color=line.get_color(), alpha=0.25)
    ax.set(title=f"{y} vs {x}", xlabel=x, ylabel=y)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=8)  # below the axes: labels can be long
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    return out
