"""Pure-``jnp`` termination functions matching Gymnasium MuJoCo v5 ``terminated``.

Every function has the signature ``fn(obs, action, next_obs) -> bool[...]``: it
takes batched arrays ``obs [B, obs_dim]``, ``action [B, act_dim]`` and
``next_obs [B, obs_dim]`` and returns ``bool [B]`` (unbatched inputs give a
scalar, so the functions also work per-sample under ``jax.vmap``). Only
``next_obs`` is read. The rules assume the default v5 observation layout
(``exclude_current_positions_from_observation=True``) and default health ranges.

Comparisons mirror the env's own (strict or closed) bounds; a NaN compares
False, so a NaN state fails every health check just as it does in the env.

Two env checks cannot be reproduced exactly from observations (both need extreme
states; neither occurs in the tests' perturbed trajectories):

* Hopper also requires its raw joint velocities to be within (-100, 100), but its
  observation clips velocities to [-10, 10]; only the positions are checked here.
* InvertedDoublePendulum reads the tip height from ``data.site_xpos``, which
  MuJoCo's RK4 step leaves at the last integration stage rather than the final
  state; the two differ by ~1e-5 typically (more under impacts or very fast
  spins), so a transition within that distance of the limit may disagree.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "ant",
    "half_cheetah",
    "hopper",
    "humanoid",
    "inverted_double_pendulum",
    "inverted_pendulum",
    "never",
    "walker2d",
]

# qpos[2:] (13) + qvel (14): the part of Ant's observation that is its state vector.
_ANT_STATE_DIM = 27


def _between(x, low, high, closed=False):
    """``low < x < high`` (``low <= x <= high`` if closed); False for NaN."""
    if closed:
        return (low <= x) & (x <= high)
    return (low < x) & (x < high)


def _all_finite(x):
    """True where every entry along the last axis is finite."""
    return jnp.all(jnp.isfinite(x), axis=-1)


def never(obs, action, next_obs):
    """Never terminates: always False."""
    return jnp.zeros(jnp.shape(next_obs)[:-1], dtype=bool)


half_cheetah = never


def hopper(obs, action, next_obs):
    """Terminated unless z=next_obs[0] > 0.7, |angle=next_obs[1]| < 0.2 and |next_obs[1:]| < 100."""
    healthy = (
        _between(next_obs[..., 0], 0.7, jnp.inf)
        & _between(next_obs[..., 1], -0.2, 0.2)
        & jnp.all(_between(next_obs[..., 1:], -100.0, 100.0), axis=-1)
    )
    return ~healthy


def walker2d(obs, action, next_obs):
    """Terminated unless 0.8 < z=next_obs[0] < 2.0 and -1 < angle=next_obs[1] < 1."""
    healthy = _between(next_obs[..., 0], 0.8, 2.0) & _between(next_obs[..., 1], -1.0, 1.0)
    return ~healthy


def ant(obs, action, next_obs):
    """Terminated unless next_obs[:27] (qpos[2:], qvel) is finite and 0.2 <= next_obs[0] <= 1."""
    healthy = _all_finite(next_obs[..., :_ANT_STATE_DIM]) & _between(
        next_obs[..., 0], 0.2, 1.0, closed=True
    )
    return ~healthy


def humanoid(obs, action, next_obs):
    """Terminated unless 1.0 < z=next_obs[0] < 2.0."""
    return ~_between(next_obs[..., 0], 1.0, 2.0)


def inverted_pendulum(obs, action, next_obs):
    """Terminated unless next_obs is finite and |pole angle next_obs[1]| <= 0.2."""
    healthy = _all_finite(next_obs) & (jnp.abs(next_obs[..., 1]) <= 0.2)
    return ~healthy


def inverted_double_pendulum(obs, action, next_obs):
    """Terminated when the tip height 0.6*(cos t1 + cos(t1+t2)) <= 1 (obs[1:5]: sin t1,t2, cos t1,t2)."""
    s1, s2, c1, c2 = (next_obs[..., i] for i in range(1, 5))
    # Cart and rail sit at z=0; each pole is 0.6 long; cos(t1+t2) = c1*c2 - s1*s2.
    tip_height = 0.6 * (c1 + c1 * c2 - s1 * s2)
    return tip_height <= 1.0
