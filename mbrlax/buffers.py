"""Fixed-capacity ring buffers of transitions on the device.

Allocated once at their maximum size; adding is a scatter into the ring (jit
with donation makes it in place), so growing rollout horizons never
re-allocate or re-compile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from mbrlax.types import Transition


@struct.dataclass
class Buffer:
    data: Transition  # leaves [capacity, ...]
    ptr: jax.Array  # int32: next write position
    size: jax.Array  # int32: number of valid rows

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]


def buffer_init(obs_dim: int, act_dim: int, capacity: int) -> Buffer:
    z = lambda *shape: jnp.zeros((capacity, *shape), jnp.float32)
    data = Transition(obs=z(obs_dim), action=z(act_dim), reward=z(), next_obs=z(obs_dim), done=z())
    return Buffer(data=data, ptr=jnp.int32(0), size=jnp.int32(0))


def buffer_add(buf: Buffer, batch: Transition, mask: jax.Array | None = None) -> Buffer:
    """Append the rows of `batch` (leaves [n, ...]) where `mask` is True, compacted, in order."""
    n = batch.reward.shape[0]
    mask = jnp.ones(n, bool) if mask is None else mask
    cap = buf.capacity
    dest, count = ring_slots(buf.ptr, mask, cap)
    data = jax.tree.map(lambda d, x: d.at[dest].set(x, mode="drop"), buf.data, batch)
    return Buffer(data=data, ptr=(buf.ptr + count) % cap, size=jnp.minimum(buf.size + count, cap))


def ring_slots(ptr: jax.Array, mask: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
    """Where `buffer_add` writes the rows of `mask`: (destination row per row, `capacity` = dropped; rows written).
    Per-row columns kept beside a buffer (a strategy's features) stay aligned by writing to the same rows."""
    offset = jnp.cumsum(mask) - 1
    dest = jnp.where(mask, (ptr + offset) % capacity, capacity)  # capacity = out of bounds: dropped
    return dest, jnp.sum(mask, dtype=jnp.int32)


def sample_indices(buf: Buffer, key, n: int, window: jax.Array | int | None = None) -> jax.Array:
    """n uniform indices among the `window` most recent rows (all valid rows if None)."""
    span = buf.size if window is None else jnp.minimum(buf.size, window)
    back = jax.random.randint(key, (n,), 0, jnp.maximum(span, 1))
    return (buf.ptr - 1 - back) % buf.capacity


def gather(buf: Buffer, idx: jax.Array) -> Transition:
    return jax.tree.map(lambda d: d[idx], buf.data)


def keep_newest(buf: Buffer, capacity: int) -> Buffer:
    """The newest `capacity` rows of `buf`, oldest first, in a buffer of that capacity (what a buffer of that
    capacity would hold: the samplers only see rows relative to `ptr`)."""
    n = jnp.minimum(buf.size, capacity)
    i = jnp.arange(capacity)
    rows = gather(buf, (buf.ptr - n + i) % buf.capacity)
    data = jax.tree.map(lambda x: jnp.where((i < n).reshape(-1, *[1] * (x.ndim - 1)), x, 0.0), rows)
    return Buffer(data=data, ptr=(n % capacity).astype(jnp.int32), size=n.astype(jnp.int32))
