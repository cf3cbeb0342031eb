"""Pytrees shared across components."""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class Transition:
    """One transition (or a batch / buffer of them along the leading axes)."""

    obs: jax.Array
    action: jax.Array  # in [-1, 1]
    reward: jax.Array
    next_obs: jax.Array
    done: jax.Array  # float 1.0 = terminated (not truncated)


@struct.dataclass
class Batch(Transition):
    """A training minibatch: transitions plus per-sample loss weights.

    `q_weight` weights the soft Bellman (Q) loss, `pi_weight` the policy loss
    (None: the same as `q_weight`), e.g. MEMR's importance weights on Q only.
    """

    q_weight: jax.Array
    pi_weight: jax.Array | None = None
