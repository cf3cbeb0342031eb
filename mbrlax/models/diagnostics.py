"""Model diagnostics per model round (PMAC's Figures 1 and 3): how well the current model
predicts the current policy's data before it trains on it.

- local error: the elites' one-step MSE (mean over elites of each member's MSE in the model's
  target space [reward, next_obs - obs], like `model/holdout_mse`) on the newest chunk;
- global error: the same on a uniform sample of the older rows;
- h-step error: open-loop prediction along contiguous stretches of the newest chunk: from
  obs[r], step the elites' mean next-state prediction with the real actions a[r..r+h-1] and
  compare with next_obs[r+h-1] (MSE over state dims). Row r continues r-1 iff
  next_obs[r-1] == obs[r] and done[r-1] == 0.

All shapes are fixed: the newest chunk is the last `window` rows, the global sample has
`n_global` rows, so one compile serves the whole run.

`output_errors` breaks the one-step error down per output and measures the calibration of the
predicted variance (`mbrlax diagnose`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbrlax.buffers import Buffer
from mbrlax.models.ensemble import ModelState, all_members, forward, member_mse, model_inputs, model_targets

HORIZONS = (1, 5, 10)


def _masked_mean(x, mask):
    n = jnp.sum(mask)
    return jnp.where(n > 0, jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(n, 1), jnp.nan)


def elite_mse(model: ModelState, obs, action, reward, next_obs, mask) -> jax.Array:
    """Mean over elites of each elite's one-step MSE on the rows where `mask` (NaN if none)."""
    x, y = model_inputs(obs, action), model_targets(obs, reward, next_obs)
    per_member = member_mse(model.params, model.norm_mean, model.norm_std, x, y, mask.astype(jnp.float32))
    return jnp.where(jnp.any(mask), jnp.mean(per_member[model.elites]), jnp.nan)


def output_errors(model: ModelState, obs, action, reward, next_obs) -> dict:
    """Per output [reward, next_obs - obs] over the rows [B]: `mse`, the mean over elites of each elite's
    one-step squared error (its mean over outputs is `elite_mse`); `within_1std` / `within_2std`, the
    fraction of targets within 1 / 2 standard deviations of the elites' mixture (mean of the elites'
    means; variance: mean of their variances plus the variance of their means). A calibrated Gaussian
    gives 0.683 / 0.954; less means overconfident."""
    y = model_targets(obs, reward, next_obs)
    mean, logvar = all_members(model, obs, action)
    mean, var = mean[model.elites], jnp.exp(logvar[model.elites])  # [elites, B, out]
    z = jnp.abs(y - jnp.mean(mean, 0)) / jnp.sqrt(jnp.mean(var, 0) + jnp.var(mean, 0))
    return {"mse": jnp.mean((mean - y) ** 2, axis=(0, 1)),
            "within_1std": jnp.mean(z <= 1.0, axis=0), "within_2std": jnp.mean(z <= 2.0, axis=0)}


def elite_mean_step(model: ModelState, obs, action) -> jax.Array:
    """Next state from the mean over elites of the predicted means: [B, obs]."""
    x = model_inputs(obs, action)
    n = model.holdout_mse.shape[0]
    mean, _ = forward(model.params, model.norm_mean, model.norm_std, jnp.broadcast_to(x, (n,) + x.shape))
    return obs + jnp.mean(mean[model.elites, :, 1:], axis=0)


def hstep_errors(model: ModelState, obs, action, next_obs, done, in_window, horizons=HORIZONS) -> jax.Array:
    """Open-loop error at each horizon in `horizons` over window rows [L, ...] in buffer order: [len(horizons)]."""
    n = obs.shape[0]
    cont = jnp.concatenate([jnp.zeros(1, bool), jnp.all(next_obs[:-1] == obs[1:], -1) & (done[:-1] == 0)])

    def step(carry, t):
        s, ok = carry  # predicted state at offset t from each start row, and whether the stretch holds
        row = jnp.arange(n) + t
        inside = row < n
        row = jnp.minimum(row, n - 1)
        ok = ok & inside & in_window[row] & ((t == 0) | cont[row])
        s = elite_mean_step(model, s, action[row])
        return (s, ok), (jnp.mean((s - next_obs[row]) ** 2, -1), ok)

    _, (err, ok) = jax.lax.scan(step, (obs, jnp.ones(n, bool)), jnp.arange(max(horizons)))
    return jnp.stack([_masked_mean(err[h - 1], ok[h - 1]) for h in horizons])


def model_diagnostics(model: ModelState, real: Buffer, key, window: int, n_global: int = 1000,
                      horizons=HORIZONS) -> dict:
    """Local, global and h-step errors of `model` on the last `window` rows of `real` (the newest
    chunk) and on `n_global` uniform rows before them. Assumes a buffer that has not wrapped."""
    d = real.data
    start = jnp.maximum(real.size - window, 0)
    rows = start + jnp.arange(window)
    in_window = rows < real.size
    rows = jnp.minimum(rows, real.capacity - 1)
    w = jax.tree.map(lambda a: a[rows], d)
    old = jax.random.randint(key, (n_global,), 0, jnp.maximum(start, 1))
    g = jax.tree.map(lambda a: a[old], d)
    h = hstep_errors(model, w.obs, w.action, w.next_obs, w.done, in_window, horizons)
    out = {
        "model/local_error": elite_mse(model, w.obs, w.action, w.reward, w.next_obs, in_window),
        "model/global_error": elite_mse(model, g.obs, g.action, g.reward, g.next_obs,
                                        jnp.broadcast_to(start > 0, (n_global,))),
    }
    out.update({f"model/hstep_error_{hh}": h[i] for i, hh in enumerate(horizons)})
    return out


DIAGNOSTIC_COLUMNS = ["model/local_error", "model/global_error"] + [f"model/hstep_error_{h}" for h in HORIZONS]
