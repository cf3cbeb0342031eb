"""Minimum-variance model objective (DAM Sec. 3.2, Eq. 9-10, Algorithm 2 TRAINMODEL).

KL(q* || q) with q*(tau) proportional to R(tau) p(tau) (Eq. 9) has the gradient
-sum_t E_p[R(tau) grad log q(s_{t+1}|s_t, a_t)] (Eq. 10): the usual log-likelihood
with every transition weighted by the return of its trajectory. The weights go to
ModelTrainer.train(weights=...), which scales each sample's NLL by them.
"""

from __future__ import annotations

import jax.numpy as jnp


def minvar_weights(traj_returns, traj_index, margin: float = 0.1) -> jnp.ndarray:
    """Per-transition weights [M] from trajectory returns [N] and each transition's trajectory [M].

    Eq. 9 needs R >= 0, but our returns can be negative (IcyRoad, Intersection). We use
    R' = R - min R + margin (max R - min R), min / max over the trajectories that have
    transitions: it keeps the order of trajectories, is invariant to the reward's offset
    and scale, and leaves the worst trajectory a weight margin / (1 + margin) of the best's
    (not zero, so the model still covers every observed transition, which the
    importance weights p/q need). Weights are then normalized to mean 1 over the M
    transitions, so the effective learning rate matches maximum likelihood (the constant
    E_p[R] of Eq. 15-17 absorbed into the learning rate). Equal returns give all ones (MLE).
    """
    r = jnp.asarray(traj_returns, jnp.float32)[jnp.asarray(traj_index)]
    lo, hi = jnp.min(r), jnp.max(r)
    spread = hi - lo
    w = r - lo + margin * spread
    ok = spread > 1e-6 * jnp.maximum(1.0, jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
    return jnp.where(ok, w / jnp.where(ok, jnp.mean(w), 1.0), jnp.ones_like(r))
