"""The MBBL benchmark envs (Wang et al. 2019) that ReW-PE-SAC evaluates on (shared/papers/rew.txt; SPECS.md 3.5),
rebuilt on Gymnasium MuJoCo v5.

Every env lasts exactly 1000 steps (never terminates), observes ``[qpos[start:], qvel]`` read from the
simulator (no velocity clipping, unlike Hopper-v5 / Walker2d-v5), and is rewarded by MBBL's formula applied to
the START state s_t of a transition and the env-scale action a_t (``mbbl/env/gym_env/walker.py``,
``_set_reward_api``, and ``humanoid.py`` of WilsonWangTHU/mbbl):

    HopperMBBL-v0        s[5]  - 3 (s[0] - 1.3)^2  - 0.1 |a|^2 + 1      (MBBL gym_hopper, obs 11 = qpos[1:] + qvel)
    Walker2dMBBL-v0      s[8]  - 3 (s[0] - 1.3)^2  - 0.1 |a|^2 + 1      (gym_walker2d, 17 = qpos[1:] + qvel)
    HalfCheetahMBBL-v0   s[8]                      - 0.1 |a|^2          (gym_cheetah, 17 = qpos[1:] + qvel)
    AntMBBL-v0           s[13] - 3 (s[0] - 0.57)^2 - 0.1 |a|^2 + 1      (gym_ant, 27 = qpos[2:] + qvel)
    SwimmerMBBL-v0       s[3]                      - 1e-4 |a|^2         (gym_swimmer, 8 = qpos[2:] + qvel)
    SlimHumanoidMBBL-v0  (0.25 / 0.015) s[22] - 0.1 |a|^2 + 5 [1 <= s[0] <= 2]   (gym_nostopslimhumanoid, 45)

s[velocity] is qvel[0] (forward velocity) and s[0] the torso height (for the walkers and the ant). Humanoid's
actions are bounded by +-0.4, so its control cost is of the env action 0.4 a; the pure-jnp reward functions here
take the agent's action a in [-1, 1] (as model rollouts give it) and scale it (so `--algo dam`, which plans in
env actions, refuses SlimHumanoidMBBL-v0 unless given its own --reward). MBBL's own planners (RS, PETS) pass
actions in [-1, 1] to the humanoid, whose control cost is then up to 6.25 times ours: SlimHumanoid returns are
comparable with SAC-based numbers (the ±0.4 action space MBBL exposes), not with MBBL's planners'. Walker2d uses
Gymnasium's ``walker2d.xml`` (feet friction 0.9 / 1.9, as gym 0.9.4's that MBBL loads) rather than v5's (both
1.9). Gymnasium's humanoid.xml limits left_hip_y to -110..20 degrees, gym 0.9.4's to -120..20 (gym PR 932).
Physics is MuJoCo >= 3.1 instead of MBBL's MuJoCo 1.31, so absolute returns differ somewhat from the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import gymnasium
import jax.numpy as jnp
import numpy as np

from mbrlax.envs.termination import never

__all__ = ["MBBL_ENVS", "MBBLEnv", "MBBLWrapper", "PRESETS", "make_env", "mbbl_reward", "register_envs"]

EPISODE_STEPS = 1000
_HUMANOID_SLIM = {f"include_{k}_in_observation": False for k in ("cinert", "cvel", "qfrc_actuator", "cfrc_ext")}


@dataclass(frozen=True)
class MBBLEnv:
    """One MBBL env: its Gymnasium base and the terms of its reward r(s_t, a_t)."""

    id: str
    base: str  # Gymnasium v5 id
    qpos_start: int  # observation = [qpos[qpos_start:], qvel]
    obs_dim: int
    velocity: int  # observation index of qvel[0]
    velocity_coeff: float = 1.0
    ctrl_coeff: float = 0.1
    height_coeff: float = 0.0  # - height_coeff (s[0] - target_height)^2
    target_height: float = 0.0
    alive_bonus: float = 0.0
    healthy_range: tuple[float, float] | None = None  # alive bonus only while s[0] is in it (humanoid)
    action_scale: float = 1.0  # env action = action_scale x agent action
    base_kwargs: dict = field(default_factory=dict, hash=False)


MBBL_ENVS = {
    e.id: e
    for e in (
        MBBLEnv("HopperMBBL-v0", "Hopper-v5", 1, 11, 5, height_coeff=3.0, target_height=1.3, alive_bonus=1.0,
                base_kwargs={"terminate_when_unhealthy": False}),
        MBBLEnv("Walker2dMBBL-v0", "Walker2d-v5", 1, 17, 8, height_coeff=3.0, target_height=1.3, alive_bonus=1.0,
                base_kwargs={"terminate_when_unhealthy": False, "xml_file": "walker2d.xml"}),
        MBBLEnv("HalfCheetahMBBL-v0", "HalfCheetah-v5", 1, 17, 8),
        MBBLEnv("AntMBBL-v0", "Ant-v5", 2, 27, 13, height_coeff=3.0, target_height=0.57, alive_bonus=1.0,
                base_kwargs={"terminate_when_unhealthy": False, "include_cfrc_ext_in_observation": False}),
        MBBLEnv("SwimmerMBBL-v0", "Swimmer-v5", 2, 8, 3, ctrl_coeff=1e-4),
        MBBLEnv("SlimHumanoidMBBL-v0", "Humanoid-v5", 2, 45, 22, velocity_coeff=0.25 / 0.015, alive_bonus=5.0,
                healthy_range=(1.0, 2.0), action_scale=0.4,
                base_kwargs={"terminate_when_unhealthy": False, **_HUMANOID_SLIM}),
    )
}


def _reward(e: MBBLEnv, obs, env_action, xp):
    """MBBL's reward of start states obs [..., obs_dim] and env-scale actions [..., act_dim] (xp: numpy or jnp)."""
    r = e.velocity_coeff * obs[..., e.velocity] - e.ctrl_coeff * xp.sum(env_action**2, axis=-1)
    if e.height_coeff:
        r = r - e.height_coeff * (obs[..., 0] - e.target_height) ** 2
    if e.healthy_range is not None:
        lo, hi = e.healthy_range
        r = r + e.alive_bonus * ((obs[..., 0] >= lo) & (obs[..., 0] <= hi))
    else:
        r = r + e.alive_bonus
    return r


