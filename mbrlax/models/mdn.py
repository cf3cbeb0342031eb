"""Mixture density network dynamics model (DAM Sec. 4, Bishop 1994).

Same layout as the Gaussian ensemble (ensemble.py): inputs x = concat(obs,
action_features), targets y = concat([reward], next_obs - obs), members stacked
on a leading axis under params["layers"] (so ModelTrainer trains it unchanged),
the same ModelState and optimizer. Each member outputs, for K components,
mixture logits, means and log-variances of a diagonal Gaussian over y:

    log q(y|x) = logsumexp_k [log pi_k(x) + sum_d log N(y_d; mu_kd(x), exp(lv_kd(x)))]

Target normalization: the network works on standardized targets
z = (y - y_mean) / y_std. y_mean / y_std live in params as constants: every use
goes through stop_gradient, so their gradient is zero and Adam leaves them
unchanged. `mdn_prepare` refits them before each training, like ModelTrainer
refits the input normalizer, and seeds the components of a fresh model from the
data (k-means; see its docstring). dynamics.make_trainer calls it; a bare
ModelTrainer(loss_fn=mdn_nll_loss, score_fn=mdn_member_nll) works too but then
trains on raw targets from unseeded components. All densities returned here are
in raw target units (Jacobian included).

Variance bounds: fixed soft bounds on the standardized log-variance,
lv = LV_MAX - softplus(LV_MAX - raw); lv = LV_MIN + softplus(lv - LV_MIN), i.e.
each component's std stays within about [0.0067, 1.65] target stds. Fixed (not
learned as in the ensemble) because targets are standardized.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.config import ModelConfig
from mbrlax.models.ensemble import ModelState, fresh_state, model_inputs
from mbrlax.models.trainer import input_normalizer
from mbrlax.nets import ensemble_apply, ensemble_init

LV_MAX = 1.0  # standardized log-variance soft bounds (see module docstring)
LV_MIN = -10.0
OUT_W_SCALE = 0.1  # small initial output weights: a fresh model starts as its seeded GMM
SEED_ROWS = 2048  # rows per member for the k-means seeding of a fresh model


def mdn_init(key, obs_dim: int, act_dim: int, cfg: ModelConfig, num_components: int) -> ModelState:
    """K-component MDN per member, cfg.ensemble_size members; output size K * (1 + 2 * out)."""
    in_dim, out_dim = obs_dim + act_dim, obs_dim + 1
    sizes = [in_dim] + [cfg.hidden_size] * cfg.num_layers + [num_components * (1 + 2 * out_dim)]
    layers = ensemble_init(key, cfg.ensemble_size, sizes, init="truncnorm")
    layers[-1]["w"] = OUT_W_SCALE * layers[-1]["w"]
    params = {
        "layers": layers,
        "y_mean": jnp.zeros((out_dim,), jnp.float32),
        "y_std": jnp.ones((out_dim,), jnp.float32),
    }
    return fresh_state(params, in_dim, cfg)


def _kmeans(z, k: int, rng: np.random.Generator, iters: int = 20, restarts: int = 5):
    """k-means, best of `restarts` k-means++ seedings + Lloyd iterations: assignment [n]."""
    best, best_sse = None, np.inf
    for _ in range(restarts):
        centers = [z[rng.integers(len(z))]]
        d2 = np.sum((z - centers[0]) ** 2, axis=1)
        for _ in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else None  # all points equal: any point
            centers.append(z[rng.choice(len(z), p=p)])
            d2 = np.minimum(d2, np.sum((z - centers[-1]) ** 2, axis=1))
        centers = np.stack(centers)
        for _ in range(iters):
            d2 = np.sum((z[:, None] - centers[None]) ** 2, axis=-1)
            assign = np.argmin(d2, axis=1)
            for j in range(k):
                if np.any(assign == j):
                    centers[j] = z[assign == j].mean(axis=0)
        sse = np.sum(np.min(np.sum((z[:, None] - centers[None]) ** 2, axis=-1), axis=1))
        if sse < best_sse:
            best, best_sse = assign, sse
    return best


def mdn_prepare(state: ModelState, x, y, n: int, rng: np.random.Generator | None = None) -> ModelState:
    """Before training on the first n rows of x [cap, in], y [cap, out]: refit the target
    standardizer (std < 1e-6 -> 1) and, for a fresh model (never trained: holdout scores
    all inf) when `rng` is given, seed the components from the data.

    Seeding, per member on up to SEED_ROWS random rows: the standardized targets' residuals
    from a linear fit on x (so structure the inputs explain is not taken for modes) are
    clustered by k-means into K groups; component k's output biases start at its group's
    mean target, variance (clipped to [0.01, 1]) and fraction. Without this, components that
    start together (or far from the data) often stay one broad Gaussian, or one component
    takes every point (a near-deterministic target dimension makes its variance collapse
    first) while the others die.
    """
    y = np.asarray(y, np.float64)[:n]
    mean, std = y.mean(axis=0), y.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    params = dict(state.params, y_mean=jnp.asarray(mean, jnp.float32), y_std=jnp.asarray(std, jnp.float32))
    if rng is not None and not np.isfinite(np.asarray(state.holdout_mse)).any():
        x_mean, x_std = input_normalizer(np.asarray(x)[:n])
        x = (np.asarray(x, np.float64)[:n] - x_mean) / x_std
        z = (y - mean) / std
        out = z.shape[1]
        bias = np.asarray(params["layers"][-1]["b"]).copy()  # [E, K (1 + 2 out)]
        k = bias.shape[1] // (1 + 2 * out)
        for e in range(bias.shape[0]):
            rows = rng.choice(n, size=min(n, SEED_ROWS), replace=False)
            a = np.concatenate([x[rows], np.ones((len(rows), 1))], axis=1)
            resid = z[rows] - a @ np.linalg.lstsq(a, z[rows], rcond=None)[0]
            assign = _kmeans(resid, k, rng)
            groups = [z[rows][assign == j] for j in range(k)]
            frac = np.array([len(g) for g in groups]) / len(rows)
            centers = np.stack([g.mean(axis=0) if len(g) else np.zeros(out) for g in groups])
            var = np.stack([g.var(axis=0) if len(g) else np.ones(out) for g in groups])
            bias[e, :k] = np.log(frac + 1e-2)
            bias[e, k:k + k * out] = centers.reshape(-1)
            bias[e, k + k * out:] = np.log(np.clip(var, 1e-2, 1.0)).reshape(-1)
        layers = list(params["layers"])
        layers[-1] = dict(layers[-1], b=jnp.asarray(bias, jnp.float32))
        params["layers"] = layers
    return state.replace(params=params)


def _standardized(params, norm_mean, norm_std, x):
    """x [E, B, in] -> log_pi [E,B,K], mean, lv [E,B,K,out] in standardized target units."""
    out_dim = params["y_mean"].shape[-1]
    h = ensemble_apply(params["layers"], (x - norm_mean) / norm_std, act=jax.nn.silu)
    k = h.shape[-1] // (1 + 2 * out_dim)
    logits, mean, raw = jnp.split(h, [k, k + k * out_dim], axis=-1)
    mean = mean.reshape(h.shape[:-1] + (k, out_dim))
    raw = raw.reshape(h.shape[:-1] + (k, out_dim))
    lv = LV_MAX - jax.nn.softplus(LV_MAX - raw)
    lv = LV_MIN + jax.nn.softplus(lv - LV_MIN)
    return jax.nn.log_softmax(logits, axis=-1), mean, lv


def _target_norm(params):
    return jax.lax.stop_gradient(params["y_mean"]), jax.lax.stop_gradient(params["y_std"])


def mdn_forward(params, norm_mean, norm_std, x):
    """x [E, B, in] (raw inputs, member i gets slice i) -> (logits [E,B,K] normalized to
    log mixture weights, mean [E,B,K,out], logvar [E,B,K,out]) in raw target units."""
    log_pi, mean, lv = _standardized(params, norm_mean, norm_std, x)
    y_mean, y_std = _target_norm(params)
    return log_pi, mean * y_std + y_mean, lv + 2.0 * jnp.log(y_std)


def mdn_log_prob(params, norm_mean, norm_std, x, y):
    """Mixture log density log q(y|x) [E, B] in raw target units; x [E,B,in], y [E,B,out]."""
    log_pi, mean, lv = _standardized(params, norm_mean, norm_std, x)
    y_mean, y_std = _target_norm(params)
    z = ((y - y_mean) / y_std)[..., None, :]  # [E, B, 1, out]
    comp = -0.5 * jnp.sum((z - mean) ** 2 * jnp.exp(-lv) + lv + jnp.log(2 * jnp.pi), axis=-1)
    return jax.nn.logsumexp(log_pi + comp, axis=-1) - jnp.sum(jnp.log(y_std))


def mdn_nll_loss(params, norm_mean, norm_std, x, y, w, weight_decays):
    """Weighted mixture NLL summed over members (MLE, or Eq. 10 with minvar weights).

    x [E,B,in], y [E,B,out], w [E,B] per-sample weights (0 = padding). Per member:
    weighted mean over the batch of -log q(y|x) / out_dim (per target dimension, the
    ensemble's scale); plus per-layer L2 decay 0.5 c ||W||^2 (weights only).
    """
    out_dim = y.shape[-1]
    per_sample = -mdn_log_prob(params, norm_mean, norm_std, x, y) / out_dim  # [E, B]
    per_member = jnp.sum(per_sample * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-8)
    decay = sum(c * 0.5 * jnp.sum(layer["w"] ** 2) for c, layer in zip(weight_decays, params["layers"]))
    return jnp.sum(per_member) + decay


def mdn_member_nll(params, norm_mean, norm_std, x, y, mask):
    """Holdout score per member [E]: masked mean of -log q(y|x) / out_dim (lower is better)."""
    n = params["layers"][0]["w"].shape[0]
    xb = jnp.broadcast_to(x, (n,) + x.shape)
    yb = jnp.broadcast_to(y, (n,) + y.shape)
    nll = -mdn_log_prob(params, norm_mean, norm_std, xb, yb) / y.shape[-1]
    return jnp.sum(nll * mask, axis=1) / jnp.maximum(jnp.sum(mask), 1.0)


def mdn_sample_step(state: ModelState, obs, action, key):
    """One sampled step: uniform elite per transition, component ~ Categorical(pi), then
    y ~ N(mu_k, exp(lv_k)). Returns reward [B], next_obs [B, obs].

    Every elite is evaluated on the whole batch and one is picked per row (cost x num_elites;
    DAM uses a single member).
    """
    b = obs.shape[0]
    n_el = state.elites.shape[0]
    k_el, k_comp, k_noise = jax.random.split(key, 3)
    x = model_inputs(obs, action)
    params = dict(state.params, layers=jax.tree.map(lambda p: p[state.elites], state.params["layers"]))
    log_pi, mean, lv = mdn_forward(params, state.norm_mean, state.norm_std, jnp.broadcast_to(x, (n_el,) + x.shape))
    rows = jnp.arange(b)
    member = jax.random.randint(k_el, (b,), 0, n_el)
    log_pi, mean, lv = log_pi[member, rows], mean[member, rows], lv[member, rows]  # [B,K], [B,K,out]
    comp = jax.random.categorical(k_comp, log_pi, axis=-1)
    mean, lv = mean[rows, comp], lv[rows, comp]
    out = mean + jnp.exp(0.5 * lv) * jax.random.normal(k_noise, mean.shape)
    return out[:, 0], obs + out[:, 1:]
