"""Checks of your own env and its functions before a run starts (``mbrlax.envs.register``,
``--env module:function``, ``--termination``, ``--reward``).

On a short uniform-random rollout of the real env, each function must trace under
``jax.jit`` on the batched float32 arrays model rollouts give it, return one value per
transition of the right dtype, and agree with the env: a termination function with the
env's own ``terminated`` (exactly), a reward function with the env's reward (to float32
precision). The env must end episodes by truncation (a TimeLimit), or an evaluation
episode of a good policy could run forever. Every failure is a ConfigError naming what is
wrong and what would be right.
"""

from __future__ import annotations

import warnings
from typing import Callable

import gymnasium
import jax
import numpy as np

from mbrlax import envs
from mbrlax.config import ConfigError

CHECK_STEPS = 500  # random env steps the functions are checked on
REWARD_TOLERANCE = 1e-4  # relative and absolute, for the reward check

_EXAMPLES = {"termination": "jnp.abs(next_obs[:, 0]) > 2.0", "reward": "-jnp.sum(next_obs ** 2, axis=-1)"}


def function_name(fn: Callable) -> str:
    """``module:qualname`` of a function (its repr if it has none)."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(fn)


def random_transitions(env: gymnasium.Env, steps: int, seed: int, agent_actions: bool) -> tuple[dict, bool]:
    """``steps`` uniform-random transitions (float32 obs, resets after episode ends) and whether any
    episode was truncated. With ``agent_actions`` a Box env gets the agent's actions in [-1, 1],
    scaled to its bounds, and the arrays hold the unscaled ones (as model rollouts do)."""
    from mbrlax.algos.dyna import scale_action

    space = env.action_space
    unit = agent_actions and isinstance(space, gymnasium.spaces.Box)
    rng = np.random.default_rng(seed)
    space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows, truncated = [], False
    for _ in range(steps):
        action = rng.uniform(-1.0, 1.0, space.shape) if unit else space.sample()
        next_obs, reward, term, trunc, _ = env.step(scale_action(action, space) if unit else action)
        rows.append((obs, action, next_obs, term, reward))
        truncated |= bool(trunc)
        obs = env.reset()[0] if term or trunc else next_obs
    o, a, n, t, r = zip(*rows)
    a = np.asarray(a, np.float32 if unit or isinstance(space, gymnasium.spaces.Box) else np.int32)
    data = {"obs": np.asarray(o, np.float32), "action": a, "next_obs": np.asarray(n, np.float32),
            "terminated": np.asarray(t, bool), "reward": np.asarray(r, np.float32)}
    return data, truncated


def _evaluate(kind: str, fn: Callable, data: dict) -> np.ndarray:
    """``jit(fn)(obs, action, next_obs)`` checked for one value per transition of the kind's dtype."""
    args = (data["obs"], data["action"], data["next_obs"])
    n, name = len(data["obs"]), function_name(fn)
    names = ("obs", "action", "next_obs")
    shapes = ", ".join(f"{k} {list(np.shape(v))} {np.asarray(v).dtype}" for k, v in zip(names, args))
    try:
        out = np.asarray(jax.jit(fn)(*args))
    except Exception as e:  # noqa: BLE001 -- the user's function
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(
            f"{kind} function {name} fails under jax.jit on batched arrays ({shapes}): {type(e).__name__}: "
            f"{first}. It must be a pure jax.numpy function of batched arrays (no Python `if` or NumPy calls on "
            f"their values: use jnp.where), e.g. `return {_EXAMPLES[kind]}`"
        ) from e
    want = "bool" if kind == "termination" else "float"
    ok_dtype = out.dtype == np.bool_ if kind == "termination" else np.issubdtype(out.dtype, np.floating)
    if out.shape != (n,) or not ok_dtype:
        raise ConfigError(
            f"{kind} function {name} returned {out.dtype} {list(out.shape)} for N={n} transitions ({shapes}); "
            f"it must return {want} [N], one value per transition, e.g. `return {_EXAMPLES[kind]}`"
        )
    return out


def _check_termination(fn: Callable, data: dict) -> None:
    done, env_done = _evaluate("termination", fn, data), data["terminated"]
    bad = np.flatnonzero(done != env_done)
    if bad.size:
        i = bad[0]
        raise ConfigError(
            f"termination function {function_name(fn)} disagrees with the env's own `terminated` on {bad.size} of "
            f"{len(done)} random transitions (the env terminated {int(env_done.sum())} times); first at transition "
            f"{i}: env terminated={bool(env_done[i])}, function returned {bool(done[i])}, for "
            f"next_obs={np.array2string(data['next_obs'][i], precision=4)}. It must return exactly the env's "
            "`terminated` (not `truncated`: time limits are the env's job)"
        )


def _check_reward(fn: Callable, data: dict) -> None:
    reward, env_reward = _evaluate("reward", fn, data), data["reward"]
    bad = np.flatnonzero(~np.isclose(reward, env_reward, rtol=REWARD_TOLERANCE, atol=REWARD_TOLERANCE))
    if bad.size:
        i = bad[0]
        raise ConfigError(
            f"reward function {function_name(fn)} disagrees with the env's reward on {bad.size} of {len(reward)} "
            f"random transitions; first at transition {i}: env reward={env_reward[i]:.6g}, function returned "
            f"{reward[i]:.6g}, for obs={np.array2string(data['obs'][i], precision=4)}, action="
            f"{np.array2string(np.asarray(data['action'][i]), precision=4)}. A known reward must be the env's own "
            "(it replaces the model's predicted reward); leave --reward out to learn the reward instead"
        )


def check_functions(env_id: str, agent_actions: bool = True, steps: int = CHECK_STEPS, seed: int = 0) -> None:
    """Check the env ``env_id`` and its termination and reward functions (ConfigError on failure).

    ``agent_actions``: the functions get the agent's actions in [-1, 1] (mbpo/sac/pmac/memr);
    False: the env's own actions (dam)."""
    spec = envs.get_spec(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no termination function": warned where it matters
        env = envs.make(env_id)
    try:
        data, truncated = random_transitions(env, steps, seed, agent_actions)
        limited = envs.time_limit(env) is not None
    finally:
        env.close()
    if not (limited or truncated):
        raise ConfigError(
            f"env {env_id!r} has no time limit and truncated no episode in {steps} random steps: an evaluation "
            "episode could run forever; wrap it, e.g. `gymnasium.wrappers.TimeLimit(env, max_episode_steps=1000)`"
        )
    if spec.termination is not None:
        _check_termination(spec.termination, data)
    if spec.reward is not None:
        _check_reward(spec.reward, data)
