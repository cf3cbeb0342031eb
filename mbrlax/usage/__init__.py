"""Model-usage strategies and the algorithm registry (`--algo NAME` -> strategy).

`make_usage(cfg)` builds the strategy of `cfg.algo`; `register(name, factory)` adds one.
DAM is not here: it plans with the model (algos/mpc.py) instead of training an agent on it.
"""

from __future__ import annotations

from typing import Callable

from mbrlax.config import TrainConfig
from mbrlax.usage.base import Compose, ModelFree, ModelUsage

REGISTRY: dict[str, Callable[[TrainConfig], ModelUsage]] = {}


def register(name: str, factory: Callable[[TrainConfig], ModelUsage]) -> None:
    """Map `--algo name` to `factory(cfg) -> ModelUsage`."""
    REGISTRY[name] = factory


def make_usage(cfg: TrainConfig) -> ModelUsage:
    if cfg.algo not in REGISTRY:
        raise ValueError(f"algo {cfg.algo!r} has no model-usage strategy; registered: {', '.join(REGISTRY)}")
    return REGISTRY[cfg.algo](cfg)


def _pmac(cfg: TrainConfig) -> ModelUsage:
    from mbrlax.usage.pmac import PMAC

    return PMAC(cfg)


def _memr(cfg: TrainConfig) -> ModelUsage:
    from mbrlax.usage.memr import MEMR

    return MEMR(cfg)


def _rew(cfg: TrainConfig) -> ModelUsage:
    from mbrlax.usage.rew import ReW

    return ReW(cfg)


def _pmac_rew(cfg: TrainConfig) -> ModelUsage:
    """PMAC's model-data weights and rollout starts, ReW's set rollouts, meta step and transition weights."""
    from mbrlax.usage.pmac import PMAC
    from mbrlax.usage.rew import ReW

    pmac, rew = PMAC(cfg), ReW(cfg)
    return Compose(cfg, data=pmac, starts=pmac, rollouts=rew, agent=rew)


register("mbpo", ModelUsage)
register("sac", ModelFree)
register("pmac", _pmac)
register("memr", _memr)
register("rew", _rew)
register("pmac+rew", _pmac_rew)

__all__ = ["REGISTRY", "Compose", "ModelFree", "ModelUsage", "make_usage", "register"]
