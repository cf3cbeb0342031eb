"""PMAC: Policy-adaptation Model-based Actor-Critic (shared/papers/pmac.md; SPECS.md section 1).

The real data is split into chunks, one per historical policy: chunk 0 is the
initial exploration data, chunk j >= 1 the `pmac.chunk_steps` env steps after
it (a real-buffer row index is its env step: the buffer holds `total_steps`
rows and never wraps). Each chunk has a mass W_j; a row's probability is its
chunk's mass over the chunk's present size (SPECS 1.3 A2), and those
probabilities draw the model's training data and the rollout start states.

Paper rule (Algorithm 1, Eq. 4), applied once for every new chunk k:
    W_i <- alpha W_i (i < k),   W_k = (1 - alpha) / alpha * sum_{i<k} W_i
so with sum 1: W_0 = alpha^k, W_j = (1 - alpha) alpha^(k-j), newest share 1 - alpha.

TV rule (`pmac.weights="tv"`, the authors' released code, SPECS 1.4, our reading):
every old chunk c (1 <= c < k) weighs 1/TV_c per row, normalized over the old
chunks, where TV_c is the authors' Gaussian TV estimate between the current
policy and the one that collected chunk c. We evaluate it on chunk c's own states
(about `tv_states` rows in all, subsampled per round) with the policy outputs
recorded when each row was collected, instead of storing per-chunk actor
snapshots and evaluating them on all states. Exploration rows weigh 0.05 u_1,
newest rows max((0.05 u_1 + 1) r / (1 - r), max u) with r = tv_max_rate.
Before the buffer holds init_steps + 1000 rows all rows weigh the same.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.agents.sac import _gaussian
from mbrlax.buffers import Buffer
from mbrlax.config import PMACConfig, TrainConfig
from mbrlax.usage.base import ModelUsage

__all__ = ["PMAC", "PMACConfig", "chunk_ids", "num_chunks", "paper_masses", "row_probs", "tv_distance"]


def max_chunks(cfg: TrainConfig) -> int:
    """Chunks a run can have: the exploration chunk and ceil((total - init) / chunk_steps) more."""
    return 1 + max(1, math.ceil((cfg.total_steps - cfg.init_steps) / cfg.pmac.chunk_steps))


def chunk_ids(capacity: int, init_steps: int, chunk_steps: int) -> jax.Array:
    """c(r) = 0 for r < init_steps, else 1 + (r - init_steps) // chunk_steps: int32 [capacity]."""
    r = jnp.arange(capacity)
    return jnp.where(r < init_steps, 0, 1 + (r - init_steps) // chunk_steps).astype(jnp.int32)


def num_chunks(size, init_steps: int, chunk_steps: int):
    """Chunks after chunk 0 with at least one row among the first `size` rows (the newest may be partial)."""
    return jnp.maximum(0, -(-(size - init_steps) // chunk_steps)).astype(jnp.int32)


def chunk_sizes(size, init_steps: int, chunk_steps: int, n: int) -> jax.Array:
    """Rows of each chunk present among the first `size` rows: [n]."""
    c = jnp.arange(n)
    later = jnp.clip(size - init_steps - (c - 1) * chunk_steps, 0, chunk_steps)
    return jnp.where(c == 0, jnp.minimum(size, init_steps), later).astype(jnp.float32)


def paper_masses(mass: jax.Array, done: jax.Array, k: jax.Array, alpha: float) -> jax.Array:
    """Algorithm 1 / Eq. 4 for each new chunk j = done+1..k: old masses x alpha, chunk j gets
    (1 - alpha) / alpha times the discounted old mass."""

    def add_chunk(j, m):
        m = m * alpha  # chunks >= j are still 0
        return m.at[j].set((1.0 - alpha) / alpha * jnp.sum(m))

    return jax.lax.fori_loop(done + 1, k + 1, add_chunk, mass)


def row_probs(mass: jax.Array, size, ids: jax.Array, sizes: jax.Array) -> jax.Array:
    """p(r) = W_c(r) / n_c(r) for rows r < size, 0 beyond; normalized to sum 1: [capacity]."""
    per_row = jnp.where(sizes > 0, mass / jnp.maximum(sizes, 1.0), 0.0)[ids]
    p = jnp.where(jnp.arange(ids.shape[0]) < size, per_row, 0.0)
    return p / jnp.sum(p)


def tv_distance(mu_old, log_std_old, mu, log_std) -> jax.Array:
    """The authors' TV estimate (PDML sac/tvd.py), per row: 0.5 sqrt(sum log(s_old/s) - d + sum s/s_old
    + sum (mu_old - mu)^2 / s_old), with per-dimension pre-tanh stds s where variances belong."""
    s_old, s = jnp.exp(log_std_old), jnp.exp(log_std)
    d = mu.shape[-1]
    kl = jnp.sum(log_std_old - log_std, -1) - d + jnp.sum(s / s_old, -1) + jnp.sum((mu_old - mu) ** 2 / s_old, -1)
    return 0.5 * jnp.sqrt(jnp.maximum(kl, 0.0))


class PMAC(ModelUsage):
    """MBPO with PMAC's policy-adapted weights on model-training data and rollout starts."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.p = cfg.pmac
        self.n_chunks = max_chunks(cfg)

    # ---- state: chunk masses (and, for the TV rule, each real row's policy outputs)
    def init(self, key, obs_dim, act_dim):
        state = {"mass": jnp.zeros(self.n_chunks, jnp.float32).at[0].set(1.0), "chunks": jnp.int32(0),
                 "rounds": jnp.int32(0)}  # chunks after chunk 0 weighted so far; model rounds so far
        if self.p.weights == "tv":
            cap = self.cfg.total_steps
            state["row_mu"] = jnp.zeros((cap, act_dim), jnp.float32)
            state["row_log_std"] = jnp.zeros((cap, act_dim), jnp.float32)
        return state

    def on_real_step(self, usage, real, row, actor):
        if self.p.weights != "tv":
            return usage
        mu, log_std = _gaussian(actor, real.data.obs[row][None])
        return {**usage, "row_mu": usage["row_mu"].at[row].set(mu[0]),
                "row_log_std": usage["row_log_std"].at[row].set(log_std[0])}

    def _geometry(self, real: Buffer):
        cfg = self.cfg
        ids = chunk_ids(real.capacity, cfg.init_steps, self.p.chunk_steps)
        sizes = chunk_sizes(real.size, cfg.init_steps, self.p.chunk_steps, self.n_chunks)
        k = num_chunks(real.size, cfg.init_steps, self.p.chunk_steps)
        return ids, sizes, k

    def on_model_round(self, usage, real, actor, key):
        _, sizes, k = self._geometry(real)
        if self.p.weights == "paper":
            mass = paper_masses(usage["mass"], usage["chunks"], k, self.p.alpha)
        else:
            mass = self._tv_masses(usage, real, actor, key, sizes, k)
        return {**usage, "mass": mass, "chunks": k, "rounds": usage["rounds"] + 1}

    def _tv_masses(self, usage, real, actor, key, sizes, k):
        cfg, n = self.cfg, self.n_chunks
        per_chunk = -(-self.p.tv_states // n)
        c = jnp.arange(n)
        start = jnp.where(c == 0, 0, cfg.init_steps + (c - 1) * self.p.chunk_steps)
        u = jax.random.uniform(key, (n, per_chunk))
        rows = (start[:, None] + jnp.floor(u * jnp.maximum(sizes, 1.0)[:, None])).astype(jnp.int32)
        rows = jnp.clip(rows, 0, real.capacity - 1)
        mu, log_std = _gaussian(actor, real.data.obs[rows])
        tv = jnp.mean(tv_distance(usage["row_mu"][rows], usage["row_log_std"][rows], mu, log_std), axis=1)
        old = (c >= 1) & (c < k) & (sizes > 0)
        inv = jnp.where(old, 1.0 / jnp.maximum(tv, 1e-6), 0.0)
        w_old = inv / jnp.maximum(jnp.sum(inv), 1e-12)  # per-row weight of each old chunk
        r = self.p.tv_max_rate
        w_explore = 0.05 * w_old[1]
        w_new = jnp.maximum((w_explore + 1.0) * r / (1.0 - r), jnp.max(w_old))
        per_row = jnp.where(c == 0, w_explore, jnp.where(c == k, w_new, w_old))
        mass = per_row * sizes
        ready = (real.size >= cfg.init_steps + 1000) & (k >= 2)
        mass = jnp.where(ready, mass, sizes)  # uniform until enough chunks exist
        return mass / jnp.sum(mass)

    # ---- uses of the weights
    def probs(self, usage, real: Buffer) -> jax.Array:
        """Per-row probabilities [capacity] from the current chunk masses."""
        ids, sizes, _ = self._geometry(real)
        return row_probs(usage["mass"], real.size, ids, sizes)

    def real_data_weights(self, usage, real):
        return self.probs(usage, real) if self.p.for_model else None

    def model_train_args(self, weights):
        if weights is None:
            return {}
        if self.p.holdout == "weighted":  # loss weights (mean 1 over present rows); the trainer weights the holdout alike
            w = np.asarray(weights, np.float64)
            return {"weights": jnp.asarray(w * np.count_nonzero(w), jnp.float32)}
        return super().model_train_args(np.asarray(weights, np.float64))

    # ---- logging: where the mass sits, and how many rows it effectively spreads over
    metric_columns = ("pmac/newest_share", "pmac/chunk0_share", "pmac/ess_fraction")

    def metrics(self, state):
        """newest_share: the mass of the newest weighted chunk (0.1 under the paper rule once a chunk is added);
        chunk0_share: the exploration data's; ess_fraction: the rows' effective sample size 1 / sum p^2 over
        the rows present (1 = uniform)."""
        u, size = state.usage, int(state.real.size)
        mass = np.asarray(u["mass"], np.float64)
        p = np.asarray(self.probs(u, state.real), np.float64)
        return {"pmac/newest_share": float(mass[int(u["chunks"])]), "pmac/chunk0_share": float(mass[0]),
                "pmac/ess_fraction": float(1.0 / np.sum(p**2) / size) if size else float("nan")}

    def rollout_starts(self, usage, real, key, n):
        if not self.p.for_starts:
            return super().rollout_starts(usage, real, key, n)
        return jax.random.choice(key, real.capacity, (n,), p=self.probs(usage, real)), None
