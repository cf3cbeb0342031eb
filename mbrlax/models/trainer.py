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
from mbrlax.seeds import Seeds

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
                 penalty_fn: Callable[[dict], jax.Array] | None = None, seeds: Seeds | None = None):
        self.cfg = cfg
        self.seeds = seeds = seeds or Seeds((0,))
        if loss_fn is None:
            loss_fn, penalty_fn = member_nll_loss, penalty_fn or logvar_bounds_penalty
        score_fn, penalty_fn = score_fn or member_mse, penalty_fn or no_penalty
        self.opt = opt = make_optimizer(cfg)
        # Several seeds train vmapped on one device (their members are not split).
        self.split = split = MemberSplit.for_config(cfg.ensemble_size, cfg.devices if seeds.n == 1 else 1)
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

        def train_chunk_while_active(params, opt_state, *args):
            """A seed that has stopped (active False) keeps its parameters and optimizer state."""
            *args, active = args
            new_params, new_opt_state, loss = train_chunk(params, opt_state, *args)
            keep = lambda new, old: jnp.where(active, new, old)
            return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state), loss

        self._train_chunk = jax.jit(train_chunk if seeds.n == 1 else seeds.vmap(train_chunk_while_active, 0))
        self._holdout = jax.jit(seeds.vmap(holdout, 0))
        self._keep_improved = jax.jit(seeds.vmap(keep_improved, 0))
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
        if self.seeds.n != 1:
            raise ValueError(f"this trainer is for {self.seeds.n} seeds: use train_seeds")
        state, infos = self.train_seeds(state, x, y, n, [rng], [{"weights": weights, "bootstrap": bootstrap}])
        return state, infos[0]

    def train_seeds(self, state: ModelState, x, y, n: int, rngs: list[np.random.Generator],
                    options: list[dict]) -> tuple[ModelState, list[dict]]:
        """Train every seed's model (state, x, y as `self.seeds.combine` gives them) on its first `n` rows, each
        with its rng and options {weights, bootstrap} (see `train`); a seed whose early stopping ended stays
        frozen while the others train. Returns the (combined) state and one info dict per seed."""
        cfg, seeds, e = self.cfg, self.seeds, self.cfg.ensemble_size
        n_hold = min(int(n * cfg.holdout_ratio), cfg.max_holdout)
        if n - n_hold <= 0:
            raise ValueError(f"model training needs more data: {n} transitions give an empty train split")
        padded = _holdout_padding(n_hold, cfg.max_holdout)
        states, xs, ys = seeds.split(state), seeds.split(x), seeds.split(y)
        normed, placed, holds, boots = [], [], [], []
        for st, xi, yi, rng, opts in zip(states, xs, ys, rngs, options):
            perm = rng.permutation(n)
            hold, train = perm[:n_hold], perm[n_hold:]
            mean, std = input_normalizer(np.asarray(xi)[train])
            st = st.replace(norm_mean=jnp.asarray(mean), norm_std=jnp.asarray(std))
            normed.append(st)
            hold_idx = np.zeros(padded, np.int32)
            hold_idx[:n_hold] = hold
            hold_mask = np.arange(padded) < n_hold
            if n_hold == 0:  # tiny data sets: fall back to the training rows
                hold_idx, hold_mask = train[:cfg.max_holdout], np.ones(min(len(train), cfg.max_holdout))
            holds.append((jnp.asarray(hold_idx, jnp.int32), jnp.asarray(hold_mask, jnp.float32)))
            w = opts.get("weights")
            placed.append(self.place(st, xi, yi, jnp.ones(xi.shape[0]) if w is None else w))
            boots.append((opts.get("bootstrap") or uniform_bootstrap)(train, e, rng))
        params, opt_state, norm_mean, norm_std, x, y, weights = (seeds.combine(list(v)) for v in zip(*placed))
        hold_idx, hold_mask = (seeds.combine(list(v)) for v in zip(*holds))

        best_mse = [np.full(e, np.inf) for _ in range(seeds.n)]
        best_layers = params["layers"]
        epochs, since_improved, loss = [0] * seeds.n, [0] * seeds.n, [float("nan")] * seeds.n
        active = [True] * seeds.n
        while any(active):
            batches = [_epoch_batches(boot, cfg.batch_size, rng) for boot, rng in zip(boots, rngs)]
            idx = [self.pad_members(i, 0) for i, _ in batches]
            valid = [self.pad_members(v, False) for _, v in batches]
            n_batches = len(idx[0])
            flags = () if seeds.n == 1 else (seeds.combine([np.bool_(a) for a in active]),)
            total = 0.0
            for a, b in _chunks(n_batches):
                params, opt_state, l_sum = self._train_chunk(
                    params, opt_state, norm_mean, norm_std, x, y, weights,
                    seeds.combine([i[a:b] for i in idx]), seeds.combine([v[a:b] for v in valid]), *flags)
                total += l_sum
            mse = seeds.split(self._holdout(params, norm_mean, norm_std, x, y, weights, hold_idx, hold_mask))
            improved_all, totals = [], seeds.split(total)
            for s, was_active in enumerate(active):
                improved = np.zeros(e, bool)
                if was_active:
                    loss[s] = float(totals[s]) / n_batches
                    epochs[s] += 1
                    self.epochs_run, self.minibatches_run = self.epochs_run + 1, self.minibatches_run + n_batches
                    m = np.asarray(mse[s])[:e]
                    with np.errstate(invalid="ignore"):  # first epoch: best is inf
                        improved = (best_mse[s] - m) / np.abs(best_mse[s]) > cfg.improvement_threshold  # |.|: NLL < 0
                    improved |= np.isinf(best_mse[s]) & np.isfinite(m)
                    best_mse[s] = np.where(improved, m, best_mse[s])
                    since_improved[s] = 0 if improved.any() else since_improved[s] + 1
                    active[s] = not (not np.isfinite(loss[s]) or since_improved[s] > cfg.patience
                                     or (cfg.max_epochs and epochs[s] >= cfg.max_epochs))
                improved_all.append(self.pad_members(improved, False))
            if any(i.any() for i in improved_all):
                best_layers = self._keep_improved(best_layers, params["layers"], seeds.combine(improved_all))
        out, infos = [], []
        for s, (p, layers, o) in enumerate(zip(seeds.split(params), seeds.split(best_layers), seeds.split(opt_state))):
            p, o = self.split.unplace(dict(p, layers=layers), self.opt, o)
            elites = np.argsort(best_mse[s])[: cfg.num_elites]
            out.append(normed[s].replace(params=p, opt_state=o, elites=jnp.asarray(elites, jnp.int32),
                                         holdout_mse=jnp.asarray(best_mse[s])))
            infos.append({"model/train_loss": loss[s], "model/holdout_mse": float(np.mean(best_mse[s][elites])),
                          "model/epochs": epochs[s], "model/train_size": n - n_hold})
        return seeds.combine(out), infos
