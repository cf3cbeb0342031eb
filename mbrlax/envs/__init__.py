"""Environment presets: Gymnasium MuJoCo v5 envs paired with pure-JAX termination functions::

    from mbrlax import envs
    env = envs.make("Hopper-v5", seed=0)
    done = envs.termination_fn("Hopper-v5")(obs, action, next_obs)  # bool [B]

The DAM paper's stochastic envs ``IcyRoad-v0`` and ``Intersection-v0``
(:mod:`mbrlax.envs.dam_envs`, registered with Gymnasium on import) are presets too;
they also have a known pure-JAX reward, ``envs.reward_fn(env_id)(obs, action,
next_obs) -> [B]``, for planning.

Any other registered Gymnasium id also works with :func:`make`, but no termination
rule is known for it: a warning is emitted and model rollouts treat it as never
terminating unless a termination function is supplied explicitly.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium

from mbrlax.envs import dam_envs, termination

__all__ = [
    "EnvSpec",
    "RewardFn",
    "TerminationFn",
    "UnknownEnvError",
    "get_spec",
    "list_envs",
    "make",
    "reward_fn",
    "termination",
    "termination_fn",
]

TerminationFn = Callable[[Any, Any, Any], Any]
RewardFn = Callable[[Any, Any, Any], Any]


class UnknownEnvError(ValueError):
    """Raised for an id that is neither a preset nor a registered Gymnasium id."""


@dataclass(frozen=True)
class EnvSpec:
    """A preset: how to build it with Gymnasium, when it terminates and (if known) its reward."""

    id: str
    gym_id: str
    gym_kwargs: dict = field(default_factory=dict, hash=False)
    termination: TerminationFn | None = None
    obs_dim: int | None = None  # informational: observation size of the preset
    reward: RewardFn | None = None  # pure-jnp fn(obs, action, next_obs) -> [B], if known
    episode_steps: int | None = None  # fixed episode length, where the env truncates itself


_ANT_TRUNCATED = {"include_cfrc_ext_in_observation": False}
_HUMANOID_TRUNCATED = {
    "include_cinert_in_observation": False,
    "include_cvel_in_observation": False,
    "include_qfrc_actuator_in_observation": False,
    "include_cfrc_ext_in_observation": False,
}

dam_envs.register_envs()

_PRESETS: dict[str, EnvSpec] = {
    s.id: s
    for s in (
        EnvSpec("InvertedPendulum-v5", "InvertedPendulum-v5", {}, termination.inverted_pendulum, 4),
        EnvSpec(
            "InvertedDoublePendulum-v5",
            "InvertedDoublePendulum-v5",
            {},
            termination.inverted_double_pendulum,
            9,
        ),
        EnvSpec("Hopper-v5", "Hopper-v5", {}, termination.hopper, 11),
        EnvSpec("Walker2d-v5", "Walker2d-v5", {}, termination.walker2d, 17),
        EnvSpec("HalfCheetah-v5", "HalfCheetah-v5", {}, termination.half_cheetah, 17),
        EnvSpec("Ant-v5", "Ant-v5", {}, termination.ant, 105),
        EnvSpec("Humanoid-v5", "Humanoid-v5", {}, termination.humanoid, 348),
        EnvSpec("AntTruncatedObs-v5", "Ant-v5", _ANT_TRUNCATED, termination.ant, 27),
        EnvSpec(
            "HumanoidTruncatedObs-v5", "Humanoid-v5", _HUMANOID_TRUNCATED, termination.humanoid, 45
        ),
        EnvSpec(
            dam_envs.ICYROAD_ID,
            dam_envs.ICYROAD_ID,
            {},
            termination.never,
            4,
            reward=dam_envs.icyroad_reward,
            episode_steps=5,
        ),
        EnvSpec(
            dam_envs.INTERSECTION_ID,
            dam_envs.INTERSECTION_ID,
            {},
            termination.never,
            10,
            reward=dam_envs.intersection_reward,
            episode_steps=25,
        ),
    )
}


def _register_truncated_presets() -> None:
    """Register presets whose id differs from their Gymnasium id, so gymnasium.make(id) works."""
    for spec in _PRESETS.values():
        if spec.id == spec.gym_id or spec.id in gymnasium.registry:
            continue
        base = gymnasium.spec(spec.gym_id)
        gymnasium.register(
            id=spec.id,
            entry_point=base.entry_point,
            max_episode_steps=base.max_episode_steps,
            reward_threshold=base.reward_threshold,
            kwargs={**base.kwargs, **spec.gym_kwargs},
        )


_register_truncated_presets()


def list_envs() -> list[str]:
    """Sorted ids of all presets."""
    return sorted(_PRESETS)


def get_spec(env_id: str) -> EnvSpec:
    """The preset spec for ``env_id``; a bare spec (no termination) for other Gymnasium ids."""
    if env_id in _PRESETS:
        return _PRESETS[env_id]
    if env_id in gymnasium.registry:
        return EnvSpec(env_id, env_id)
    close = difflib.get_close_matches(env_id, [*_PRESETS, *gymnasium.registry], n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEnvError(
        f"Unknown environment id {env_id!r}: it is neither an mbrlax preset nor a registered "
        f"Gymnasium id. Presets: {', '.join(list_envs())}.{hint}"
    )


def _warn_no_termination(env_id: str) -> None:
    warnings.warn(
        f"No termination function is known for {env_id!r}: model rollouts will treat it as "
        "never terminating unless you pass a termination function explicitly.",
        stacklevel=3,
    )


def make(env_id: str, seed: int | None = None, **gym_kwargs: Any) -> gymnasium.Env:
    """Build ``env_id`` with ``gymnasium.make`` (preset kwargs, overridden by ``gym_kwargs``).

    If ``seed`` is given, the env is reset with it and its action and observation
    spaces are seeded with it.
    """
    spec = get_spec(env_id)
    if spec.termination is None:
        _warn_no_termination(env_id)
    env = gymnasium.make(spec.gym_id, **{**spec.gym_kwargs, **gym_kwargs})
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env


def termination_fn(env_id: str) -> TerminationFn:
    """Pure-jnp ``fn(obs, action, next_obs) -> bool [B]`` for ``env_id``.

    Non-preset Gymnasium ids warn and get :func:`termination.never`.
    """
    spec = get_spec(env_id)
    if spec.termination is None:
        _warn_no_termination(env_id)
        return termination.never
    return spec.termination


def reward_fn(env_id: str) -> RewardFn:
    """Pure-jnp ``fn(obs, action, next_obs) -> [B]``: the known reward of ``env_id``.

    Known only for presets with a reward (IcyRoad-v0, Intersection-v0, with their default
    parameters); raises ``ValueError`` for other ids.
    """
    spec = get_spec(env_id)
    if spec.reward is None:
        known = ", ".join(sorted(s.id for s in _PRESETS.values() if s.reward is not None))
        raise ValueError(
            f"No known reward function for {env_id!r}: a reward function is known only for "
            f"{known}. Learn the reward with the model instead."
        )
    return spec.reward
