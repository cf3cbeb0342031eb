"""Transition discriminator (DAM Sec. 3.1, Eq. 5-8, Algorithm 2 TRAINDISCRIMINATOR).

D(s, a, s') tells real next states (y = 1) from model samples s~' ~ q(.|s, a) (y = 0)
for the same real (s, a) ~ p(s, a). For the Bayes-optimal classifier of this balanced
problem D = p / (p + q), so its logit D~ = log p(s'|s,a) / q(s'|s,a) (Eq. 5-7) and
exp(D~) is the importance weight of Eq. 8.

Network: ReLU MLP on standardized concat(s, a, s') -> one logit. Training (Algorithm 2):
every update draws real rows (s, a, s') ~ T uniformly with replacement and, for each, a
model sample s~' ~ q(.|s, a) -- drawn fresh in every update from the model (`sampler`), or
picked from F samples per row drawn beforehand -- and takes an Adam step on the binary
cross-entropy. "while not converged": a random fraction `holdout` of the real rows is kept
out of training, the held-out cross-entropy (against fixed model samples of those rows) is
checked every `check_every` updates, and training stops after `patience` checks without
improvement, returning the best checked parameters (the initial ones included). All in one jitted lax.while_loop;
inputs have a fixed capacity and n is traced, so growing data does not re-compile.
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


HOLDOUT_SAMPLES = 8  # fixed model samples per held-out row (the early-stopping criterion's fakes)


def split_rows(n: int, holdout: float, cap: int, rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray]:
    """Random train / held-out split of the first n of cap rows: (train_idx [cap] (first n_train valid,
    padded with 0), n_train, holdout_mask [cap]). holdout > 0 keeps round(holdout * n) >= 1 rows out
    (none when n < 2)."""
    n_hold = min(max(int(round(holdout * n)), 1), n - 1) if holdout > 0 and n >= 2 else 0
    perm = rng.permutation(n)
    train_idx = np.zeros(cap, np.int32)
    train_idx[: n - n_hold] = perm[n_hold:]
    mask = np.zeros(cap, np.float32)
    mask[perm[:n_hold]] = 1.0
    return train_idx, n - n_hold, mask


def _stats(a, w):
    """(mean, std) of a [..., cap] over the rows of weight w [cap] (broadcast over leading axes)."""
    w = jnp.broadcast_to(w, a.shape)
    total = jnp.maximum(jnp.sum(w), 1.0)
    mean = jnp.sum(a * w) / total
    return mean, jnp.sqrt(jnp.sum((a - mean) ** 2 * w) / total)


def balanced_accuracy(l_real, l_fake, w):
    """(fraction of real rows with logit > 0 + fraction of fakes with logit < 0) / 2 over rows of weight w."""
    return 0.5 * (_stats(l_real > 0, w)[0] + _stats(l_fake < 0, w)[0])


@jax.jit(static_argnames=("sampler", "steps", "batch_size", "weight_decay", "check_every", "patience"))
def _train(state: DiscState, obs, action, next_real, fakes, sampler_params, train_idx, n_train, hold, n, key,
           sampler, steps: int, batch_size: int, weight_decay: float, check_every: int, patience: int):
    """fakes [F, cap, obs]: model samples per row, drawn beforehand (F = HOLDOUT_SAMPLES when `sampler`
    is given; then every update draws its own with sampler(sampler_params, obs, action, key))."""
    cap, num_fake = obs.shape[0], fakes.shape[0]
    valid = (jnp.arange(cap) < n).astype(jnp.float32)
    real_x = disc_inputs(obs, action, next_real)  # [cap, in]
    fake_x = jax.vmap(lambda nf: disc_inputs(obs, action, nf))(fakes)  # [F, cap, in]
    # Standardizer over the valid real and fake rows together (the classifier's input distribution).
    mean, std = jax.vmap(lambda col, fcol: _stats(jnp.concatenate([col[None], fcol]), valid),
                         in_axes=-1, out_axes=0)(real_x, fake_x)
    state = state.replace(norm_mean=mean, norm_std=jnp.where(std < 1e-6, 1.0, std))
    logits = lambda params, x: _logits(params, state.norm_mean, state.norm_std, x)
    opt = optax.adam(state.lr)
    use_holdout = jnp.sum(hold) > 0

    def fake_rows(k, idx):
        """One model sample s~' ~ q(.|s, a) for each real row idx (Algorithm 2)."""
        if sampler is not None:
            return disc_inputs(obs[idx], action[idx], sampler(sampler_params, obs[idx], action[idx], k))
        return fake_x[jax.random.randint(k, idx.shape, 0, num_fake), idx]

    def loss_fn(params, idx, x_fake):
        decay = sum(0.5 * weight_decay * jnp.sum(layer["w"] ** 2) for layer in params)
        return bce(logits(params, real_x[idx]), logits(params, x_fake), jnp.ones(idx.shape)) + decay

    def update(carry, k):
        params, opt_state = carry
        k_idx, k_fake = jax.random.split(k)
        idx = train_idx[jax.random.randint(k_idx, (batch_size,), 0, jnp.maximum(n_train, 1))]  # traced: one compile
        loss, grads = jax.value_and_grad(loss_fn)(params, idx, fake_rows(k_fake, idx))
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def holdout_loss(params):  # the held-out cross-entropy of Algorithm 2's loss, fixed fakes
        l_fake = logits(params, fake_x)  # [F, cap]
        per_row = jax.nn.softplus(-logits(params, real_x)) + jnp.mean(jax.nn.softplus(l_fake), axis=0)
        return jnp.sum(per_row * hold) / jnp.maximum(jnp.sum(hold), 1.0)

    def check(carry):
        i, params, opt_state, best, best_loss, best_i, bad, _ = carry
        (params, opt_state), losses = jax.lax.scan(update, (params, opt_state),
                                                   jax.random.split(jax.random.fold_in(key, i), check_every))
        h = holdout_loss(params)
        better = jnp.logical_or(~use_holdout, h < best_loss)  # without a holdout: keep the latest
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
        return (i + 1, params, opt_state, best, jnp.where(better, h, best_loss), jnp.where(better, i + 1, best_i),
                jnp.where(better, 0, bad + 1), jnp.mean(losses))

    num_checks = max(steps // check_every, 1)
    # The fresh initialization is a candidate too: if no update beats it on held-out rows, D stays
    # uninformative (logits near 0, weights nearly equal) instead of trusting a memorized fit.
    carry0 = (0, state.params, state.opt_state, state.params, holdout_loss(state.params), 0, 0, jnp.asarray(jnp.nan))
    i, _, opt_state, params, best_loss, best_i, _, last_loss = jax.lax.while_loop(
        lambda c: (c[0] < num_checks) & (c[6] < patience), check, carry0)
    state = state.replace(params=params, opt_state=opt_state)
    # Diagnostics: balanced accuracy on the training rows and on the held-out rows (fixed fakes), the
    # logits' mean and spread on held-out real rows and their model samples (all rows without a
    # holdout), and the mean weight exp(D~) under q (E_q[p/q] = 1 for a calibrated discriminator).
    l_real, l_fake = logits(params, real_x), logits(params, fake_x)
    train_rows = valid * (1.0 - hold)
    eval_rows = jnp.where(use_holdout, hold, valid)
    (real_mean, real_std), (fake_mean, fake_std) = _stats(l_real, eval_rows), _stats(l_fake, eval_rows)
    info = {
        "loss": last_loss,  # mean training loss of the last check_every updates
        "accuracy": balanced_accuracy(l_real, l_fake, train_rows),
        "holdout_accuracy": jnp.where(use_holdout, balanced_accuracy(l_real, l_fake, hold), jnp.nan),
        "holdout_loss": jnp.where(use_holdout, best_loss, jnp.nan),
        "steps": i * check_every, "best_step": best_i * check_every,
        "real_logit_mean": real_mean, "real_logit_std": real_std,
        "model_logit_mean": fake_mean, "model_logit_std": fake_std,
        "fake_weight_mean": _stats(jnp.exp(jnp.minimum(l_fake, 30.0)), valid)[0],
    }
    return state, info


def train_discriminator(state: DiscState, obs, action, next_obs_real, next_obs_fake, rng,
                        n: int | None = None, steps: int = 2000, batch_size: int = 256, weight_decay: float = 0.0,
                        holdout: float = 0.0, patience: int = 10, check_every: int = 50,
                        sampler=None, sampler_params=None) -> tuple[DiscState, dict]:
    """TRAINDISCRIMINATOR (Algorithm 2) on the first n rows of fixed-capacity arrays (n None: all rows).

    obs [cap, obs], action [cap, F] (features), next_obs_real [cap, obs]. Model samples
    s~' ~ q(.|s, a) of the REAL (s, a) of each row (so the logit estimates log p/q, Sec. 3.1):
    either `sampler(sampler_params, obs [B, obs], action [B, F], key) -> [B, obs]`, a jax
    function called in every update for that update's rows (Algorithm 2; keep one function
    object per model kind: it is a static argument of the compiled loop), or
    next_obs_fake [cap, obs] / [num_fake, cap, obs] drawn by the caller (one is picked per row
    and update; None with a sampler). Each update takes batch_size // 2 real rows and a model sample of each
    (balanced classes). holdout > 0: that fraction of the rows is held out and training
    stops after `patience` held-out checks (every `check_every` updates, at most `steps`)
    without a lower held-out cross-entropy, keeping the best checked parameters; holdout
    = 0 trains all steps (rounded down to a multiple of check_every). The input standardizer
    is refit on every call; params are trained from `state` (disc_init for Algorithm 2's
    fresh start). rng: np.random.Generator or a jax PRNG key. weight_decay: L2 on the weights.
    Returns the state and float diagnostics: loss, accuracy (training rows), holdout_accuracy,
    holdout_loss (NaN without a holdout), steps, best_step, real/model_logit_mean/std
    (held-out rows; all rows without a holdout) and fake_weight_mean.
    """
    cap = obs.shape[0]
    n = cap if n is None else int(n)
    if not 0 < n <= cap:
        raise ValueError(f"invalid n={n}: must be in [1, {cap}]")
    if (sampler is None) == (next_obs_fake is None):
        raise ValueError("give exactly one source of model samples: next_obs_fake or sampler")
    if not 0.0 <= holdout < 1.0 or int(patience) < 1 or int(check_every) < 1:
        raise ValueError(f"invalid holdout={holdout}, patience={patience}, check_every={check_every}: "
                         "need 0 <= holdout < 1, patience >= 1, check_every >= 1")
    if isinstance(rng, np.random.Generator):
        key = jax.random.key(int(rng.integers(2**31)))
    else:  # a jax key: the host-side split draws from it too
        key = rng
        rng = np.random.default_rng(int(jax.random.randint(jax.random.fold_in(key, 2), (), 0, 2**31 - 1)))
    obs, action = jnp.asarray(obs), jnp.asarray(action)
    if sampler is not None:  # fixed samples for the standardizer and the held-out criterion
        keys = jax.random.split(jax.random.fold_in(key, 1), HOLDOUT_SAMPLES)
        fakes = jax.vmap(lambda k: sampler(sampler_params, obs, action, k))(keys)
    else:
        fakes = jnp.asarray(next_obs_fake)
        fakes = fakes[None] if fakes.ndim == 2 else fakes
    train_idx, n_train, hold = split_rows(n, holdout, cap, rng)
    check_every = min(int(check_every), int(steps))
    state, info = _train(state, obs, action, jnp.asarray(next_obs_real), fakes, sampler_params,
                         jnp.asarray(train_idx), jnp.int32(n_train), jnp.asarray(hold), jnp.int32(n), key,
                         sampler=sampler, steps=int(steps), batch_size=max(int(batch_size) // 2, 1),
                         weight_decay=float(weight_decay), check_every=check_every, patience=int(patience))
    return state, {k: float(v) for k, v in info.items()}
