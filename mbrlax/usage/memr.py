"""MEMR: Maximum Entropy Model Rollouts (shared/papers/memr.md, Algorithm 1; SPECS.md section 2).

Every `memr.every` env steps (the paper: every step):
    draw M = rollout.batch_size start states i ~ P(i) = p_i^a / sum_k p_k^a      (Eq. 3)
    importance weights w_i = (N P(i))^-b / max_j w_j, b annealed 0.4 -> 1.0       (Eq. 5)
    one model step from each with a ~ pi_phi: one new segment of the model buffer (l.12-14)
    fit the model-data policy pi_psi to the segment's (s, a) for D epochs          (l.15)
    recompute the priorities of the sampled states with a fresh a ~ pi_phi        (l.16, SPECS B2)
Each new real row gets its priority on insertion (l.8). Every agent minibatch is drawn
from one uniformly chosen segment (l.18); the importance weights weight the Q loss
only (l.19), the policy loss is unweighted (l.20).

Priority (Eq. 4, multi-dimensional reading SPECS B1): with pi_psi(.|s) = N(mu, diag sigma^2)
over the pre-tanh action u = atanh(a),
    p = -(log pi_psi(u|s) / d + mean_d log sigma_d + 0.5 log 2 pi) = 0.5 mean_d ((u_d - mu_d) / sigma_d)^2,
the squared z-score of the current policy's action under the model data, clipped to
[1e-4, 50] as in the authors' reimplementation. The masses p^a live in a sum tree
(mbrlax/usage/sumtree.py): at 100k-400k rows it draws 400 starts 1.5-3x faster than a
cumulative sum (README, benchmarks/priority_sampling.py).

The model buffer's capacity is a whole number of segments; a one-step rollout writes
all of its M rows (terminal ones included), so segment g sits at rows
[(g mod S) M, (g mod S + 1) M) and its importance weights at the same rows of
`usage["is_weight"]`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbrlax.agents.sac import sample_action
from mbrlax.buffers import sample_indices
from mbrlax.config import MEMRConfig, TrainConfig
from mbrlax.nets import mlp_apply, mlp_init
from mbrlax.types import Batch
from mbrlax.usage.base import ModelUsage, minibatch
from mbrlax.usage.sumtree import sumtree_build, sumtree_probs, sumtree_sample, sumtree_set

__all__ = ["MEMR", "MEMRConfig", "importance_weights", "priority", "psi_gaussian", "psi_nll"]

PSI_LOG_STD = (-10.0, 5.0)
PRIORITY_CLIP = (1e-4, 50.0)
ACTION_CLIP = 1.0 - 1e-3


def psi_gaussian(psi, obs):
    """pi_psi's mean and log std of the pre-tanh action."""
    mean, log_std = jnp.split(mlp_apply(psi, obs), 2, axis=-1)
    return mean, jnp.clip(log_std, *PSI_LOG_STD)


def pre_tanh(action):
    return jnp.arctanh(jnp.clip(action, -ACTION_CLIP, ACTION_CLIP))


def z_scores(psi, obs, action):
    """(z, log std) of the pre-tanh actions under pi_psi: z = (atanh(a) - mu) / sigma, [n, d] each."""
    mean, log_std = psi_gaussian(psi, obs)
    return (pre_tanh(action) - mean) * jnp.exp(-log_std), log_std


def psi_nll(psi, obs, action):
    """Per-row negative log-likelihood of the pre-tanh actions under pi_psi: [n]."""
    z, log_std = z_scores(psi, obs, action)
    return jnp.sum(0.5 * z**2 + log_std + 0.5 * jnp.log(2 * jnp.pi), axis=-1)


def priority(psi, obs, action):
    """Eq. 4 per row (SPECS B1): 0.5 mean_d z_d^2, clipped: [n]."""
    z, _ = z_scores(psi, obs, action)
    return jnp.clip(0.5 * jnp.mean(z**2, axis=-1), *PRIORITY_CLIP)


def importance_weights(p_sampled, size, beta, norm: str = "max"):
    """w = (N P(i))^-b, divided by the max (Eq. 5) or the mean of the sampled rows."""
    w = (size * p_sampled) ** -beta
    return w / (jnp.max(w) if norm == "max" else jnp.mean(w))


