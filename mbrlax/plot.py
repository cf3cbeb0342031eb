"""Learning-curve plots of several runs, grouped by config (mean +- standard error over seeds)."""

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


def _family(config: dict[str, Any]) -> str:
    """The algo and env of a flat config."""
    return json.dumps([config.get(k) for k in LABEL_KEYS])


def group_runs(run_dirs: list[str | Path]) -> dict[str, list[Path]]:
    """Group runs whose config (ignoring seed / out / run_dir keys) is equal.

    Returns ``{legend label: [run dirs]}`` in order of first appearance. A label names the algo, the env and
    the fields that differ between groups of that algo and env (not those between algos: their presets differ).
    """
    groups: dict[str, tuple[dict, list[Path]]] = {}
    for run_dir in map(Path, run_dirs):
        config = _flatten(_strip_ignored(_load_config(run_dir)))
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, (config, []))[1].append(run_dir)
    families: dict[str, list[dict]] = {}
    for config, _ in groups.values():
        families.setdefault(_family(config), []).append(config)
    differing = {family: _differing_keys(configs) for family, configs in families.items()}
    return {_label(config, differing[_family(config)], len(runs)): runs for config, runs in groups.values()}


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
    """Mean, standard error and number of runs at every x of any run, from the latest start to the furthest
    end; a run counts at the x inside its own range (linearly interpolated between its points), so a run
    that stopped early drops out there instead of cutting the curve short."""
    lo = max(xs[0] for xs, _ in curves)
    hi = max(xs[-1] for xs, _ in curves)
    grid = np.unique(np.concatenate([xs for xs, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = np.stack([np.where((grid >= xs[0]) & (grid <= xs[-1]), np.interp(grid, xs, ys), np.nan)
                   for xs, ys in curves])
    n = np.sum(~np.isnan(ys), axis=0)
    mean = np.nanmean(ys, axis=0)
    se = np.zeros_like(mean)
    several = n > 1
    se[several] = np.nanstd(ys[:, several], axis=0, ddof=1) / np.sqrt(n[several])
    return grid, mean, se, n


def plot_runs(run_dirs: list[str | Path], out: str | Path,
              x: str = "env_steps", y: str = "eval_return") -> Path:
    """Plot ``y`` against ``x`` for runs grouped by config; save a PNG to ``out``.

    Each group is drawn as the mean over its seeds with a +- one standard error band; where some seeds have
    stopped the line goes on dashed, as the mean of those that have not (the label says from where).
    """
    if not run_dirs:
        raise ValueError("no run directories given: name one or more, e.g. `mbrlax plot runs/*/ -o curves.png`")
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, runs in group_runs(run_dirs).items():
        grid, mean, se, n = _group_curve([_run_curve(run, x, y) for run in runs])
        full = n == len(runs)
        last_full = int(np.flatnonzero(full)[-1]) if full.any() else 0
        if not full.all():
            label += f"; dashed: fewer seeds past {grid[last_full]:g}"
        (line,) = ax.plot(grid[:last_full + 1], mean[:last_full + 1], label=label)
        if not full.all():
            ax.plot(grid[last_full:], mean[last_full:], color=line.get_color(), linestyle="--")
        band = n > 1
        ax.fill_between(grid, mean - se, mean + se, where=band, color=line.get_color(), alpha=0.25)
    ax.set(title=f"{y} vs {x}", xlabel=x, ylabel=y)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), fontsize=8)  # below the axes: labels can be long
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    return out
