"""SPECS.md P-T1: PMAC's mechanism offline, from a saved MBPO run's real data.

For each t in --steps, train fresh ensembles on rows [0, t) of the run's real buffer,
uniformly (MBPO) and with PMAC's weights (alpha = 0.9, 250- and 1000-step chunks; optionally a
uniform sliding window of the last 5k rows), and report for each model:
  local_error   elites' one-step MSE on rows [t, t + 1000) (the next policy's unseen data)
  global_error  the same on 1000 uniform rows of [0, t)
  hstep_error_h open-loop error along contiguous stretches of [t, t + 1000), h = 1, 5, 10, 15
The paper predicts PMAC local < uniform local (and uniform global < PMAC global).

    python benchmarks/pmac_offline.py RUN_DIR --steps 10000,12000 --seeds 0,1,2 --out results/hopper30k/pmac_offline.csv

--seeds are model seeds (initialization and minibatch order): the spread between them says how much of a
difference between variants is one training's luck. Rows already in --out (same t, variant, seed) are kept
and skipped, so runs add to the file and an interrupted one continues.
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.api import _restore
from mbrlax.buffers import Buffer
from mbrlax.config import PMACConfig
from mbrlax.models.diagnostics import model_diagnostics
from mbrlax.models.ensemble import model_init, model_inputs, model_targets
from mbrlax.models.trainer import ModelTrainer
from mbrlax.usage.pmac import PMAC

HORIZONS = (1, 5, 10, 15)
LOCAL_ROWS = 1000


def variant_args(name: str, cfg, real: Buffer, t: int) -> dict:
    """ModelTrainer.train keyword arguments of one variant at data size t."""
    view = real.replace(size=jnp.int32(t), ptr=jnp.int32(t))
    if name == "uniform":
        return {}
    if name == "window5k":
        w = np.zeros(real.capacity)
        w[max(0, t - 5000):t] = 1.0
        return PMAC(cfg).model_train_args(w / w.sum())  # plain weighted bootstrap
    chunk = {"pmac250": 250, "pmac1000": 1000}[name]
    pm = PMAC(replace(cfg, algo="pmac", pmac=PMACConfig(chunk_steps=chunk)))
    u = pm.on_model_round(pm.init(jax.random.key(0), 1, 1), view, None, jax.random.key(1))
    return pm.model_train_args(np.asarray(pm.real_data_weights(u, view)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="an MBPO run directory with a checkpoint (its real buffer is the data)")
    ap.add_argument("--steps", default="10000,15000,20000,25000", help="comma-separated data sizes t")
    ap.add_argument("--variants", default="uniform,pmac250,pmac1000", help="uniform, pmac250, pmac1000, window5k")
    ap.add_argument("--seeds", default="0", help="comma-separated model seeds")
    ap.add_argument("--max-epochs", type=int, default=0, help="cap on model epochs (0: MBPO early stopping)")
    ap.add_argument("--out", default="pmac_offline.csv")
    args = ap.parse_args()

    cfg, state, meta, obs_dim, act_dim = _restore(Path(args.run_dir))
    cfg = replace(cfg, model=replace(cfg.model, max_epochs=args.max_epochs))
    real = state.real
    size = int(real.size)
    d = real.data
    x, y = model_inputs(d.obs, d.action), model_targets(d.obs, d.reward, d.next_obs)
    trainer = ModelTrainer(cfg.model)
    diag = jax.jit(model_diagnostics, static_argnums=(3, 4, 5))
    fields = ["t", "variant", "seed", "local_error", "global_error", *[f"hstep_error_{h}" for h in HORIZONS],
              "holdout_mse", "epochs", "seconds"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if out.exists():
        with open(out, newline="") as f:
            kept = list(csv.DictReader(f))
    done = {(int(r["t"]), r["variant"], int(r["seed"])) for r in kept}
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        f.flush()
        for t in map(int, args.steps.split(",")):
            if t + LOCAL_ROWS > size:
                raise SystemExit(f"t={t}: the run has {size} rows, needs t + {LOCAL_ROWS}")
            eval_view = real.replace(size=jnp.int32(t + LOCAL_ROWS), ptr=jnp.int32(t + LOCAL_ROWS))
            for seed in map(int, args.seeds.split(",")):
                for name in args.variants.split(","):
                    if (t, name, seed) in done:
                        continue
                    t0 = time.perf_counter()
                    model = model_init(jax.random.key(seed), obs_dim, act_dim, cfg.model)
                    rng = np.random.default_rng([seed, t])
                    model, info = trainer.train(model, x, y, t, rng, **variant_args(name, cfg, real, t))
                    m = diag(model, eval_view, jax.random.key(t), LOCAL_ROWS, 1000, HORIZONS)
                    row = {"t": t, "variant": name, "seed": seed, "local_error": float(m["model/local_error"]),
                           "global_error": float(m["model/global_error"]),
                           **{f"hstep_error_{h}": float(m[f"model/hstep_error_{h}"]) for h in HORIZONS},
                           "holdout_mse": info["model/holdout_mse"], "epochs": info["model/epochs"],
                           "seconds": round(time.perf_counter() - t0, 1)}
                    writer.writerow(row)
                    f.flush()
                    print(row, flush=True)


if __name__ == "__main__":
    main()
