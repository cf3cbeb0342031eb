"""The MBBL envs of ReW-PE-SAC (mbrlax/envs/mbbl.py): MBBL's reward formula on the simulator's own states,
the unclipped qpos/qvel observation, 1000-step episodes without termination, presets."""

import functools

import jax
import numpy as np
import pytest

from mbrlax import envs
from mbrlax.algos.dyna import scale_action
from mbrlax.config import preset
from mbrlax.envs.mbbl import MBBL_ENVS

IDS = sorted(MBBL_ENVS)


def mbbl_formula(env_id, qpos, qvel, env_action):
    """MBBL's reward (walker.py `_set_reward_api`, humanoid.py) written from the simulator state before the step."""
    ctrl = float(np.sum(np.square(env_action)))
    if env_id == "HopperMBBL-v0" or env_id == "Walker2dMBBL-v0":
        return qvel[0] - 3.0 * (qpos[1] - 1.3) ** 2 - 0.1 * ctrl + 1.0
    if env_id == "HalfCheetahMBBL-v0":
        return qvel[0] - 0.1 * ctrl
    if env_id == "AntMBBL-v0":
        return qvel[0] - 3.0 * (qpos[2] - 0.57) ** 2 - 0.1 * ctrl + 1.0
    if env_id == "SwimmerMBBL-v0":
        return qvel[0] - 1e-4 * ctrl
    assert env_id == "SlimHumanoidMBBL-v0"
    return 0.25 / 0.015 * qvel[0] - 0.1 * ctrl + 5.0 * float(1.0 <= qpos[2] <= 2.0)


@functools.cache
def episode(env_id, seed=0):
    """One whole episode of uniform agent actions: per step the state before it, obs, action, reward, flags."""
    env = envs.make(env_id, seed=seed)
    sim = env.unwrapped
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    while True:
        qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
        action = rng.uniform(-1.0, 1.0, env.action_space.shape)
        env_action = scale_action(action, env.action_space)
        next_obs, reward, term, trunc, _ = env.step(env_action)
        rows.append((qpos, qvel, obs, action, env_action, reward, next_obs, term, trunc))
        obs = next_obs
        if term or trunc:
            break
    env.close()
    return rows


@pytest.mark.parametrize("env_id", IDS)
def test_reward_is_mbbl_formula_and_episode_lasts_1000_steps(env_id):
    rows = episode(env_id)
    assert len(rows) == 1000 and rows[-1][8] and not any(r[7] for r in rows)  # truncated at 1000, never terminated
    spec = MBBL_ENVS[env_id]
    for qpos, qvel, obs, _, env_action, reward, _, _, _ in rows:
        np.testing.assert_array_equal(obs, np.concatenate([qpos[spec.qpos_start:], qvel]))  # unclipped qvel
        assert reward == pytest.approx(mbbl_formula(env_id, qpos, qvel, env_action), rel=1e-9, abs=1e-9)
    # The pure-jnp reward (agent actions in [-1, 1], float32 as in model rollouts) gives the env's reward.
    obs, action, next_obs = (np.asarray([r[i] for r in rows], np.float32) for i in (2, 3, 6))
    rewards = np.asarray([r[5] for r in rows])
    fn = jax.jit(envs.reward_fn(env_id))
    np.testing.assert_allclose(fn(obs, action, next_obs), rewards, rtol=1e-4, atol=1e-3)
    done = jax.jit(envs.termination_fn(env_id))(obs, action, next_obs)
    assert not np.any(done)


def test_velocities_are_not_clipped():
    for env_id in ("HopperMBBL-v0", "Walker2dMBBL-v0"):
        env = envs.make(env_id, seed=0)
        env.reset(seed=0)
        sim = env.unwrapped
        sim.set_state(sim.data.qpos, np.full(sim.model.nv, 25.0))
        obs, *_ = env.step(np.zeros(env.action_space.shape))
        np.testing.assert_array_equal(obs[-sim.model.nv:], sim.data.qvel)
        assert np.max(np.abs(obs)) > 10.0  # v5's own observation clips qvel to [-10, 10]
        env.close()


def test_presets_dims_and_walker_friction():
    assert set(IDS) <= set(envs.list_envs()) and len(IDS) == 6
    for env_id in IDS:
        spec = envs.get_spec(env_id)
        assert spec.episode_steps == 1000 and envs.episode_steps(env_id) == 1000
        env = envs.make(env_id)
        assert env.observation_space.shape == (spec.obs_dim,) == (MBBL_ENVS[env_id].obs_dim,)
        env.close()
    walker = envs.make("Walker2dMBBL-v0").unwrapped
    friction = {walker.model.geom(i).name: walker.model.geom_friction[i, 0] for i in range(walker.model.ngeom)}
    assert friction["foot_geom"] == pytest.approx(0.9) and friction["foot_left_geom"] == pytest.approx(1.9)
    humanoid = envs.make("SlimHumanoidMBBL-v0")
    np.testing.assert_allclose(humanoid.action_space.high, 0.4)
    cfg = preset("HopperMBBL-v0", "rew")
    assert (cfg.total_steps, cfg.steps_per_epoch, cfg.init_steps, cfg.sac.updates_per_step) == (200_000, 1000, 5000, 20)
    slim = preset("SlimHumanoidMBBL-v0", "rew")
    assert slim.model.hidden_size == 400 and slim.model.train_freq == 1000 and slim.rollout.batch_size == 100_000
