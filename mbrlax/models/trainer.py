"""Ensemble trainer: bootstrap per member, holdout early stopping, elites.

Follows MBPO's trainer (REFERENCE.md): holdout 20% capped at 5000; after every
epoch a member whose holdout MSE improved by more than 1% (relative) is
snapshotted; training stops once no member improved for more than `patience`
epochs; the best snapshots are restored and the elites are the members with
the lowest holdout MSE. The model is warm-started across calls.

Index bookkeeping (splits, bootstrap, shuffles) is done in NumPy on the host;
the minibatch updates run in jitted scans over chunks of at most `CHUNK`
minibatches (at most log2(CHUNK)+1 compiled sizes for any data size), and the holdout check is one jitted call on a padded set.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax.sharding import PartitionSpec

from mbrlax.config import ModelConfig
from mbrlax.models.ensemble import ModelState, logvar_bounds_penalty, make_optimizer, member_mse, member_nll_loss
from mbrlax.parallel import AXIS, MEMBERS, SHARED, MemberSplit

CHUNK = 16  # max minibatches per jitted call

# (train_indices [n_train], ensemble_size, rng) -> bootstrap indices [ensemble, n_train]
BootstrapSampler = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def uniform_bootstrap(train_idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each member draws len(train_idx) samples with replacement (MBPO)."""
    return rng.choice(train_idx, size=(n, len(train_idx)), replace=True)


def weighted_bootstrap(weights: np.ndarray) -> BootstrapSampler:
    """Bootstrap with sampling probabilities proportional to `weights` over all data (PMAC)."""

    def sample(train_idx, n, rng):
        p = weights[train_idx] / weights[train_idx].sum()
        return rng.choice(train_idx, size=(n, len(train_idx)), replace=True, p=p)

    return sample


