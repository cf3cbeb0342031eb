"""Soft actor-critic (Haarnoja et al. 2018) with twin Q and automatic entropy tuning.

Actions live in [-1, 1] (tanh-squashed Gaussian); the driver rescales them to
the env's bounds. As in softlearning (the code MBPO is built on), the Q,
policy and temperature losses of one update are computed from the same
parameters and applied together. The Q and policy losses take separate per-sample
weights (Batch.q_weight, Batch.pi_weight: MEMR, ReW); the temperature is tuned on the unweighted batch. G updates
run as one `lax.scan`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrlax.config import SACConfig
from mbrlax.nets import ensemble_apply, ensemble_init, mlp_apply, mlp_init
from mbrlax.types import Batch

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@struct.dataclass
class SACState:
    params: dict  # {"actor": [...], "critic": [...] (2 stacked), "log_alpha": scalar}
    target_critic: list
    opt_state: optax.OptState


def make_optimizer(cfg: SACConfig) -> optax.GradientTransformation:
    return optax.adam(cfg.lr)


def sac_init(key, obs_dim: int, act_dim: int, cfg: SACConfig) -> SACState:
    ka, kc = jax.random.split(key)
    hidden = [cfg.hidden_size] * cfg.num_layers
    params = {
        "actor": mlp_init(ka, [obs_dim] + hidden + [2 * act_dim]),
        "critic": ensemble_init(kc, 2, [obs_dim + act_dim] + hidden + [1]),
        "log_alpha": jnp.log(jnp.asarray(cfg.init_alpha, jnp.float32)),
    }
    target = jax.tree.map(jnp.copy, params["critic"])  # own buffers: the state is donated
    return SACState(params, target, make_optimizer(cfg).init(params))


def _gaussian(actor, obs):
    mean, log_std = jnp.split(mlp_apply(actor, obs), 2, axis=-1)
    return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


def sample_action(actor, obs, key):
    """Reparameterized tanh-Gaussian sample and its log-probability."""
    mean, log_std = _gaussian(actor, obs)
    u = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    logp = jnp.sum(
        -0.5 * ((u - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
        # log |d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), numerically stable
        - 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)),
        axis=-1,
    )
    return jnp.tanh(u), logp


def deterministic_action(actor, obs):
    return jnp.tanh(_gaussian(actor, obs)[0])


def q_values(critic, obs, action):
    """Twin Q: [2, B]."""
    x = jnp.concatenate([obs, action], axis=-1)
    return ensemble_apply(critic, jnp.broadcast_to(x, (2,) + x.shape))[..., 0]


def soft_q_target(target_critic, actor, reward, next_obs, done, alpha, key, gamma: float):
    """The soft Bellman backup r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s')
    (no gradient reaches the actor): [B]."""
    act_next, logp_next = sample_action(jax.lax.stop_gradient(actor), next_obs, key)
    q_next = jnp.min(q_values(target_critic, next_obs, act_next), axis=0)
    return reward + gamma * (1.0 - done) * (q_next - alpha * logp_next)


def policy_loss_terms(actor, critic, obs, alpha, key):
    """Per-sample policy loss alpha log pi(a|s) - min_j Q_j(s, a), a ~ pi(.|s) reparameterized, Q without
    gradient: ([B], log pi [B])."""
    act_pi, logp_pi = sample_action(actor, obs, key)
    q_pi = jnp.min(q_values(jax.lax.stop_gradient(critic), obs, act_pi), axis=0)
    return alpha * logp_pi - q_pi, logp_pi


def sac_loss(params, target_critic, batch: Batch, key, cfg: SACConfig, target_entropy: float):
    """Q loss (soft Bellman residual) and policy loss, weighted per sample, and the temperature loss."""
    alpha = jnp.exp(jax.lax.stop_gradient(params["log_alpha"]))
    k_pi, k_next = jax.random.split(key)
    pi_terms, logp_pi = policy_loss_terms(params["actor"], params["critic"], batch.obs, alpha, k_pi)

    target = soft_q_target(target_critic, params["actor"], batch.reward, batch.next_obs, batch.done, alpha, k_next,
                           cfg.gamma)
    q = q_values(params["critic"], batch.obs, batch.action)
    q_loss = 0.5 * jnp.sum(jnp.mean(batch.q_weight * (q - jax.lax.stop_gradient(target)) ** 2, axis=1))

    pi_weight = batch.q_weight if batch.pi_weight is None else batch.pi_weight
    pi_loss = jnp.mean(pi_weight * pi_terms)
    alpha_loss = -params["log_alpha"] * jnp.mean(jax.lax.stop_gradient(logp_pi) + target_entropy)
    metrics = {
        "sac/q_loss": q_loss,
        "sac/pi_loss": pi_loss,
        "sac/alpha": alpha,
        "sac/entropy": -jnp.mean(logp_pi),
        "sac/q_mean": jnp.mean(q),
    }
    return q_loss + pi_loss + alpha_loss, metrics


def make_sac_update(
    cfg: SACConfig, act_dim: int, sample_batch: Callable[[object, jax.Array], Batch]
) -> Callable:
    """-> update(state, data, key) running cfg.updates_per_step updates in one lax.scan.

    `sample_batch(data, key)` draws one minibatch (with its per-sample weights)
    from whatever buffers `data` holds. Returns the new state and the mean
    metrics; "sac/finite" is 0 if any loss was NaN/Inf.
    """
    opt = make_optimizer(cfg)
    target_entropy = -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy

    def one_update(state: SACState, key, data):
        k_batch, k_loss = jax.random.split(key)
        batch = sample_batch(data, k_batch)
        grads, metrics = jax.grad(sac_loss, has_aux=True)(
            state.params, state.target_critic, batch, k_loss, cfg, target_entropy
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        target = optax.incremental_update(params["critic"], state.target_critic, cfg.tau)
        return SACState(params, target, opt_state), metrics

    def update(state: SACState, data, key):
        keys = jax.random.split(key, cfg.updates_per_step)
        state, metrics = jax.lax.scan(lambda s, k: one_update(s, k, data), state, keys)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
        metrics = {k: jnp.mean(v) for k, v in metrics.items()}
        metrics["sac/finite"] = finite.astype(jnp.float32)
        return state, metrics

    return update
