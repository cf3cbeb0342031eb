"""MEMR's prioritized start-state draw (Eq. 3) at real-buffer sizes up to 400k rows: a cumulative-sum
draw over the priorities vs a sum tree, per env step (one new row's priority, 400 draws, and 400
refreshed priorities), jitted on the CPU. Prints one JSON line per buffer size and, with --csv, writes
them as a table (the README's: results/memr_priority_sampling.csv).

    taskset -c 0 python benchmarks/priority_sampling.py [--sizes 10000 100000 400000] [--draws 400]
        [--repeats 200] [--csv results/memr_priority_sampling.csv]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from mbrlax.run.summary import write_csv
from mbrlax.usage.sumtree import sumtree_build, sumtree_probs, sumtree_sample, sumtree_set

ALPHA = 0.6


def start_probs(prio, size, alpha: float):
    """P(i) = p_i^a / sum_k p_k^a over the first `size` rows, 0 beyond (Eq. 3)."""
    pa = jnp.where(jnp.arange(prio.shape[0]) < size, prio**alpha, 0.0)
    return pa / jnp.sum(pa)


def cumsum_step(prio, row, key, draws):
    """What MEMR does per env step with a flat priority array: insert, draw (Eq. 3), refresh."""
    k_new, k_draw, k_fresh = jax.random.split(key, 3)
    prio = prio.at[row].set(jax.random.uniform(k_new, (), minval=0.1, maxval=5.0))
    probs = start_probs(prio, row + 1, ALPHA)
    idx = jax.random.choice(k_draw, prio.shape[0], (draws,), p=probs)
    weights = probs[idx]
    return prio.at[idx].set(jax.random.uniform(k_fresh, (draws,), minval=0.1, maxval=5.0)), weights


def sumtree_step(tree, row, key, draws):
    """The same with a sum tree of p^alpha."""
    k_new, k_draw, k_fresh = jax.random.split(key, 3)
    tree = sumtree_set(tree, row[None], jax.random.uniform(k_new, (1,), minval=0.1, maxval=5.0) ** ALPHA)
    idx = sumtree_sample(tree, k_draw, draws)
    weights = sumtree_probs(tree, idx)
    return sumtree_set(tree, idx, jax.random.uniform(k_fresh, (draws,), minval=0.1, maxval=5.0) ** ALPHA), weights


def time_per_call(fn, state, size, draws, repeats):
    step = jax.jit(fn, static_argnums=3, donate_argnums=0)
    state, w = step(state, jnp.int32(size - 1), jax.random.key(0), draws)
    w.block_until_ready()
    best = float("inf")
    for r in range(5):  # best of 5 rounds of `repeats` calls
        t = time.perf_counter()
        for i in range(repeats):
            state, w = step(state, jnp.int32(size - 1), jax.random.key(i), draws)
        w.block_until_ready()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 400_000])
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        prio = jax.random.uniform(jax.random.key(1), (n,), minval=0.1, maxval=5.0)
        tree = sumtree_build(prio**ALPHA)
        flat = time_per_call(cumsum_step, prio, n, args.draws, args.repeats)  # (donates prio)
        tree = time_per_call(sumtree_step, tree, n, args.draws, args.repeats)
        rows.append({"rows": n, "draws": args.draws, "ms_cumsum": round(flat, 4), "ms_sumtree": round(tree, 4),
                     "device": str(jax.devices()[0])})
        print(json.dumps(rows[-1]), flush=True)
    if args.csv:
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
