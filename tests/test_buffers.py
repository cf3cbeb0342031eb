"""Tests for mbrlax.buffers against a NumPy reference ring buffer (random add sequences with
masks and wrap-around), and the coverage of the (windowed) index sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.buffers import buffer_add, buffer_init, gather, keep_newest, sample_indices
from mbrlax.types import Transition

OBS, ACT = 2, 1
CAP = 8
ADD = jax.jit(buffer_add)
SAMPLE = jax.jit(sample_indices, static_argnums=2)


class RingRef:
    """Plain NumPy ring buffer: rows appended one at a time, oldest overwritten."""

    def __init__(self, cap):
        self.cap = cap
        self.data = {
            "obs": np.zeros((cap, OBS), np.float32), "action": np.zeros((cap, ACT), np.float32),
            "reward": np.zeros(cap, np.float32), "next_obs": np.zeros((cap, OBS), np.float32),
            "done": np.zeros(cap, np.float32),
        }
        self.ptr, self.size = 0, 0
        self.order = []  # row ids in insertion order (the reward column holds the id)

    def add(self, batch, mask):
        for i in np.flatnonzero(mask):
            for k in self.data:
                self.data[k][self.ptr] = batch[k][i]
            self.order.append(batch["reward"][i])
            self.ptr = (self.ptr + 1) % self.cap
            self.size = min(self.size + 1, self.cap)

    def recent(self, window=None):
        """Ids of the `window` most recent valid rows (all valid rows if None)."""
        k = self.size if window is None else min(window, self.size)
        return set(self.order[len(self.order) - k:]) if k else set()


def random_batch(rng, n, next_id):
    """Rows with unique ids in the reward column."""
    return {
        "obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, ACT)).astype(np.float32),
        "reward": np.arange(next_id, next_id + n, dtype=np.float32),
        "next_obs": rng.normal(size=(n, OBS)).astype(np.float32),
        "done": (rng.random(n) < 0.3).astype(np.float32),
    }


def to_transition(batch):
    return Transition(**{k: jnp.asarray(v) for k, v in batch.items()})


def assert_matches(buf, ref):
    assert int(buf.ptr) == ref.ptr
    assert int(buf.size) == ref.size
    for k, v in ref.data.items():
        np.testing.assert_array_equal(np.asarray(getattr(buf.data, k)), v, err_msg=k)


def test_buffer_add_matches_reference_ring_buffer():
    """Many random sequences of adds (batch sizes 1..capacity, masks all/none/random, mask=None),
    wrapping around the ring several times. Batch sizes are drawn from a few values to keep the
    number of compiled shapes small."""
    rng = np.random.default_rng(0)
    sizes = [1, 3, CAP]
    n_cases = 0
    for case in range(30):
        buf, ref, next_id = buffer_init(OBS, ACT, CAP), RingRef(CAP), 0
        for _ in range(rng.integers(1, 12)):
            n = int(rng.choice(sizes))
            batch = random_batch(rng, n, next_id)
            next_id += n
            kind = rng.integers(4)
            if kind == 0:
                mask = None
                ref.add(batch, np.ones(n, bool))
                buf = ADD(buf, to_transition(batch))
            else:
                mask = {1: np.ones(n, bool), 2: np.zeros(n, bool), 3: rng.random(n) < 0.5}[int(kind)]
                ref.add(batch, mask)
                buf = ADD(buf, to_transition(batch), jnp.asarray(mask))
            assert_matches(buf, ref)
            n_cases += 1
    assert n_cases > 150
    assert buf.capacity == CAP


def test_buffer_add_compacts_masked_rows_in_order():
    """A hand-written case: rows 1 and 3 of 4 masked in, appended contiguously at ptr."""
    buf = buffer_init(OBS, ACT, 5)
    batch = random_batch(np.random.default_rng(1), 4, 10)
    buf = buffer_add(buf, to_transition(batch), jnp.asarray([False, True, False, True]))
    np.testing.assert_array_equal(np.asarray(buf.data.reward), [11, 13, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(buf.data.obs)[:2], batch["obs"][[1, 3]])
    assert int(buf.ptr) == 2 and int(buf.size) == 2
    buf = buffer_add(buf, to_transition(random_batch(np.random.default_rng(2), 4, 20)))
    np.testing.assert_array_equal(np.asarray(buf.data.reward), [23, 13, 20, 21, 22])  # 20..23 at 2, 3, 4, 0
    assert int(buf.ptr) == 1 and int(buf.size) == 5


def _filled(rng, total, cap=CAP):
    """A buffer and its reference after adding `total` rows (in batches of 3, last one masked)."""
    buf, ref, next_id = buffer_init(OBS, ACT, cap), RingRef(cap), 0
    while next_id < total:
        n = min(3, total - next_id)
        batch = random_batch(rng, 3, next_id)
        mask = np.arange(3) < n
        ref.add(batch, mask)
        buf = ADD(buf, to_transition(batch), jnp.asarray(mask))
        next_id += n
    assert_matches(buf, ref)
    return buf, ref


@pytest.mark.parametrize("total", [5, CAP, 19])  # partly filled, exactly full, wrapped
def test_sample_indices_window_and_coverage(total):
    rng = np.random.default_rng(total)
    buf, ref = _filled(rng, total)
    n_draws = 2000
    for window in [None, 1, 3, 6, 100]:
        idx = np.asarray(SAMPLE(buf, jax.random.key(window or 0), n_draws, window))
        assert idx.min() >= 0 and idx.max() < CAP
        ids = np.asarray(gather(buf, jnp.asarray(idx)).reward)
        expected = ref.recent(window)
        # Only the `window` most recent valid rows, and every one of them is hit.
        assert set(ids.tolist()) == expected, (window, set(ids.tolist()), expected)
        # Roughly uniform among them.
        counts = np.array([np.sum(ids == i) for i in sorted(expected)])
        p = 1.0 / len(expected)
        assert np.all(np.abs(counts - n_draws * p) < 5 * np.sqrt(n_draws * p * (1 - p)) + 1)


def test_sample_indices_traced_window():
    """The window can be a traced value (it grows with the rollout horizon) without re-compiling."""
    buf, ref = _filled(np.random.default_rng(3), 19)
    traces = []

    @jax.jit
    def draw(buf, key, window):
        traces.append(1)
        return gather(buf, sample_indices(buf, key, 1000, window)).reward

    for w in [2, 5, 8]:
        ids = np.asarray(draw(buf, jax.random.key(w), jnp.int32(w)))
        assert set(ids.tolist()) == ref.recent(w)
    assert len(traces) == 1


def test_keep_newest_moves_the_newest_rows_to_a_smaller_or_larger_ring():
    buf = buffer_add(buffer_init(OBS, ACT, 5), to_transition(random_batch(np.random.default_rng(0), 8, 0)))
    assert int(buf.ptr) == 3  # a wrapped ring: rows 5, 6, 7, 3, 4
    small = keep_newest(buf, 3)
    np.testing.assert_array_equal(small.data.reward, [5.0, 6.0, 7.0])
    assert (int(small.ptr), int(small.size)) == (0, 3)
    large = keep_newest(buf, 7)
    np.testing.assert_array_equal(large.data.reward, [3.0, 4.0, 5.0, 6.0, 7.0, 0.0, 0.0])
    assert (int(large.ptr), int(large.size)) == (5, 5)
    for window in (1, 3):  # the same rows for the samplers, which index back from ptr
        key = jax.random.key(0)
        np.testing.assert_array_equal(gather(small, sample_indices(small, key, 16, window)).reward,
                                      gather(buf, sample_indices(buf, key, 16, window)).reward)
