"""Transition discriminator (DAM Sec. 3.1, Eq. 5-8, Algorithm 2 TRAINDISCRIMINATOR).

D(s, a, s') tells real next states (y = 1) from model samples s~' ~ q(.|s, a) (y = 0)
for the same real (s, a) ~ p(s, a). For the Bayes-optimal classifier of this balanced
problem D = p / (p + q), so its logit D~ = log p(s'|s,a) / q(s'|s,a) (Eq. 5-7) and
exp(D~) is the importance weight of Eq. 8.

Network: ReLU MLP on standardized concat(s, a, s') -> one logit. Training: binary
cross-entropy, minibatches of real rows drawn uniformly (with replacement) from the n
valid rows and their paired fake rows, Adam, all `steps` updates in one jitted
lax.scan. Inputs have a fixed capacity and n is traced, so growing data does not
re-compile (one compile per capacity, steps and batch size).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mbrlax.nets import mlp_apply, mlp_init

WEIGHT_MODES = ("exp", "sigmoid")


@struct.dataclass
class DiscState:
    params: list  # mlp layers [{"w", "b"}, ...]
    opt_state: optax.OptState
    norm_mean: jax.Array  # [in]
    norm_std: jax.Array  # [in]
    lr: float = struct.field(pytree_node=False, default=1e-3)  # static: equal across inits, no re-compile


def disc_init(key, in_dim: int, hidden: int = 128, num_layers: int = 2, lr: float = 1e-3) -> DiscState:
    """in_dim = 2 obs_dim + action features; `num_layers` ReLU layers of width `hidden` -> one logit."""
    params = mlp_init(key, [in_dim] + [hidden] * num_layers + [1])
    return DiscState(params, optax.adam(lr).init(params), jnp.zeros(in_dim), jnp.ones(in_dim), lr)


def disc_inputs(obs, action, next_obs):
    return jnp.concatenate([obs, action, next_obs], axis=-1)


def _logits(params, norm_mean, norm_std, x):
    return mlp_apply(params, (x - norm_mean) / norm_std)[..., 0]


def disc_logits(state: DiscState, obs, action, next_obs) -> jax.Array:
    """Logit D~(s, a, s') [B]: an estimate of log p(s'|s,a) - log q(s'|s,a) (Eq. 7)."""
    return _logits(state.params, state.norm_mean, state.norm_std, disc_inputs(obs, action, next_obs))


def importance_weights(logits, mode: str = "exp", max_weight: float | None = None) -> jax.Array:
    """Per-transition importance weight from discriminator logits.

    mode="exp" (default): Eq. 8, w = exp(D~) = p/q for the optimal discriminator.
    mode="sigmoid": Algorithm 1's line w <- w * sigma(D~). Note sigma(D~) = D = p/(p+q)
    = w/(1+w) is not the density ratio: it lies in (0, 1), equals 1/2 for a perfect
    model (so products over t shrink like 2^-t), and only preserves the order of
    single-step weights. The paper's text (Eq. 8) is the consistent estimator.
    max_weight: clip each weight at this value (None: no clip).
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"invalid mode={mode!r}: must be one of {WEIGHT_MODES}")
    w = jnp.exp(logits) if mode == "exp" else jax.nn.sigmoid(logits)
    return w if max_weight is None else jnp.minimum(w, max_weight)


def bce(l_real, l_fake, w):
    """Algorithm 2: -log D(s,a,s') - log(1 - D(s,a,s~')) in logit form, averaged over rows with weight w."""
    per_row = jax.nn.softplus(-l_real) + jax.nn.softplus(l_fake)
    return jnp.sum(per_row * w) / jnp.maximum(jnp.sum(w), 1.0)


@jax.jit(static_argnames=("steps", "batch_size", "weight_decay"))
def _train(state: DiscState, obs, action, next_real, next_fake, n, key, steps: int, batch_size: int,
           weight_decay: float):
    """next_fake [F, cap, obs]: F model samples per real row (one drawn per minibatch row)."""
    cap, num_fake = obs.shape[0], next_fake.shape[0]
    valid = (jnp.arange(cap) < n).astype(jnp.float32)
    real_x = disc_inputs(obs, action, next_real)  # [cap, in]
    fake_x = jax.vmap(lambda nf: disc_inputs(obs, action, nf))(next_fake)  # [F, cap, in]
    # Standardizer over the valid real and fake rows together (the classifier's input distribution).
    count = jnp.maximum(n, 1) * (1 + num_fake)
    mean = (jnp.sum(real_x * valid[:, None], 0) + jnp.sum(fake_x * valid[:, None], (0, 1))) / count
    sq = (jnp.sum((real_x - mean) ** 2 * valid[:, None], 0)
          + jnp.sum((fake_x - mean) ** 2 * valid[:, None], (0, 1))) / count
    std = jnp.sqrt(sq)
    state = state.replace(norm_mean=mean, norm_std=jnp.where(std < 1e-6, 1.0, std))
    opt = optax.adam(state.lr)

    def loss_fn(params, idx, f):
        l_real = _logits(params, state.norm_mean, state.norm_std, real_x[idx])
        l_fake = _logits(params, state.norm_mean, state.norm_std, fake_x[f, idx])
        decay = sum(0.5 * weight_decay * jnp.sum(layer["w"] ** 2) for layer in params)
        return bce(l_real, l_fake, jnp.ones(idx.shape)) + decay

    def step(carry, k):
        params, opt_state = carry
        k_idx, k_fake = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(n, 1))  # n traced: one compile
        f = jax.random.randint(k_fake, (batch_size,), 0, num_fake)
        loss, grads = jax.value_and_grad(loss_fn)(params, idx, f)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(step, (state.params, state.opt_state), jax.random.split(key, steps))
    state = state.replace(params=params, opt_state=opt_state)
    # Diagnostics on all valid rows: balanced accuracy, and the mean weight exp(D~) under q
    # (E_q[p/q] = 1 for a calibrated discriminator).
    l_real = _logits(params, state.norm_mean, state.norm_std, real_x)
    l_fake = _logits(params, state.norm_mean, state.norm_std, fake_x)  # [F, cap]
    m = lambda a: jnp.sum(a * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    info = {
        "loss": jnp.mean(losses[-max(steps // 10, 1):]),  # mean of the last 10% of updates
        "accuracy": 0.5 * (m(l_real > 0) + m(jnp.mean(l_fake < 0, axis=0))),
        "fake_weight_mean": m(jnp.mean(jnp.exp(jnp.minimum(l_fake, 30.0)), axis=0)),
    }
    return state, info


def train_discriminator(state: DiscState, obs, action, next_obs_real, next_obs_fake, rng, n: int | None = None,
                        steps: int = 2000, batch_size: int = 256, weight_decay: float = 0.0
                        ) -> tuple[DiscState, dict]:
    """TRAINDISCRIMINATOR on the first n rows of fixed-capacity arrays (n None: all rows).

    obs [cap, obs], action [cap, F] (features), next_obs_real [cap, obs]; next_obs_fake
    [cap, obs] or [num_fake, cap, obs]: s~' ~ q(.|s, a) sampled by the caller for the REAL
    (s, a) of each row, so the logit estimates log p/q (Sec. 3.1). Each update takes
    batch_size // 2 real rows (uniform with replacement) and a fake counterpart of each
    (balanced classes). The input standardizer is refit on every call; params are
    trained from `state` (re-initialize with disc_init for Algorithm 2's fresh start).
    rng: np.random.Generator or a jax PRNG key. weight_decay: L2 on the weights.
    Returns the state and {"loss", "accuracy", "fake_weight_mean"} as floats.
    """
    n = obs.shape[0] if n is None else int(n)
    if not 0 < n <= obs.shape[0]:
        raise ValueError(f"invalid n={n}: must be in [1, {obs.shape[0]}]")
    if isinstance(rng, np.random.Generator):
        key = jax.random.key(int(rng.integers(2**31)))
    else:
        key = rng
    fake = jnp.asarray(next_obs_fake)
    fake = fake[None] if fake.ndim == 2 else fake
    state, info = _train(state, jnp.asarray(obs), jnp.asarray(action), jnp.asarray(next_obs_real), fake,
                         jnp.int32(n), key, steps=int(steps), batch_size=max(int(batch_size) // 2, 1),
                         weight_decay=float(weight_decay))
    return state, {k: float(v) for k, v in info.items()}
