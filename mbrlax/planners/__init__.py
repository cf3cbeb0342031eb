"""Sampling-based planners over discriminator-corrected value estimates (DAM, shared/papers/dam.txt).

    space = ActionSpace.from_gym(env.action_space)
    value = make_value_estimator(step_fn, reward_fn, space, horizon=5, num_particles=20,
                                 logit_fn=logit_fn)          # logit_fn=None: uncorrected baseline
    plan = make_planner("rs", value, space, horizon=5, num_sequences=500)   # jitted
    action, info = plan(params, obs, key)   # params: pytree passed to step_fn / logit_fn

See `mbrlax.planners.value` for the step_fn / reward_fn / logit_fn signatures.
"""

from __future__ import annotations

import jax

from mbrlax.planners.cem import cem
from mbrlax.planners.shooting import random_shooting
from mbrlax.planners.value import ActionSpace, make_logit_probe, make_value_estimator

PLANNERS = {"rs": random_shooting, "cem": cem}


def make_planner(name: str, value_fn, action_space: ActionSpace, horizon: int, num_sequences: int,
                 jit: bool = True, **kwargs):
    """`plan(params, obs, key) -> (first_action, info)` for name "rs" (Algorithm 3) or "cem".

    kwargs go to the planner (`cem`: num_iterations, num_elites, alpha, init_std).
    Jitted unless jit=False; new params / obs of the same shapes reuse the compilation.
    """
    if name not in PLANNERS:
        raise ValueError(f"invalid planner={name!r}: must be one of {sorted(PLANNERS)}")
    plan = PLANNERS[name](value_fn, action_space, num_sequences, horizon, **kwargs)
    return jax.jit(plan) if jit else plan


__all__ = ["ActionSpace", "PLANNERS", "cem", "make_logit_probe", "make_planner", "make_value_estimator",
           "random_shooting"]
