"""Probabilistic ensemble dynamics model (MBPO Sec. 4.1, REFERENCE.md).

Each member maps normalized (obs, action) to the mean and log-variance of
[reward, next_obs - obs]. Members are stacked on a leading axis and computed
with one batched matmul per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrlax.config import ModelConfig
from mbrlax.nets import ensemble_apply, ensemble_init



@struct.dataclass
class ModelState:
    params: dict  # {"layers": [...], "max_logvar": [out], "min_logvar": [out]}
    opt_state: optax.OptState
    norm_mean: jax.Array  # [in]
    norm_std: jax.Array  # [in]
    elites: jax.Array  # int32 [num_elites]
    holdout_mse: jax.Array  # [ensemble]


def make_optimizer(cfg: ModelConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def model_init(key, obs_dim: int, act_dim: int, cfg: ModelConfig) -> ModelState:
    in_dim, out_dim = obs_dim + act_dim, obs_dim + 1
    sizes = [in_dim] + [cfg.hidden_size] * cfg.num_layers + [2 * out_dim]
    params = {
        "layers": ensemble_init(key, cfg.ensemble_size, sizes, init="truncnorm"),
        # Explicit dtypes: weakly typed leaves turn strong after the first update, which
        # re-compiled every jitted consumer (train_chunk twice more) after compile_all_chunk_sizes.
        "max_logvar": jnp.full((out_dim,), 0.5, jnp.float32),
        "min_logvar": jnp.full((out_dim,), -10.0, jnp.float32),
    }
    return fresh_state(params, in_dim, cfg)


def fresh_state(params: dict, in_dim: int, cfg: ModelConfig) -> ModelState:
    """An untrained ModelState around `params` (identity normalizer, no holdout scores yet)."""
    return ModelState(
        params=params,
        opt_state=make_optimizer(cfg).init(params),
        norm_mean=jnp.zeros(in_dim),
        norm_std=jnp.ones(in_dim),
        elites=jnp.arange(cfg.num_elites, dtype=jnp.int32),
        holdout_mse=jnp.full((cfg.ensemble_size,), jnp.inf, jnp.float32),
    )


def model_inputs(obs, action):
    return jnp.concatenate([obs, action], axis=-1)


def model_targets(obs, reward, next_obs):
    return jnp.concatenate([reward[..., None], next_obs - obs], axis=-1)


def forward(params, norm_mean, norm_std, x):
    """x [n, batch, in] (raw inputs, member i gets slice i) -> mean, logvar [n, batch, out].

    Log-variance soft bounds: lv = max - softplus(max - raw); lv = min + softplus(lv - min).
    """
    h = ensemble_apply(params["layers"], (x - norm_mean) / norm_std, act=jax.nn.silu)
    mean, raw = jnp.split(h, 2, axis=-1)
    lv = params["max_logvar"] - jax.nn.softplus(params["max_logvar"] - raw)
    lv = params["min_logvar"] + jax.nn.softplus(lv - params["min_logvar"])
    return mean, lv


def member_nll_loss(params, norm_mean, norm_std, x, y, w, weight_decays):
    """The members' part of `nll_loss`: every term that belongs to one member.

    x [n, B, in], y [n, B, out], w [n, B] per-sample weights (0 = padding).
    Per member: weighted mean over batch of mean over dims of (mu-y)^2 exp(-lv) + lv,
    plus its per-layer L2 decay (weights only); summed over members.
    """
    mean, lv = forward(params, norm_mean, norm_std, x)
    per_sample = jnp.mean((mean - y) ** 2 * jnp.exp(-lv) + lv, axis=-1)  # [n, B]
    per_member = jnp.sum(per_sample * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-8)
    decay = sum(
        c * 0.5 * jnp.sum(layer["w"] ** 2) for c, layer in zip(weight_decays, params["layers"])
    )
    return jnp.sum(per_member) + decay


def logvar_bounds_penalty(params):
    """The shared part of `nll_loss`: 0.01 (sum max_logvar - sum min_logvar)."""
    return 0.01 * (jnp.sum(params["max_logvar"]) - jnp.sum(params["min_logvar"]))


def nll_loss(params, norm_mean, norm_std, x, y, w, weight_decays):
    """Gaussian NLL summed over members (MBPO Eq. 1 without constants), log-variance
    bound penalty and weight decay: `member_nll_loss + logvar_bounds_penalty`."""
    return member_nll_loss(params, norm_mean, norm_std, x, y, w, weight_decays) + logvar_bounds_penalty(params)


def member_mse(params, norm_mean, norm_std, x, y, mask):
    """Holdout MSE of each member's mean on the same (x, y): [n]. mask [B] marks valid rows."""
    n = params["layers"][0]["w"].shape[0]
    xb = jnp.broadcast_to(x, (n,) + x.shape)
    mean, _ = forward(params, norm_mean, norm_std, xb)
    err = jnp.mean((mean - y) ** 2, axis=-1)  # [n, B]
    return jnp.sum(err * mask, axis=1) / jnp.maximum(jnp.sum(mask), 1.0)


def all_members(state: ModelState, obs, action):
    """Every member on the same batch: mean, logvar [ensemble, B, out]."""
    x = model_inputs(obs, action)
    n = state.holdout_mse.shape[0]
    return forward(state.params, state.norm_mean, state.norm_std, jnp.broadcast_to(x, (n,) + x.shape))


def disagreement(mean):
    """Std across members of the predicted [reward, next_obs]: [B, out] (ReW's features)."""
    return jnp.std(mean, axis=0)


def sample_step(state: ModelState, obs, action, key, with_disagreement: bool = False):
    """One sampled model step from a uniformly chosen elite per transition.

    Only the chosen elite's forward pass is computed: the batch is randomly
    permuted and split into equal chunks, chunk j going to elite j (batch size
    is padded to a multiple of the elite count). Returns reward [B], next_obs
    [B, obs], and the ensemble disagreement [B, 1+obs] (zeros unless requested,
    which evaluates all members).
    """
    b = obs.shape[0]
    n_el = state.elites.shape[0]
    chunk = -(-b // n_el)
    k_perm, k_noise = jax.random.split(key)
    raw_perm = jax.random.permutation(k_perm, chunk * n_el)
    perm = raw_perm % b  # padded rows repeat real ones
    x = model_inputs(obs, action)[perm].reshape(n_el, chunk, -1)
    elite_params = {
        "layers": jax.tree.map(lambda p: p[state.elites], state.params["layers"]),
        "max_logvar": state.params["max_logvar"],
        "min_logvar": state.params["min_logvar"],
    }
    mean, lv = forward(elite_params, state.norm_mean, state.norm_std, x)
    out = mean + jnp.exp(0.5 * lv) * jax.random.normal(k_noise, mean.shape)
    out = out.reshape(chunk * n_el, -1)
    # Undo the permutation: row r is read where raw_perm == r (a uniform position, so a uniform
    # elite); the padded copies (raw_perm >= b) are dropped. Scattering through `perm` instead
    # would hit rows < pad twice (undefined winner, biased toward later elites).
    n_pos = chunk * n_el
    pos = jnp.zeros(n_pos, jnp.int32).at[raw_perm].set(jnp.arange(n_pos, dtype=jnp.int32))[:b]
    out = out[pos]
    reward, next_obs = out[:, 0], obs + out[:, 1:]
    if with_disagreement:
        m, _ = all_members(state, obs, action)
        dis = disagreement(m)  # std of obs + delta equals std of delta
    else:
        dis = jnp.zeros((b, out.shape[-1]))
    return reward, next_obs, dis
