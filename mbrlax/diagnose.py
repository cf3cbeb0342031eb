"""`mbrlax diagnose DIR`: how good a run's saved dynamics model is, on real data it never trained on.

The held-out data are the real transitions the run collected after the model's last
training (a model round trains on every row collected before it, every model.train_freq
env steps), read from the checkpoint's buffer. On them (models/diagnostics.py):

- the one-step error per output: the reward, and each next-state dimension (the model
  predicts next_obs - obs; given obs, that error is the error of next_obs),
- the open-loop h-step error for h = 1..horizon: the elites' mean prediction stepped with the
  real actions along contiguous stretches of the held-out trajectories (MSE over state dims),
- the calibration of the predicted variance: the fraction of targets within 1 and 2 std of
  the elites' predictive mixture (a calibrated Gaussian: 68.3% and 95.4%).

Written as a CSV (columns quantity, output, horizon, value) and a PNG.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.buffers import Buffer
from mbrlax.config import ConfigError, TrainConfig
from mbrlax.models.diagnostics import hstep_errors, output_errors
from mbrlax.models.ensemble import ModelState

GAUSSIAN_WITHIN = {1: 0.6827, 2: 0.9545}


def held_out_rows(cfg: TrainConfig, env_steps: int) -> tuple[int, int]:
    """[start, end) of the real-buffer rows collected after the model's last training."""
    learned = env_steps - cfg.init_steps
    if learned <= 0:
        raise ConfigError(f"the run's model was never trained: it stopped at env step {env_steps}, and learning "
                          f"starts after init_steps={cfg.init_steps}; resume it first")
    freq = cfg.model.train_freq
    return cfg.init_steps + (learned - 1) // freq * freq, env_steps


def output_names(obs_dim: int) -> list[str]:
    return ["reward"] + [f"next_obs[{i}]" for i in range(obs_dim)]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _diagnose(model: ModelState, real: Buffer, start: int, end: int, horizon: int) -> dict:
    d = jax.tree.map(lambda a: a[start:end], real.data)
    out = output_errors(model, d.obs, d.action, d.reward, d.next_obs)
    out["hstep_mse"] = hstep_errors(model, d.obs, d.action, d.next_obs, d.done, jnp.ones(end - start, bool),
                                    tuple(range(1, horizon + 1)))
    return out


def diagnose_model(model: ModelState, real: Buffer, start: int, end: int, horizon: int) -> dict[str, np.ndarray]:
    """Per-output one-step MSE and calibration, and the h-step MSE for h = 1..horizon, on rows [start, end)."""
    return {k: np.asarray(v, np.float64) for k, v in _diagnose(model, real, start, end, horizon).items()}


def csv_rows(result: dict[str, np.ndarray], n_rows: int) -> list[tuple]:
    """(quantity, output, horizon, value) rows; the output "all" is the mean over outputs."""
    names = output_names(len(result["mse"]) - 1)
    rows = [("held_out_rows", "", "", n_rows)]
    for quantity, key in (("one_step_mse", "mse"), ("within_1std", "within_1std"), ("within_2std", "within_2std")):
        values = result[key]
        rows += [(quantity, name, 1, v) for name, v in zip(names, values)] + [(quantity, "all", 1, values.mean())]
    rows += [("hstep_mse", "next_obs", h + 1, v) for h, v in enumerate(result["hstep_mse"])]
    return rows


def write_csv(rows: list[tuple], path: Path) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("quantity", "output", "horizon", "value"), *rows])


def plot(result: dict[str, np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = output_names(len(result["mse"]) - 1)
    x = np.arange(len(names))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    a.bar(x, result["mse"])
    a.set(yscale="log", title="one-step MSE per output", xticks=x)
    a.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    h = np.arange(1, len(result["hstep_mse"]) + 1)
    b.plot(h, result["hstep_mse"], marker="o")
    b.set(yscale="log", xlabel="open-loop steps h", title="h-step MSE of next_obs (held-out trajectories)")
    for k, offset in ((1, -0.2), (2, 0.2)):
        c.bar(x + offset, result[f"within_{k}std"], width=0.4, label=f"within {k} std")
        c.axhline(GAUSSIAN_WITHIN[k], color="k", lw=0.8, ls="--")
    c.set(ylim=(0, 1), title="calibration (dashed: a calibrated Gaussian)", xticks=x)
    c.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    c.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def diagnose_run(run_dir: str | Path, png: str | Path | None = None, csv_path: str | Path | None = None,
                 horizon: int = 10) -> dict:
    """Diagnose the model of `run_dir`'s last checkpoint; write the PNG and CSV (default: in the run dir)."""
    from mbrlax.api import _restore, load_config
    from mbrlax.usage import make_usage

    run_dir = Path(run_dir)
    if horizon < 1:
        raise ConfigError(f"invalid horizon={horizon}: must be a positive integer")
    cfg = load_config(run_dir)
    if cfg.algo == "dam" or not make_usage(cfg).uses_model:
        raise ConfigError(f"{run_dir} is a {cfg.algo} run: diagnose covers the ensemble dynamics models of "
                          "mbpo, pmac and memr runs")
    cfg, state, meta, _, _ = _restore(run_dir)
    start, end = held_out_rows(cfg, int(meta["env_steps"]))
    result = diagnose_model(state.model, state.real, start, end, horizon)
    png = Path(png) if png else run_dir / "diagnose.png"
    csv_path = Path(csv_path) if csv_path else run_dir / "diagnose.csv"
    rows = csv_rows(result, end - start)
    write_csv(rows, csv_path)
    plot(result, png, f"{cfg.algo} on {cfg.env}, model of env step {start}, {end - start} held-out transitions")
    return {**result, "rows": rows, "start": start, "end": end, "png": png, "csv": csv_path}
