"""Many seeds in one process (`mbrlax train --seeds 0,1,2,3`): how per-seed values travel.

With one seed every value is what a single run has always used, and every jitted function is
the single-seed one, unchanged. With N > 1 seeds every per-seed value (the RunState, a
transition, a model's holdout scores) carries a leading seed axis of size N, and the jitted
functions are the same functions vmapped over it (`Seeds.vmap`). Host code handles both
cases alike: it builds per-seed values as lists and `combine`s them, and `split`s results
back into per-seed values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mbrlax.config import ConfigError


def parse_seeds(value: str | int | list | tuple) -> tuple[int, ...]:
    """`0-4` -> 0..4, `0,2,5` -> (0, 2, 5) (ranges and numbers may mix: `0-2,7`); an int or a list of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    seeds: list[int] = []
    for part in parts:
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise ConfigError(f"invalid --seeds {value!r}: expected seeds >= 0 as a range A-B (A <= B) or a "
                              "comma-separated list, e.g. --seeds 0-4 or --seeds 0,2,5")
        seeds += range(int(m[1]), int(m[2] or m[1]) + 1)
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"invalid --seeds {value!r}: a seed appears twice")
    return tuple(seeds)


@dataclass(frozen=True)
class Seeds:
    """The seeds of one process's runs, in order."""

    values: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    def vmap(self, fn: Callable, in_axes) -> Callable:
        """`fn` itself for one seed; else vmapped over the leading seed axis (None in in_axes: shared)."""
        return fn if self.n == 1 else jax.vmap(fn, in_axes=in_axes)

    def combine(self, values: list) -> Any:
        """Per-seed pytrees -> what the functions take: the one value, or the values stacked on axis 0."""
        if len(values) != self.n:
            raise ValueError(f"{len(values)} values for {self.n} seeds")
        if self.n == 1:
            return values[0]
        stack = lambda *xs: np.stack(xs) if isinstance(xs[0], (np.ndarray, np.generic, int, float, bool)) \
            else jnp.stack(xs)
        return jax.tree.map(stack, *values)

    def split(self, value: Any) -> list:
        """Inverse of `combine`: the per-seed pytrees of a (stacked) value."""
        if self.n == 1:
            return [value]
        return [jax.tree.map(lambda x: x[i], value) for i in range(self.n)]

    def ids(self) -> Any:
        """The seeds as the functions' per-seed argument (an int32 scalar, or [N])."""
        return self.combine([np.int32(s) for s in self.values])