def _epoch_batches(boot: np.ndarray, batch: int, rng: np.random.Generator):
    """Shuffle each member's bootstrap row and cut it into minibatches.

    Returns idx [n_batches, E, batch] and valid (the last minibatch may be partial).
    """
    e, n = boot.shape
    order = np.argsort(rng.random((e, n)), axis=1)
    idx = np.take_along_axis(boot, order, axis=1)
    n_batches = -(-n // batch)
    pad = n_batches * batch - n
    idx = np.concatenate([idx, np.zeros((e, pad), idx.dtype)], axis=1)
    valid = np.concatenate([np.ones((e, n), bool), np.zeros((e, pad), bool)], axis=1)
    to_batches = lambda a: a.reshape(e, n_batches, batch).transpose(1, 0, 2)
    return to_batches(idx).astype(np.int32), to_batches(valid)


def _holdout_padding(n_hold: int, max_holdout: int) -> int:
    """Holdout rows are padded to the next power of two (>= 256), capped at max_holdout:
    few compiled sizes, and no evaluating 5000 rows when 1000 are real."""
    return min(max(256, 1 << max(n_hold - 1, 1).bit_length()), max_holdout)


def _chunks(n_batches: int):
    """Split n_batches into runs of CHUNK, then powers of two (few distinct compiled sizes)."""
    start = 0
    while start < n_batches:
        left = n_batches - start
        size = CHUNK if left >= CHUNK else 1 << (left.bit_length() - 1)
        yield start, start + size
        start += size


# (params, norm_mean, norm_std, x [E,B,in], y [E,B,out], w [E,B], weight_decays) -> scalar loss
LossFn = Callable[..., jax.Array]
# (params, norm_mean, norm_std, x [B,in], y [B,out], mask [B]) -> per-member holdout score [E], lower is better
ScoreFn = Callable[..., jax.Array]


def input_normalizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (mean, std) of model inputs [n, d], float32; constant columns get std 1.

    Computed in float64, and a std below 1e-6 of the column's scale counts as constant:
    in float32 a constant column such as a fixed heading of pi/2 shows a std of ~1e-7,
    and dividing by it would turn a model's tiny prediction error in that column into
    an input of ~1e5 on the next rollout step (MBPO's rule, std < 1e-12, misses this).
    """
    x = np.asarray(x, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std < 1e-6 * np.maximum(1.0, np.abs(mean)), 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def no_penalty(params) -> jax.Array:
    return jnp.zeros(())


class ModelTrainer:
    """Trains a ModelState on (inputs, targets, weights) arrays of fixed capacity.

    Any model whose params hold its stacked members under params["layers"] can be
    trained: `loss_fn` is the sum of its members' weighted training losses (each
    member's terms only), `penalty_fn` the loss terms of the leaves all members share,
    and `score_fn` its per-member holdout score (the ensemble's MSE by default; a
    mixture density network passes its NLL, since a mean's MSE says little about a
    multimodal fit). The members are split over `cfg.devices` devices
    (mbrlax/parallel.py); the result does not depend on the split.
    """

    def __init__(self, cfg: ModelConfig, loss_fn: LossFn | None = None, score_fn: ScoreFn | None = None,
                 penalty_fn: Callable[[dict], jax.Array] | None = None):
        self.cfg = cfg
        if loss_fn is None:
            loss_fn, penalty_fn = member_nll_loss, penalty_fn or logvar_bounds_penalty
        score_fn, penalty_fn = score_fn or member_mse, penalty_fn or no_penalty
        self.opt = opt = make_optimizer(cfg)
        self.split = split = MemberSplit.for_config(cfg.ensemble_size, cfg.devices)
        decays = cfg.weight_decays
        by_member = PartitionSpec(None, AXIS)  # [chunk, E, B] minibatch indices

        def train_chunk(params, opt_state, norm_mean, norm_std, x, y, w, idx, valid):
            def on_device(params, opt_state, norm_mean, norm_std, x, y, w, idx, valid):
                def step(carry, batch):
                    params, opt_state = carry
                    bidx, bvalid = batch  # [E_local, B]
                    loss, grads = jax.value_and_grad(loss_fn)(
                        params, norm_mean, norm_std, x[bidx], y[bidx], w[bidx] * bvalid, decays
                    )
                    penalty, penalty_grads = jax.value_and_grad(penalty_fn)(params)
                    grads = jax.tree.map(jnp.add, split.sum_shared(grads), penalty_grads)
                    updates, opt_state = opt.update(grads, opt_state, params)
                    return (optax.apply_updates(params, updates), opt_state), split.total(loss) + penalty

                (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (idx, valid))
                return params, opt_state, jnp.sum(losses)

            p_specs, o_specs = split.param_specs(params), split.opt_specs(params, opt, opt_state)
            return split.over_members(
                on_device, in_specs=(p_specs, o_specs) + (SHARED,) * 5 + (by_member, by_member),
                out_specs=(p_specs, o_specs, SHARED),
            )(params, opt_state, norm_mean, norm_std, x, y, w, idx, valid)

        def holdout(params, norm_mean, norm_std, x, y, w, idx, mask):
            # Weighted like the loss: with return weights (DAM's Eq. 10) an unweighted score would
            # early-stop on, and restore, the snapshot closest to the plain maximum-likelihood fit.
            def on_device(params, norm_mean, norm_std, x, y, w, idx, mask):
                return score_fn(params, norm_mean, norm_std, x[idx], y[idx], mask * w[idx])

            return split.over_members(
                on_device, in_specs=(split.param_specs(params),) + (SHARED,) * 7, out_specs=MEMBERS,
            )(params, norm_mean, norm_std, x, y, w, idx, mask)

        def keep_improved(best_layers, layers, improved):
            pick = lambda b, c: jnp.where(improved.reshape((-1,) + (1,) * (c.ndim - 1)), c, b)
            return jax.tree.map(pick, best_layers, layers)

        self._train_chunk = jax.jit(train_chunk)
        self._holdout = jax.jit(holdout)
        self._keep_improved = jax.jit(keep_improved)
        self.epochs_run = self.minibatches_run = 0  # totals over all trainings (`mbrlax bench`)

    def place(self, state: ModelState, x, y, w):
        """Padded params and optimizer state on their devices, and the data on every device."""
        params, opt_state = self.split.place(state.params, self.opt, state.opt_state)
        return params, opt_state, *self.split.replicate((state.norm_mean, state.norm_std, x, y, w))

    def pad_members(self, a: np.ndarray, fill) -> np.ndarray:
        """Minibatches [n, E, B] (member axis 1) or per-member flags [E] padded to the split's size."""
        return self.split.pad_host(a, 1 if a.ndim == 3 else 0, fill)

    def compile_all_chunk_sizes(self, state: ModelState, x, y) -> None:
        """Compile every chunk and holdout size up front (benchmarks exclude compile time); state is unchanged."""
        e, b = self.split.padded_size, self.cfg.batch_size
        params, opt_state, mean, std, x, y, w = self.place(state, x, y, jnp.ones(x.shape[0]))
        size = CHUNK
        while size >= 1:
            idx = jnp.zeros((size, e, b), jnp.int32)
            jax.block_until_ready(self._train_chunk(params, opt_state, mean, std, x, y, w, idx, idx > 0))
            size //= 2
        padded = 256
        while True:
            padded = min(padded, self.cfg.max_holdout)
            idx = jnp.zeros(padded, jnp.int32)
            jax.block_until_ready(self._holdout(params, mean, std, x, y, w, idx, jnp.ones(padded)))
            if padded == self.cfg.max_holdout:
                break
            padded *= 2

    def train(
        self,
        state: ModelState,
        x: jax.Array,
        y: jax.Array,
        n: int,
        rng: np.random.Generator,
        weights: jax.Array | None = None,
        bootstrap: BootstrapSampler = uniform_bootstrap,
    ) -> tuple[ModelState, dict]:
        """Train on the first `n` rows of x [cap, in], y [cap, out] (weights [cap] scale the NLL)."""
        cfg = self.cfg
        if weights is None:
            weights = jnp.ones(x.shape[0])
        perm = rng.permutation(n)
        n_hold = min(int(n * cfg.holdout_ratio), cfg.max_holdout)
        hold, train = perm[:n_hold], perm[n_hold:]
        if len(train) == 0:
            raise ValueError(f"model training needs more data: {n} transitions give an empty train split")
        mean, std = input_normalizer(np.asarray(x)[train])
        state = state.replace(norm_mean=jnp.asarray(mean), norm_std=jnp.asarray(std))
        padded = _holdout_padding(n_hold, cfg.max_holdout)
        hold_idx = np.zeros(padded, np.int32)
        hold_idx[:n_hold] = hold
        hold_mask = np.arange(padded) < n_hold
        if n_hold == 0:  # tiny data sets: fall back to the training rows
            hold_idx, hold_mask = train[:cfg.max_holdout], np.ones(min(len(train), cfg.max_holdout))
        hold_idx, hold_mask = jnp.asarray(hold_idx, jnp.int32), jnp.asarray(hold_mask, jnp.float32)
        e = cfg.ensemble_size
        params, opt_state, norm_mean, norm_std, x, y, weights = self.place(state, x, y, weights)

        boot = bootstrap(train, e, rng)
        best_mse = np.full(e, np.inf)
        best_layers = params["layers"]
        epochs, since_improved, loss = 0, 0, float("nan")
        while True:
            idx, valid = _epoch_batches(boot, cfg.batch_size, rng)
            idx, valid = self.pad_members(idx, 0), self.pad_members(valid, False)
            total = 0.0
            for a, b in _chunks(len(idx)):
                params, opt_state, l_sum = self._train_chunk(
                    params, opt_state, norm_mean, norm_std, x, y, weights, idx[a:b], valid[a:b]
                )
                total += l_sum
            loss = float(total) / len(idx)
            epochs += 1
            self.epochs_run, self.minibatches_run = self.epochs_run + 1, self.minibatches_run + len(idx)
            mse = np.asarray(self._holdout(params, norm_mean, norm_std, x, y, weights, hold_idx, hold_mask))[:e]
            with np.errstate(invalid="ignore"):  # first epoch: best is inf
                improved = (best_mse - mse) / np.abs(best_mse) > cfg.improvement_threshold  # |.|: NLL scores may be < 0
            improved |= np.isinf(best_mse) & np.isfinite(mse)
            if improved.any():
                best_layers = self._keep_improved(best_layers, params["layers"], self.pad_members(improved, False))
                best_mse = np.where(improved, mse, best_mse)
                since_improved = 0
            else:
                since_improved += 1
            if not np.isfinite(loss) or since_improved > cfg.patience or (cfg.max_epochs and epochs >= cfg.max_epochs):
                break
        params, opt_state = self.split.unplace(dict(params, layers=best_layers), self.opt, opt_state)
        elites = np.argsort(best_mse)[: cfg.num_elites]
        state = state.replace(
            params=params, opt_state=opt_state, elites=jnp.asarray(elites, jnp.int32),
            holdout_mse=jnp.asarray(best_mse),
        )
        info = {
            "model/train_loss": loss,
            "model/holdout_mse": float(np.mean(best_mse[elites])),
            "model/epochs": epochs,
            "model/train_size": len(train),
        }
        return state, info
