"""Cross-entropy method planner (Rubinstein & Kroese, 2013) over ESTIMATEVALUE (DAM Sec. 3.3).

Continuous: a diagonal Gaussian per step, samples clipped to [low, high].
Discrete: a categorical per step, updated from the elites' action frequencies.
Both smooth the update as new = alpha * old + (1 - alpha) * elite statistic
(the variance, for the Gaussian), and run the iterations in one `lax.scan`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbrlax.planners.value import ActionSpace, Params, ValueFn


def _top_k(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Values and indices of the k largest of [N] values, NaN ranked last."""
    return jax.lax.top_k(jnp.where(jnp.isnan(values), -jnp.inf, values), k)


def _gaussian_ops(space: ActionSpace, horizon: int, init_std: float | None):
    low, high = jnp.asarray(space.low, jnp.float32), jnp.asarray(space.high, jnp.float32)
    std0 = (high - low) / 4.0 if init_std is None else jnp.full_like(low, init_std)

    def init():
        shape = (horizon, low.shape[0])
        return jnp.broadcast_to((low + high) / 2.0, shape), jnp.broadcast_to(std0, shape)

    def sample(dist, key, k):
        mean, std = dist
        eps = jax.random.normal(key, (k, *mean.shape))
        return jnp.clip(mean + std * eps, low, high)

    def update(dist, elites, alpha):
        mean, std = dist
        new_mean = alpha * mean + (1.0 - alpha) * elites.mean(axis=0)
        new_var = alpha * std**2 + (1.0 - alpha) * elites.var(axis=0)
        return new_mean, jnp.sqrt(new_var)

    def mode(dist):
        return dist[0]

    return init, sample, update, mode


def _categorical_ops(space: ActionSpace, horizon: int):
    def init():
        return jnp.full((horizon, space.n), 1.0 / space.n)

    def sample(probs, key, k):
        return jax.random.categorical(key, jnp.log(probs), axis=-1, shape=(k, horizon))

    def update(probs, elites, alpha):
        freq = jax.nn.one_hot(elites, space.n).mean(axis=0)
        return alpha * probs + (1.0 - alpha) * freq

    def mode(probs):
        return jnp.argmax(probs, axis=-1)

    return init, sample, update, mode


def cem(
    value_fn: ValueFn,
    action_space: ActionSpace,
    num_sequences: int,
    horizon: int,
    num_iterations: int = 5,
    num_elites: int | None = None,
    alpha: float = 0.1,
    init_std: float | None = None,
):
    """CEM planner: `plan(params, obs [obs_dim], key) -> (first_action, info)`.

    Each of `num_iterations` rounds samples K = `num_sequences` sequences of H
    actions from the current per-step distribution, scores them with
    `value_fn(params, obs, actions, key)` and refits the distribution to the
    `num_elites` best (default max(1, K // 10)), smoothed by `alpha` (weight on
    the old distribution). Starts from uniform probabilities (discrete) or mean
    (low + high) / 2 and std `init_std` (default (high - low) / 4).

    Returns the first action of the final distribution's mode (Gaussian mean /
    most likely index): int [] (discrete) or [act_dim]. info = {"value": best
    estimated value of any sampled sequence, "best_action": that sequence's first
    action, "elite_value": mean value of the last round's elites}.
    """
    num_sequences, horizon, num_iterations = int(num_sequences), int(horizon), int(num_iterations)
    num_elites = max(1, num_sequences // 10) if num_elites is None else int(num_elites)
    if min(num_sequences, horizon, num_iterations) < 1:
        raise ValueError(
            f"invalid num_sequences={num_sequences}, horizon={horizon}, num_iterations={num_iterations}: "
            "all must be >= 1"
        )
    if not 1 <= num_elites <= num_sequences:
        raise ValueError(f"invalid num_elites={num_elites}: must be in [1, num_sequences={num_sequences}]")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"invalid alpha={alpha}: must be in [0, 1)")
    if action_space.is_discrete:
        init, sample, update, mode = _categorical_ops(action_space, horizon)
    else:
        init, sample, update, mode = _gaussian_ops(action_space, horizon, init_std)

    def plan(params: Params, obs: jax.Array, key: jax.Array):
        def iteration(carry, key):
            dist, best_value, best_first = carry
            k_sample, k_value = jax.random.split(key)
            actions = sample(dist, k_sample, num_sequences)
            values = value_fn(params, obs, actions, k_value)
            elite_values, idx = _top_k(values, num_elites)
            better = elite_values[0] > best_value
            best_value = jnp.where(better, elite_values[0], best_value)
            best_first = jnp.where(better, actions[idx[0], 0], best_first)
            return (update(dist, actions[idx], alpha), best_value, best_first), elite_values.mean()

        dist0 = init()
        first0 = mode(dist0)[0]
        carry0 = (dist0, jnp.array(-jnp.inf, jnp.float32), first0)
        (dist, best_value, best_first), elite_means = jax.lax.scan(
            iteration, carry0, jax.random.split(key, num_iterations)
        )
        info = {"value": best_value, "best_action": best_first, "elite_value": elite_means[-1]}
        return mode(dist)[0], info

    return plan
