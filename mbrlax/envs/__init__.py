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

Your own environments: ``register(env_id, make_fn, termination_fn=None,
reward_fn=None)``, after which ``env_id`` works like a preset; or an id of the form
``"package.module:function"`` (the command line's ``--env``), imported on first use.
:func:`resolve` applies a run's ``--termination`` / ``--reward`` import strings, and
:func:`mbrlax.envs.checks.check_functions` checks the functions before training.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium

from mbrlax.config import ConfigError
from mbrlax.envs import dam_envs, mbbl, termination

__all__ = [
    "EnvSpec",
    "RewardFn",
    "TerminationFn",
    "UnknownEnvError",
    "episode_steps",
    "get_spec",
    "import_function",
    "list_envs",
    "make",
    "register",
    "resolve",
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
    make_fn: Callable[..., gymnasium.Env] | None = None  # your own env's constructor (instead of gym_id)
    custom: bool = False  # registered by `register` (its functions are checked before training)


_ANT_TRUNCATED = {"include_cfrc_ext_in_observation": False}
_HUMANOID_TRUNCATED = {
    "include_cinert_in_observation": False,
    "include_cvel_in_observation": False,
    "include_qfrc_actuator_in_observation": False,
    "include_cfrc_ext_in_observation": False,
}

dam_envs.register_envs()
mbbl.register_envs()  # ReW-PE-SAC's MBBL envs (mbrlax/envs/mbbl.py)

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
        *(EnvSpec(**fields) for fields in mbbl.PRESETS),
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


_REGISTERED: dict[str, EnvSpec] = {}  # your own envs, by id (`register`)


def register(env_id: str, make_fn: Callable[..., gymnasium.Env], termination_fn: TerminationFn | None = None,
             reward_fn: RewardFn | None = None) -> EnvSpec:
    """Make ``env_id`` usable everywhere (train, resume, eval) with ``make_fn(**kwargs) -> gymnasium.Env``.

    ``termination_fn(obs, action, next_obs) -> bool [N]`` and ``reward_fn(obs, action, next_obs) -> float [N]``
    are pure ``jax.numpy`` functions of batched arrays ``obs [N, obs_dim]``, ``action [N, act_dim]``,
    ``next_obs [N, obs_dim]``; ``action`` is the agent's action in [-1, 1] (before scaling to the env's
    bounds) for mbpo/sac/pmac/memr, the env's own action for dam. Without a termination function model
    rollouts never terminate; with a reward function they use it instead of the model's predicted reward.
    Registering an id again replaces it; preset ids cannot be replaced.
    """
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"invalid env id {env_id!r}: must be a non-empty string such as 'MyEnv-v0'")
    if env_id in _PRESETS:
        raise ConfigError(f"invalid env id {env_id!r}: it is an mbrlax preset; register your env under another id")
    for name, fn in (("make_fn", make_fn), ("termination_fn", termination_fn), ("reward_fn", reward_fn)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"invalid {name}={fn!r} for env {env_id!r}: must be a function")
    if make_fn is None:
        raise ConfigError(f"invalid make_fn=None for env {env_id!r}: must be a function returning a gymnasium.Env")
    spec = EnvSpec(env_id, env_id, termination=termination_fn, reward=reward_fn, make_fn=make_fn, custom=True)
    _REGISTERED[env_id] = spec
    return spec


def registered_spec(env_id: str) -> EnvSpec | None:
    """The spec of an env registered in this process with `register`, else None."""
    return _REGISTERED.get(env_id)


def _importable_from_cwd() -> None:
    """User modules given on the command line import from the current directory, as with `python -m`."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())


def import_function(path: str, what: str = "function") -> Callable:
    """``"package.module:function"`` -> the function; a ConfigError names what is wrong (``what``: the flag)."""
    module_name, _, attr = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not module_name or not attr:
        raise ConfigError(f"invalid {what}={path!r}: expected 'module:function', e.g. 'my_pkg.my_envs:make_env'")
    _importable_from_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- any failure of the user's module is reported the same way
        raise ConfigError(
            f"invalid {what}={path!r}: importing module {module_name!r} failed ({type(e).__name__}: {e}); it must "
            f"be importable from the current directory ({os.getcwd()}), an installed package or PYTHONPATH"
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"invalid {what}={path!r}: module {module_name!r} has no attribute {attr!r}.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"invalid {what}={path!r}: {attr!r} is a {type(obj).__name__}, not a function")
    return obj


def _import_env(env_id: str) -> EnvSpec:
    """A ``"module:function"`` id: register the imported constructor (or a Gymnasium id the module registers)."""
    name = env_id.partition(":")[2]
    try:
        return register(env_id, import_function(env_id, "env"))
    except ConfigError:
        if name in gymnasium.registry:  # Gymnasium's own "module:EnvId" form, e.g. after importing a plugin
            return EnvSpec(env_id, name)
        raise


def get_spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id``: a preset, your registered env (importing ``"module:function"`` ids), or a
    bare spec (no termination) for other Gymnasium ids."""
    if env_id in _REGISTERED:
        return _REGISTERED[env_id]
    if env_id in _PRESETS:
        return _PRESETS[env_id]
    if env_id in gymnasium.registry:
        return EnvSpec(env_id, env_id)
    if ":" in env_id:
        return _import_env(env_id)
    known = [*_PRESETS, *_REGISTERED, *gymnasium.registry]
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEnvError(
        f"Unknown environment id {env_id!r}: it is neither an mbrlax preset, nor registered with "
        f"mbrlax.envs.register, nor a registered Gymnasium id; your own env can also be given as "
        f"'module:function'. Presets: {', '.join(list_envs())}.{hint}"
    )


def resolve(env_id: str, termination: str | None = None, reward: str | None = None) -> EnvSpec:
    """The spec of a run's env with its ``--termination`` / ``--reward`` import strings applied
    (registered under ``env_id``, so every later lookup of the id sees them). A ``"module:function"`` id
    has exactly the functions given here."""
    imported = ":" in env_id and env_id not in _PRESETS and env_id not in gymnasium.registry
    spec = _import_env(env_id) if imported else get_spec(env_id)
    if termination is None and reward is None:
        return spec
    if env_id in _PRESETS:
        raise ConfigError(
            f"invalid termination/reward for env={env_id!r}: it is an mbrlax preset with its own functions; "
            "--termination and --reward are for your own envs (--env module:function or a Gymnasium id)"
        )
    make_fn = spec.make_fn or functools.partial(gymnasium.make, spec.gym_id, **spec.gym_kwargs)
    term = import_function(termination, "termination") if termination else spec.termination
    rew = import_function(reward, "reward") if reward else spec.reward
    return register(env_id, make_fn, term, rew)


def episode_steps(env_id: str) -> int | None:
    """Most steps an episode of ``env_id`` lasts: the preset's fixed length, else the env's time limit."""
    spec = get_spec(env_id)
    if spec.episode_steps is not None:
        return spec.episode_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make(env_id)
    limit = time_limit(env)
    env.close()
    return limit


def time_limit(env: gymnasium.Env) -> int | None:
    """``max_episode_steps`` of a TimeLimit wrapper in ``env`` (or its spec), None if there is none."""
    e = env
    while isinstance(e, gymnasium.Wrapper):
        if isinstance(e, gymnasium.wrappers.TimeLimit):
            return e._max_episode_steps
        e = e.env
    return getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None


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
    kwargs = {**spec.gym_kwargs, **gym_kwargs}
    env = gymnasium.make(spec.gym_id, **kwargs) if spec.make_fn is None else _call_make_fn(spec, kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env


def _call_make_fn(spec: EnvSpec, kwargs: dict) -> gymnasium.Env:
    """Your env from its ``make_fn``; a ConfigError if the call fails or gives something else than an env."""
    name = getattr(spec.make_fn, "__qualname__", repr(spec.make_fn))
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        env = spec.make_fn(**kwargs)
    except Exception as e:  # noqa: BLE001 -- the user's constructor
        accept = f" (it must accept {', '.join(kwargs)} and pass them to the env)" if kwargs else ""
        raise ConfigError(f"env {spec.id!r}: {name}({args}) failed: {type(e).__name__}: {e}{accept}") from e
    if not isinstance(env, gymnasium.Env):
        raise ConfigError(f"env {spec.id!r}: {name}({args}) returned a {type(env).__name__}, not a gymnasium.Env")
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

    Known for presets with a reward (IcyRoad-v0, Intersection-v0 with their default parameters, and
    the MBBL envs, whose reward takes the agent's action in [-1, 1]) and for envs registered with one;
    raises ``ValueError`` for other ids.
    """
    spec = get_spec(env_id)
    if spec.reward is None:
        known = ", ".join(sorted(s.id for s in _PRESETS.values() if s.reward is not None))
        raise ValueError(
            f"No known reward function for {env_id!r}: a reward function is known only for "
            f"{known}. Learn the reward with the model instead."
        )
    return spec.reward