def _jnp_reward(e: MBBLEnv, obs, action, next_obs):
    return _reward(e, jnp.asarray(obs), e.action_scale * jnp.asarray(action), jnp)


def mbbl_reward(env_id: str):
    """The pure-jnp reward fn(obs, action, next_obs) -> [B] of an MBBL env (action: the agent's, in [-1, 1];
    only obs and action are read)."""
    fn = partial(_jnp_reward, MBBL_ENVS[env_id])
    fn.__name__ = fn.__qualname__ = f"mbbl_reward[{env_id}]"
    fn.__module__ = __name__
    return fn


class MBBLWrapper(gymnasium.Wrapper):
    """Observations [qpos[start:], qvel] from the simulator, MBBL's reward of (s_t, a_t), never terminated."""

    def __init__(self, env: gymnasium.Env, spec: MBBLEnv):
        super().__init__(env)
        self.mbbl = spec
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float64)
        self._obs = None

    def _state_obs(self) -> np.ndarray:
        data = self.env.unwrapped.data
        return np.concatenate([data.qpos.flat[self.mbbl.qpos_start:], data.qvel.flat]).astype(np.float64)

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        self._obs = self._state_obs()
        return self._obs.copy(), info

    def step(self, action):
        reward = float(_reward(self.mbbl, self._obs, np.asarray(action, np.float64), np))
        _, _, _, truncated, info = self.env.step(action)
        self._obs = self._state_obs()
        return self._obs.copy(), reward, False, truncated, info


def make_env(mbbl_id: str, **kwargs) -> gymnasium.Env:
    """The MBBL env `mbbl_id` (the TimeLimit comes from its registration); kwargs go to the base env."""
    spec = MBBL_ENVS[mbbl_id]
    base = gymnasium.make(spec.base, **{**spec.base_kwargs, **kwargs}).unwrapped  # no wrappers of its own
    return MBBLWrapper(base, spec)


def register_envs() -> None:
    """Register every MBBL env with Gymnasium (1000-step time limit); idempotent."""
    for env_id in MBBL_ENVS:
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="mbrlax.envs.mbbl:make_env", max_episode_steps=EPISODE_STEPS,
                               kwargs={"mbbl_id": env_id})


# EnvSpec fields of the presets (mbrlax/envs/__init__.py builds them; this module cannot import it).
PRESETS = [
    dict(id=e.id, gym_id=e.id, termination=never, obs_dim=e.obs_dim, reward=mbbl_reward(e.id),
         episode_steps=EPISODE_STEPS)
    for e in MBBL_ENVS.values()
]
