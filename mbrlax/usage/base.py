"""Model-usage strategies: the decisions PMAC, MEMR and ReW change in the Dyna loop.

A strategy is a plain object built from the TrainConfig; its state is a pytree
kept in `RunState.usage`, so it is jitted, checkpointed and resumed with the rest
of the run. Every method below is a seam with MBPO's behaviour as the default
(SPECS.md section 5); methods marked "traced" run inside jitted functions and
must keep shapes fixed (no retraces).

    per real env step      on_real_step          (traced, after the row is added)
    per model round        on_model_round        (traced, before the model trains)
                           real_data_weights     (traced -> [capacity] probabilities or None)
                           model_train_args      (host: how the trainer uses the weights)
    rollouts               rollout_due / rollout_horizon / max_horizon / imagined_capacity (host),
                           rollout_starts, rollout, after_rollout (traced)
    per env step, agent    before_updates        (traced, before the G updates)
                           agent_batch -> Batch(q_weight, pi_weight)  (traced, inside the SAC scan)
                           after_updates -> (usage, agent)  (traced, after the G updates)
    per epoch              metrics               (host: the strategy's columns of the metrics row)
    `mbrlax pack`          clear_model_rows      (the state of a run whose model buffer was emptied)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.buffers import Buffer, gather, sample_indices
from mbrlax.config import TrainConfig, rollout_horizon
from mbrlax.models.trainer import weighted_bootstrap
from mbrlax.rollout import branched_rollout
from mbrlax.types import Batch

Usage = Any  # a strategy's state pytree


def model_buffer_rows(cfg: TrainConfig, horizon: int) -> int:
    """retain_epochs x rollouts per epoch x horizon (MBPO's model buffer size)."""
    per_epoch = cfg.rollout.batch_size * max(1, cfg.steps_per_epoch // cfg.model.train_freq)
    return cfg.rollout.retain_epochs * per_epoch * horizon


class ModelUsage:
    """MBPO (Janner et al. 2019, Algorithm 2). Subclass and override the seams you change."""

    uses_model = True
    """Train a dynamics model and generate rollouts (False: model-free SAC)."""
    with_disagreement = False
    """Compute the ensemble disagreement of each rollout step (all members; costs 7/1 forward passes)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # ---- state
    def init(self, key, obs_dim: int, act_dim: int) -> Usage:
        """The strategy's initial state (a pytree; {} holds nothing)."""
        return {}

    def on_real_step(self, usage: Usage, real: Buffer, row: jax.Array, actor) -> Usage:
        """After real transition `row` was added to `real` (traced; also during exploration)."""
        return usage

    # ---- model data
    def on_model_round(self, usage: Usage, real: Buffer, actor, key) -> Usage:
        """Once per model round, before the model trains (traced)."""
        return usage

    def real_data_weights(self, usage: Usage, real: Buffer) -> jax.Array | None:
        """Per-row sampling probabilities of the model's training data, [capacity] (traced), or None: uniform."""
        return None

    def model_train_args(self, weights: np.ndarray | None) -> dict:
        """Keyword arguments of `ModelTrainer.train` from this round's weights (host): by default the
        weights draw each member's bootstrap (the holdout stays uniform)."""
        return {} if weights is None else {"bootstrap": weighted_bootstrap(weights)}

    # ---- rollouts
    def rollout_due(self, loop_step: int) -> bool:
        """Whether to generate rollouts at this loop step (host); MBPO: right after each model training."""
        return loop_step % self.cfg.model.train_freq == 0

    def rollout_horizon(self, epoch: int) -> int:
        """Rollout horizon at this epoch (host): MBPO's linear schedule."""
        return rollout_horizon(self.cfg.rollout.schedule, epoch)

    def max_horizon(self) -> int:
        """The longest horizon the run reaches before total_steps (the schedule is linear, so at its first
        or last epoch): the rollout arrays' depth and the model buffer's (host). Hopper's 30k-step runs
        stay at 1 of the schedule's 15: 15x smaller rollout arrays, model buffer and checkpoints."""
        last_epoch = max(self.cfg.total_steps - self.cfg.init_steps - 1, 0) // self.cfg.steps_per_epoch
        return max(self.rollout_horizon(0), self.rollout_horizon(last_epoch))

    def imagined_capacity(self) -> int:
        """Rows of the model buffer (host): MBPO's retain_epochs of rollouts at the longest horizon."""
        return model_buffer_rows(self.cfg, self.max_horizon())

    def rollout_starts(self, usage: Usage, real: Buffer, key, n: int) -> tuple[jax.Array, Any]:
        """(indices [n] of the start states in `real`, extras passed to after_rollout, e.g. IS weights) (traced)."""
        return sample_indices(real, key, n), None

    def rollout(self, model, actor, start_obs, key, horizon, max_horizon: int, termination_fn):
        """-> (transitions [max_horizon, n, ...], valid [max_horizon, n], disagreement) (traced)."""
        return branched_rollout(model, actor, start_obs, key, horizon, max_horizon, termination_fn,
                                self.with_disagreement)

    def after_rollout(self, usage: Usage, start_idx, extras, transitions, valid, disagreement, actor, key) -> Usage:
        """After the rollouts were added to the model buffer (traced)."""
        return usage

    # ---- agent
    def before_updates(self, usage: Usage, state, key) -> Usage:
        """Once per env step before the G agent updates; `state` is the RunState (traced)."""
        return usage

    def after_updates(self, usage: Usage, state, key) -> tuple[Usage, Any]:
        """Once per env step after the G agent updates (traced): (usage, agent), where the agent may be
        updated further (ReW: updates on real transitions); `state` is the RunState after the updates."""
        return usage, state.agent

    def real_batch_size(self) -> int:
        """Real rows per agent minibatch (MBPO: real_ratio of the batch)."""
        return int(self.cfg.sac.batch_size * self.cfg.rollout.real_ratio)

    def agent_batch(self, usage: Usage, real: Buffer, imagined: Buffer | None, window, key) -> Batch:
        """One agent minibatch (traced, inside the SAC scan): real rows first, then model rows of the
        most recent `window` rows, with the weights of `sample_weights`."""
        real_idx, model_idx = self.agent_rows(real, imagined, window, key)
        batch = minibatch(real, imagined, real_idx, model_idx)
        is_real = jnp.arange(self.cfg.sac.batch_size) < real_idx.shape[0]
        q_weight, pi_weight = self.sample_weights(usage, batch, is_real)
        return Batch(**vars(batch), q_weight=q_weight, pi_weight=pi_weight)

    def agent_rows(self, real: Buffer, imagined: Buffer | None, window, key) -> tuple[jax.Array, jax.Array]:
        """Helper of `agent_batch` (traced): the minibatch's row indices, [n_real] uniform in `real` and
        [batch - n_real] uniform among the `window` newest rows of `imagined` (empty without model rows)."""
        bs, n_real = self.cfg.sac.batch_size, self.real_batch_size()
        k_real, k_model = jax.random.split(key)
        real_idx = sample_indices(real, k_real, n_real)
        if n_real == bs:
            return real_idx, jnp.zeros(0, jnp.int32)
        return real_idx, sample_indices(imagined, k_model, bs - n_real, window)

    def sample_weights(self, usage: Usage, batch, is_real) -> tuple[jax.Array, jax.Array | None]:
        """(Q-loss weights [B], policy-loss weights [B] or None = the Q weights) (traced)."""
        return jnp.ones_like(batch.reward), None

    # ---- logging
    metric_columns: tuple[str, ...] = ()
    """The strategy's own columns of metrics.csv (filled by `metrics`)."""

    def metrics(self, state) -> dict[str, float]:
        """The strategy's metrics at an epoch end, from the RunState `state` (host)."""
        return {}

    # ---- packing (mbrlax.api.pack)
    def clear_model_rows(self, usage: Usage) -> Usage:
        """The state once the model buffer's rows are dropped (its ptr kept): what the strategy holds per model
        row goes back to its initial value. MBPO holds nothing per row."""
        return usage


def minibatch(real: Buffer, imagined: Buffer | None, real_idx: jax.Array, model_idx: jax.Array):
    """The transitions of real rows `real_idx` followed by model rows `model_idx` (traced)."""
    batch = gather(real, real_idx)
    if model_idx.shape[0]:
        batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), batch, gather(imagined, model_idx))
    return batch


