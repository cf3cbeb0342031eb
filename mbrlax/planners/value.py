"""Discriminator-corrected value estimation (DAM Sec. 3.1, Eq. 2-8, Algorithm 1).

`make_value_estimator` builds ESTIMATEVALUE batched over N candidate action
sequences and P model particles (N*P rows) as one `lax.scan` over the horizon.

Signatures of the functions it closes over (`params` is one pytree passed
through unchanged, e.g. {"model": ..., "disc": ...}, so a jitted planner is
compiled once and reused after every retraining):

    step_fn(params, obs [B, obs_dim], feats [B, F], key) -> next_obs [B, obs_dim]
        one sample s' ~ q(.|s, a) from the learned model; `key` is shared by
        the whole batch (the model draws independent noise per row).
    reward_fn(obs [B, obs_dim], action, next_obs [B, obs_dim]) -> [B]
        the known reward r(s, a, s'); `action` is [B] int (discrete) or
        [B, act_dim] (continuous).
    logit_fn(params, obs [B, obs_dim], feats [B, F], next_obs [B, obs_dim]) -> [B]
        discriminator logit D~(s, a, s') ~ log p(s'|s,a) / q(s'|s,a) (Eq. 7).

`feats` are `ActionSpace.features(action)`: one-hot [B, n] for Discrete(n),
the action itself [B, act_dim] for a Box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
StepFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
RewardFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
LogitFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]
ValueFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]

WEIGHT_MODES = ("exp", "sigmoid")
MAX_LOG_VALUE = 80.0  # |values| up to exp(80) ~ 6e34 are returned as they are (float32 max 3e38)


@dataclass(frozen=True)
class ActionSpace:
    """A discrete (`n` actions, indices 0..n-1) or continuous (box [low, high]) action space.

    Build with `ActionSpace.discrete(3)`, `ActionSpace.continuous(low, high)` or
    `ActionSpace.from_gym(env.action_space)`. Bounds are tuples so the space is hashable.
    """

    kind: str
    n: int | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.kind == "discrete":
            if self.n is None or int(self.n) < 1:
                raise ValueError(f"invalid ActionSpace.n={self.n}: a discrete space needs n >= 1")
            object.__setattr__(self, "n", int(self.n))
        elif self.kind == "continuous":
            if self.low is None or self.high is None:
                raise ValueError("invalid ActionSpace: a continuous space needs low and high")
            low = tuple(float(x) for x in np.ravel(self.low))
            high = tuple(float(x) for x in np.ravel(self.high))
            if len(low) != len(high) or not len(low):
                raise ValueError(f"invalid ActionSpace bounds: low={low}, high={high} differ in size")
            if not all(np.isfinite(low + high)) or any(lo > hi for lo, hi in zip(low, high)):
                raise ValueError(f"invalid ActionSpace bounds: low={low}, high={high} must be finite, low <= high")
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)
        else:
            raise ValueError(f"invalid ActionSpace.kind={self.kind!r}: must be 'discrete' or 'continuous'")

    @classmethod
    def discrete(cls, n: int) -> "ActionSpace":
        return cls(kind="discrete", n=n)

    @classmethod
    def continuous(cls, low, high) -> "ActionSpace":
        return cls(kind="continuous", low=low, high=high)

    @classmethod
    def from_gym(cls, space) -> "ActionSpace":
        """From a gymnasium `Discrete` (indices 0..n-1; add `space.start` when stepping the env) or 1-D `Box`."""
        from gymnasium import spaces

        if isinstance(space, spaces.Discrete):
            return cls.discrete(int(space.n))
        if isinstance(space, spaces.Box):
            if len(space.shape) != 1:
                raise ValueError(f"unsupported Box action space of shape {space.shape}: must be 1-D")
            return cls.continuous(space.low, space.high)
        raise ValueError(f"unsupported action space {space!r}: must be Discrete or 1-D Box")

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"

    @property
    def feature_dim(self) -> int:
        """Width F of `features(actions)`: n (one-hot) or act_dim."""
        return self.n if self.is_discrete else len(self.low)

    def features(self, actions: jax.Array) -> jax.Array:
        """[...] int -> one-hot [..., n] float (discrete); [..., act_dim] -> float identity (continuous)."""
        if self.is_discrete:
            return jax.nn.one_hot(actions, self.n, dtype=jnp.float32)
        return jnp.asarray(actions, jnp.float32)

    def uniform(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """i.i.d. uniform actions: int [*shape] over 0..n-1, or [*shape, act_dim] in [low, high]."""
        if self.is_discrete:
            return jax.random.randint(key, shape, 0, self.n)
        low, high = jnp.asarray(self.low, jnp.float32), jnp.asarray(self.high, jnp.float32)
        return jax.random.uniform(key, (*shape, len(self.low)), minval=low, maxval=high)


def _log_weight_fn(logit_fn: LogitFn, weight_mode: str, max_weight: float | None):
    """log w(s, a, s') per transition: Eq. 8 (w = exp(logit)) or Algorithm 1 (w = sigmoid(logit)),
    optionally clipped at w <= max_weight (per transition)."""
    log_max = None if max_weight is None else float(np.log(max_weight))

    def log_weight(params, obs, feats, next_obs):
        logit = logit_fn(params, obs, feats, next_obs)
        lw = logit if weight_mode == "exp" else jax.nn.log_sigmoid(logit)
        return lw if log_max is None else jnp.minimum(lw, log_max)

    return log_weight


def _signed_values(log_pos: jax.Array, log_neg: jax.Array) -> jax.Array:
    """[N] values v = exp(log_pos) - exp(log_neg), or an order-preserving stand-in when some
    |v| is beyond float32: sign(v) * (log|v| - min log|v| + 1) (0 where v = 0, NaN kept)."""
    hi, lo = jnp.maximum(log_pos, log_neg), jnp.minimum(log_pos, log_neg)
    gap = jnp.where(lo == -jnp.inf, jnp.inf, hi - lo)
    log_mag = hi + jnp.log(-jnp.expm1(-gap))  # log|v|; -inf where v = 0
    sign = jnp.where(log_pos > log_neg, 1.0, -1.0)
    finite = jnp.isfinite(log_mag)
    fits = jnp.all(jnp.where(finite, log_mag, -jnp.inf) < MAX_LOG_VALUE)
    floor = jnp.min(jnp.where(finite, log_mag, jnp.inf))
    key = jnp.where(log_mag == -jnp.inf, 0.0, sign * (log_mag - floor + 1.0))
    return jnp.where(fits, sign * jnp.exp(log_mag), key)


def _rollout_inputs(obs, actions, horizon: int, num_particles: int, key):
    """Start states [N*P, obs_dim], time-major actions [H, N*P, ...] (row i rolls out candidate i // P)
    and one key per step [H] for a rollout of N candidates with P particles each."""
    if actions.ndim < 2 or actions.shape[1] != horizon:
        raise ValueError(f"actions of shape {actions.shape}: expected [N, {horizon}, ...]")
    rows = actions.shape[0] * num_particles
    acts = jnp.swapaxes(jnp.repeat(actions, num_particles, axis=0), 0, 1)
    return jnp.broadcast_to(obs, (rows, obs.shape[-1])), acts, jax.random.split(key, horizon)


def make_logit_probe(step_fn: StepFn, logit_fn: LogitFn, action_space: ActionSpace, horizon: int,
                     num_particles: int):
    """`probe(params, obs, actions, key) -> logits [H, N*P]`: the discriminator logits D~(s_t, a_t, s_{t+1})
    of the model rollouts that ESTIMATEVALUE with the same arguments would weight (the same samples,
    for the same key), to report what the planner sees."""

    def probe(params: Params, obs: jax.Array, actions: jax.Array, key: jax.Array) -> jax.Array:
        obs0, acts, keys = _rollout_inputs(obs, actions, int(horizon), int(num_particles), key)

        def step(s, xs):
            a, k = xs
            feats = action_space.features(a)
            s_next = step_fn(params, s, feats, k)
            return s_next, logit_fn(params, s, feats, s_next)

        return jax.lax.scan(step, obs0, (acts, keys))[1]

    return probe


def make_value_estimator(
    step_fn: StepFn,
    reward_fn: RewardFn,
    action_space: ActionSpace,
    horizon: int,
    num_particles: int,
    logit_fn: LogitFn | None = None,
    weight_mode: str = "exp",
    max_weight: float | None = None,
    gamma: float = 1.0,
) -> ValueFn:
    """ESTIMATEVALUE (Algorithm 1), batched: returns `value(params, obs, actions, key) -> [N]`.

    obs: [obs_dim] (the current real state s_1); actions: [N, H] int (discrete) or
    [N, H, act_dim] (continuous); key: PRNG key. Each candidate is rolled out with
    `num_particles` model samples (1: Algorithm 1's single sampled trajectory; more:
    the mean over independent ones, a lower-variance estimate of the same expectation)
    and the result is the particle mean of

        sum_{t=0}^{H-1} gamma^t * W_t * r(s_t, a_t, s_{t+1}),   W_t = prod_{m<=t} w_m   (Eq. 4)

    with w_m = exp(D~(s_m, a_m, s_{m+1})) (Eq. 8, weight_mode="exp") or
    sigmoid(D~) (Algorithm 1, weight_mode="sigmoid"), each clipped at `max_weight`
    when given. Without `logit_fn`, W_t = 1: the plain (uncorrected) model return.
    The weight product is accumulated as a sum of log-weights. gamma^t starts at
    t = 0 for the first action (the paper's gamma^1 is a constant factor: same argmax).

    Eq. 8 weights are unbounded: a confident discriminator gives logits of 20-50 per
    step, and their products overflow float32 (exp(88)), which would turn values into
    inf and NaN. So weighted returns are summed in log space (positive and negative
    terms apart); when some |value| exceeds exp(MAX_LOG_VALUE), all N are returned as
    sign(v) * (log|v| - min_N log|v| + 1), which keeps their order (all the planners
    use) exact, also among values too close to 0 for float32. Otherwise (always for
    sigmoid weights <= 1) the values are the Eq. 4 estimates themselves.
    """
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"invalid weight_mode={weight_mode!r}: must be one of {WEIGHT_MODES}")
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"invalid max_weight={max_weight}: must be > 0 or None")
    if int(horizon) < 1 or int(num_particles) < 1:
        raise ValueError(f"invalid horizon={horizon}, num_particles={num_particles}: both must be >= 1")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"invalid gamma={gamma}: must be in [0, 1]")
    horizon, num_particles = int(horizon), int(num_particles)
    discounts = np.asarray(float(gamma) ** np.arange(horizon), np.float32)
    log_weight = None if logit_fn is None else _log_weight_fn(logit_fn, weight_mode, max_weight)

    def value(params: Params, obs: jax.Array, actions: jax.Array, key: jax.Array) -> jax.Array:
        n = actions.shape[0]
        obs0, acts, keys = _rollout_inputs(obs, actions, horizon, num_particles, key)
        rows = obs0.shape[0]

        def step(carry, xs):
            s, log_w, ret = carry
            a, k, disc = xs
            feats = action_space.features(a)
            s_next = step_fn(params, s, feats, k)
            r = reward_fn(s, a, s_next)
            if log_weight is None:
                return (s_next, log_w, ret + disc * r), None
            # Our r_t = r(s_t, a_t, s_{t+1}) depends on the sampled s_{t+1}, so its weight
            # includes transition t (Eq. 4: product up to m = t). Algorithm 1 adds r(s_t, a_t)
            # *before* multiplying in w_t because its reward depends on s_t only, which was
            # weighted by transitions < t; both are Eq. 4 for their reward's arguments.
            log_w = log_w + log_weight(params, s, feats, s_next)
            # ret = (log of the positive terms' sum, log of the negative terms' sum) per row.
            term = log_w + jnp.log(disc) + jnp.log(jnp.abs(r))
            log_pos, log_neg = ret
            nan = jnp.isnan(term)  # a diverged rollout stays NaN (planners rank it last)
            log_pos = jnp.where(nan, jnp.nan, jnp.where(r > 0, jnp.logaddexp(log_pos, term), log_pos))
            log_neg = jnp.where(nan, jnp.nan, jnp.where(r < 0, jnp.logaddexp(log_neg, term), log_neg))
            return (s_next, log_w, (log_pos, log_neg)), None

        zeros = jnp.zeros(rows, jnp.float32)
        ret0 = zeros if log_weight is None else (zeros - jnp.inf, zeros - jnp.inf)
        xs = (acts, keys, jnp.asarray(discounts))
        (_, _, ret), _ = jax.lax.scan(step, (obs0, zeros, ret0), xs)
        if log_weight is None:
            return ret.reshape(n, num_particles).mean(axis=1)
        log_pos, log_neg = (jax.nn.logsumexp(x.reshape(n, num_particles), axis=1) - np.log(num_particles)
                            for x in ret)
        return _signed_values(log_pos, log_neg)

    return value