class MEMR(ModelUsage):
    """MBPO's model and trainer with MEMR's rollouts, starts, segmented model buffer and Q weights."""

    metric_columns = ("memr/priority_mean", "memr/is_weight_min", "memr/is_weight_mean", "memr/pi_psi_nll",
                      "memr/beta")

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.m: MEMRConfig = cfg.memr
        self.segment = cfg.rollout.batch_size
        self.n_segments = max(1, self.m.model_buffer_size // self.segment)
        self.psi_opt = optax.adam(self.m.psi_lr)

    def beta(self, env_steps):
        """The IS exponent, linear from beta_start to beta_end over the run (SPECS B7)."""
        frac = jnp.clip(env_steps / self.cfg.total_steps, 0.0, 1.0)
        return self.m.beta_start + (self.m.beta_end - self.m.beta_start) * frac

    # ---- state: pi_psi and its optimizer, each real row's priority p (0 = no row yet) and the sum tree
    # of p^a, each model row's IS weight
    def init(self, key, obs_dim, act_dim):
        psi = mlp_init(key, [obs_dim, self.m.psi_hidden, self.m.psi_hidden, 2 * act_dim])
        return {
            "psi": psi, "psi_opt": self.psi_opt.init(psi),
            "priority": jnp.zeros(self.cfg.total_steps, jnp.float32),
            "tree": sumtree_build(jnp.zeros(self.cfg.total_steps, jnp.float32)),
            "is_weight": jnp.ones(self.imagined_capacity(), jnp.float32),
            "segments": jnp.int32(0),  # segments written so far
            "psi_nll": jnp.float32(jnp.nan), "is_weight_min": jnp.float32(jnp.nan),
            "is_weight_mean": jnp.float32(jnp.nan),  # of the newest segment
        }

    def set_priorities(self, usage, rows, p):
        """Priorities p of `rows`, in the array and (as p^a) in the sum tree."""
        prio = usage["priority"].at[rows].set(p)
        return {**usage, "priority": prio, "tree": sumtree_set(usage["tree"], rows, prio[rows] ** self.m.alpha)}

    def on_real_step(self, usage, real, row, actor):
        p = priority(usage["psi"], real.data.obs[row][None], real.data.action[row][None])  # l.8
        return self.set_priorities(usage, row[None], p)

    # ---- rollouts: one step, every `every` env steps, from prioritized starts
    def rollout_due(self, loop_step):
        return loop_step % self.m.every == 0

    def rollout_horizon(self, epoch):
        return 1

    def max_horizon(self):
        return 1

    def imagined_capacity(self):
        return self.n_segments * self.segment

    def rollout_starts(self, usage, real, key, n):
        idx = sumtree_sample(usage["tree"], key, n)  # Eq. 3
        w = importance_weights(sumtree_probs(usage["tree"], idx), real.size, self.beta(real.size), self.m.is_norm)
        return idx, w

    def fit_psi(self, psi, opt_state, obs, action, key):
        """D epochs of maximum likelihood on the segment's (s, a) in minibatches (l.15) -> (psi, opt, nll)."""
        n = obs.shape[0]
        bs = min(self.m.psi_batch_size, n)
        per_epoch = math.ceil(n / bs)
        loss = lambda p, o, a: jnp.mean(psi_nll(p, o, a))

        def step(carry, rows):
            p, o = carry
            value, grads = jax.value_and_grad(loss)(p, obs[rows], action[rows])
            updates, o = self.psi_opt.update(grads, o, p)
            return (optax.apply_updates(p, updates), o), value

        perms = jax.vmap(lambda k: jnp.resize(jax.random.permutation(k, n), (per_epoch, bs)))(
            jax.random.split(key, self.m.psi_epochs))
        (psi, opt_state), losses = jax.lax.scan(step, (psi, opt_state), perms.reshape(-1, bs))
        return psi, opt_state, jnp.mean(losses[-per_epoch:])

    def after_rollout(self, usage, start_idx, extras, transitions, valid, disagreement, actor, key):
        k_fit, k_act = jax.random.split(key)
        obs, action = transitions.obs[0], transitions.action[0]
        psi, opt_state, nll = self.fit_psi(usage["psi"], usage["psi_opt"], obs, action, k_fit)
        fresh, _ = sample_action(actor, obs, k_act)  # a' ~ pi_phi(s_j) for the new priority (SPECS B2)
        first = (usage["segments"] % self.n_segments) * self.segment
        usage = self.set_priorities(usage, start_idx, priority(psi, obs, fresh))  # l.16
        return {
            **usage, "psi": psi, "psi_opt": opt_state, "psi_nll": nll, "is_weight_min": jnp.min(extras),
            "is_weight_mean": jnp.mean(extras),
            "is_weight": jax.lax.dynamic_update_slice(usage["is_weight"], extras, (first,)),
            "segments": usage["segments"] + 1,
        }

    # ---- agent: minibatches from one uniformly chosen segment, IS weights on the Q loss only
    def agent_rows(self, real, imagined, window, key):
        """Real rows uniformly (real_ratio), then model rows uniformly inside one uniformly drawn segment (l.18)."""
        n_model = self.cfg.sac.batch_size - self.real_batch_size()
        k_real, k_seg, k_row = jax.random.split(key, 3)
        held = jnp.maximum(imagined.size // self.segment, 1)  # complete segments in the buffer
        back = jax.random.randint(k_seg, (), 0, held)  # 0 = the newest segment
        first = (imagined.ptr - (back + 1) * self.segment) % imagined.capacity
        rows = (first + jax.random.randint(k_row, (n_model,), 0, self.segment)) % imagined.capacity
        return sample_indices(real, k_real, self.real_batch_size()), rows

    def agent_batch(self, usage, real, imagined, window, key):
        real_idx, model_idx = self.agent_rows(real, imagined, window, key)
        q_weight = jnp.concatenate([jnp.ones(real_idx.shape[0]), usage["is_weight"][model_idx]])  # l.19
        batch = minibatch(real, imagined, real_idx, model_idx)
        return Batch(**vars(batch), q_weight=q_weight, pi_weight=jnp.ones_like(q_weight))  # l.20: unweighted

    def clear_model_rows(self, usage):
        return {**usage, "is_weight": jnp.ones_like(usage["is_weight"])}

    def metrics(self, state):
        u, size = state.usage, int(state.real.size)
        return {"memr/priority_mean": float(np.mean(np.asarray(u["priority"][:size]))) if size else float("nan"),
                "memr/is_weight_min": float(u["is_weight_min"]), "memr/is_weight_mean": float(u["is_weight_mean"]),
                "memr/pi_psi_nll": float(u["psi_nll"]),
                "memr/beta": float(self.beta(size))}
