"""One interface over the dynamics model kinds, so planners and the DAM loop can switch
between the unimodal Gaussian ensemble (ensemble.py) and the mixture density network
(mdn.py). Both use inputs concat(obs, action_features) and targets
concat([reward], next_obs - obs), the same ModelState and the same ModelTrainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mbrlax.config import ModelConfig
from mbrlax.models import ensemble, mdn
from mbrlax.models.ensemble import ModelState
from mbrlax.models.trainer import BootstrapSampler, ModelTrainer, no_penalty, uniform_bootstrap

KINDS = ("gaussian", "mdn")


@dataclass(frozen=True)
class Dynamics:
    kind: str
    init: Callable  # (key, obs_dim, act_dim, cfg) -> ModelState
    loss_fn: Callable  # ModelTrainer members' loss: (params, norm_mean, norm_std, x, y, w, weight_decays) -> scalar
    penalty_fn: Callable  # ModelTrainer loss terms of the shared leaves: params -> scalar
    score_fn: Callable  # ModelTrainer holdout score: (params, norm_mean, norm_std, x, y, mask) -> [E]
    sample_step: Callable  # (state, obs, action_features, key) -> (reward [B], next_obs [B, obs])
    prepare: Callable  # (state, x, y, n, rng) -> state, run before every training (MDN: target stats, seeding)


def _gaussian_step(state, obs, action, key):
    reward, next_obs, _ = ensemble.sample_step(state, obs, action, key)
    return reward, next_obs


def _no_prepare(state, x, y, n, rng):
    return state


def make_dynamics(kind: str, num_components: int = 3) -> Dynamics:
    """"gaussian": the MBPO ensemble (holdout MSE); "mdn": K-component mixtures (holdout NLL)."""
    if kind == "gaussian":
        return Dynamics(kind, ensemble.model_init, ensemble.member_nll_loss, ensemble.logvar_bounds_penalty,
                        ensemble.member_mse, _gaussian_step, _no_prepare)
    if kind == "mdn":
        if num_components < 1:
            raise ValueError(f"invalid num_components={num_components}: must be >= 1")

        def init(key, obs_dim, act_dim, cfg):
            return mdn.mdn_init(key, obs_dim, act_dim, cfg, num_components)

        return Dynamics(kind, init, mdn.mdn_nll_loss, no_penalty, mdn.mdn_member_nll, mdn.mdn_sample_step, mdn.mdn_prepare)
    raise ValueError(f"invalid model kind {kind!r}: must be one of {', '.join(KINDS)}")


class DynamicsTrainer(ModelTrainer):
    """ModelTrainer that runs `dynamics.prepare` before each training (the MDN's target
    standardizer and, for a fresh model, its data-seeded components)."""

    def __init__(self, cfg: ModelConfig, dynamics: Dynamics):
        super().__init__(cfg, loss_fn=dynamics.loss_fn, score_fn=dynamics.score_fn, penalty_fn=dynamics.penalty_fn)
        self.dynamics = dynamics

    def train(self, state: ModelState, x, y, n: int, rng: np.random.Generator, weights=None,
              bootstrap: BootstrapSampler = uniform_bootstrap) -> tuple[ModelState, dict]:
        state = self.dynamics.prepare(state, x, y, n, rng)
        return super().train(state, x, y, n, rng, weights=weights, bootstrap=bootstrap)


def make_trainer(dynamics: Dynamics, cfg: ModelConfig) -> ModelTrainer:
    """A ModelTrainer for this model kind (see DynamicsTrainer)."""
    return DynamicsTrainer(cfg, dynamics)