class ModelFree(ModelUsage):
    """SAC alone: no model, every agent minibatch from real data."""

    uses_model = False

    def real_batch_size(self) -> int:
        return self.cfg.sac.batch_size


GROUPS = {
    "data": ("on_model_round", "real_data_weights", "model_train_args"),
    "starts": ("rollout_starts",),
    "rollouts": ("rollout_due", "rollout_horizon", "max_horizon", "imagined_capacity", "rollout", "after_rollout",
                 "with_disagreement"),
    "agent": ("before_updates", "after_updates", "real_batch_size", "agent_batch", "sample_weights"),
}


class Compose(ModelUsage):
    """Combine strategies by seam group without new loop code, e.g. PMAC's data weights and starts
    with another method's agent weights: `Compose(cfg, data=pmac, starts=pmac, agent=rew)`.

    Groups (see GROUPS): data (model-training weights), starts (rollout start states), rollouts
    (when, how long, how, and the update after), agent (before_updates, minibatches, Q/policy
    weights). A group not given is MBPO's. The state is a tuple with one slot per distinct part;
    on_real_step runs for every part.
    """

    def __init__(self, cfg: TrainConfig, **groups: ModelUsage):
        super().__init__(cfg)
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown seam group(s) {sorted(unknown)}: must be among {sorted(GROUPS)}")
        mbpo = ModelUsage(cfg)
        self.owner = {g: groups.get(g, mbpo) for g in GROUPS}
        self.parts: list[ModelUsage] = []
        for part in self.owner.values():
            if all(part is not p for p in self.parts):
                self.parts.append(part)
        self.uses_model = all(p.uses_model for p in self.parts)
        self.with_disagreement = self.owner["rollouts"].with_disagreement
        self.metric_columns = tuple(dict.fromkeys(c for p in self.parts for c in p.metric_columns))

    def _slot(self, group: str) -> tuple[ModelUsage, int]:
        part = self.owner[group]
        return part, next(i for i, p in enumerate(self.parts) if p is part)

    def _call(self, group, method, usage, *args):
        """Call `method` of the group's owner on its own state slot; a returned state goes back in the slot."""
        part, i = self._slot(group)
        return part, i, getattr(part, method)(usage[i], *args)

    def _put(self, usage, i, value):
        return tuple(value if j == i else u for j, u in enumerate(usage))

    def init(self, key, obs_dim, act_dim):
        keys = jax.random.split(key, len(self.parts))
        return tuple(p.init(k, obs_dim, act_dim) for p, k in zip(self.parts, keys))

    def on_real_step(self, usage, real, row, actor):
        return tuple(p.on_real_step(u, real, row, actor) for p, u in zip(self.parts, usage))

    def on_model_round(self, usage, real, actor, key):
        _, i, u = self._call("data", "on_model_round", usage, real, actor, key)
        return self._put(usage, i, u)

    def real_data_weights(self, usage, real):
        return self._call("data", "real_data_weights", usage, real)[2]

    def model_train_args(self, weights):
        return self.owner["data"].model_train_args(weights)

    def rollout_due(self, loop_step):
        return self.owner["rollouts"].rollout_due(loop_step)

    def rollout_horizon(self, epoch):
        return self.owner["rollouts"].rollout_horizon(epoch)

    def max_horizon(self):
        return self.owner["rollouts"].max_horizon()

    def imagined_capacity(self):
        return self.owner["rollouts"].imagined_capacity()

    def rollout_starts(self, usage, real, key, n):
        return self._call("starts", "rollout_starts", usage, real, key, n)[2]

    def rollout(self, *args):
        return self.owner["rollouts"].rollout(*args)

    def after_rollout(self, usage, *args):
        _, i, u = self._call("rollouts", "after_rollout", usage, *args)
        return self._put(usage, i, u)

    def before_updates(self, usage, state, key):
        _, i, u = self._call("agent", "before_updates", usage, state, key)
        return self._put(usage, i, u)

    def after_updates(self, usage, state, key):
        _, i, (u, agent) = self._call("agent", "after_updates", usage, state, key)
        return self._put(usage, i, u), agent

    def real_batch_size(self):
        return self.owner["agent"].real_batch_size()

    def agent_batch(self, usage, real, imagined, window, key):
        return self._call("agent", "agent_batch", usage, real, imagined, window, key)[2]

    def sample_weights(self, usage, batch, is_real):
        return self._call("agent", "sample_weights", usage, batch, is_real)[2]

    def clear_model_rows(self, usage):
        return tuple(p.clear_model_rows(u) for p, u in zip(self.parts, usage))

    def metrics(self, state):
        out = {}
        for i, p in enumerate(self.parts):
            out.update(p.metrics(state.replace(usage=state.usage[i])))
        return out
