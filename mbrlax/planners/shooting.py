"""Random shooting (DAM Appendix B, Algorithm 3 RSPLANNER)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbrlax.planners.value import ActionSpace, Params, ValueFn


def best_index(values: jax.Array) -> jax.Array:
    """argmax of [N] values with NaN ranked last (a diverged rollout never wins)."""
    return jnp.argmax(jnp.where(jnp.isnan(values), -jnp.inf, values))


def random_shooting(value_fn: ValueFn, action_space: ActionSpace, num_sequences: int, horizon: int):
    """RSPLANNER: `plan(params, obs [obs_dim], key) -> (first_action, info)`.

    Samples K = `num_sequences` sequences of H = `horizon` i.i.d. uniform actions
    (over Discrete(n), or in [low, high]), scores them with `value_fn(params, obs,
    actions, key)` (ESTIMATEVALUE, Algorithm 1) and returns the first action of the
    best: int [] (discrete) or [act_dim]. info = {"value": its estimated value,
    "mean_value": the mean over all K sequences}.
    """
    if int(num_sequences) < 1 or int(horizon) < 1:
        raise ValueError(f"invalid num_sequences={num_sequences}, horizon={horizon}: both must be >= 1")
    num_sequences, horizon = int(num_sequences), int(horizon)

    def plan(params: Params, obs: jax.Array, key: jax.Array):
        k_act, k_value = jax.random.split(key)
        actions = action_space.uniform(k_act, (num_sequences, horizon))
        values = value_fn(params, obs, actions, k_value)
        best = best_index(values)
        return actions[best, 0], {"value": values[best], "mean_value": jnp.mean(values)}

    return plan
