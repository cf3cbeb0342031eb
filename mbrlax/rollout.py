"""Branched model rollouts (MBPO Algorithm 2, inner loop), one `lax.scan` over depth.

Steps at depth >= `horizon` (a traced value, so a growing horizon never
re-compiles) are skipped with `lax.cond`; branches stop after the model's
termination function fires (the terminal transition itself is kept).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mbrlax.agents.sac import sample_action
from mbrlax.models.ensemble import ModelState, sample_step
from mbrlax.types import Transition

TerminationFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def branched_rollout(
    model: ModelState,
    actor,
    start_obs: jax.Array,
    key: jax.Array,
    horizon: jax.Array | int,
    max_horizon: int,
    termination_fn: TerminationFn,
    with_disagreement: bool = False,
):
    """k-step rollouts of the current policy in the model from `start_obs` [N, obs].

    Returns (transitions with leaves [max_horizon, N, ...], valid [max_horizon, N],
    disagreement [max_horizon, N, 1 + obs]: std across members of the predicted
    reward and next state, zeros unless `with_disagreement`).
    """
    n, obs_dim = start_obs.shape

    def live_step(obs, key):
        k_act, k_model = jax.random.split(key)
        action, _ = sample_action(actor, obs, k_act)
        reward, next_obs, dis = sample_step(model, obs, action, k_model, with_disagreement)
        done = termination_fn(obs, action, next_obs)
        return Transition(obs, action, reward, next_obs, done.astype(jnp.float32)), dis

    def skipped_step(obs, key):
        act_dim = actor[-1]["b"].shape[0] // 2
        zeros = Transition(obs, jnp.zeros((n, act_dim)), jnp.zeros(n), obs, jnp.ones(n))
        return zeros, jnp.zeros((n, obs_dim + 1))

    def step(carry, depth_key):
        obs, alive = carry
        depth, key = depth_key
        tr, dis = jax.lax.cond(depth < horizon, live_step, skipped_step, obs, key)
        valid = alive & (depth < horizon)
        return (tr.next_obs, valid & (tr.done < 0.5)), (tr, valid, dis)

    keys = jax.random.split(key, max_horizon)
    _, (transitions, valid, dis) = jax.lax.scan(
        step, (start_obs, jnp.ones(n, bool)), (jnp.arange(max_horizon), keys)
    )
    return transitions, valid, dis
