"""Tests for mbrlax.envs: the real Gymnasium envs are the oracle for every termination rule."""

from __future__ import annotations

import functools
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax import envs

PRESETS = [
    "InvertedPendulum-v5",
    "InvertedDoublePendulum-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "HalfCheetah-v5",
    "Ant-v5",
    "Humanoid-v5",
    "AntTruncatedObs-v5",
    "HumanoidTruncatedObs-v5",
]
NEVER_TERMINATE = {"HalfCheetah-v5"}
# Episode starts cycle through these perturbations of the reset state. Scale 0 keeps
# Gymnasium's own reset noise (plain random-action trajectories); larger scales add Gaussian
# noise to all of qpos/qvel; "kick" shifts one random qpos coordinate by up to +-1, which
# drives single health bounds across their limits.
PERTURBATIONS = (0.0, 0.1, 0.3, 1.0, "kick")
MAX_EPISODE_STEPS = 10


def _n_steps(env_id: str) -> int:
    return 500 if env_id.startswith("Humanoid") else 1000


@functools.cache
def _transitions(env_id: str, seed: int = 0):
    """(obs, action, next_obs, terminated) from the real env, random actions, perturbed starts."""
    env = envs.make(env_id, seed=seed)
    sim = env.unwrapped
    rng = np.random.default_rng(seed)
    rows = []
    episode = 0
    while len(rows) < _n_steps(env_id):
        env.reset(seed=seed + episode)
        perturbation = PERTURBATIONS[episode % len(PERTURBATIONS)]
        episode += 1
        qpos, qvel = sim.data.qpos.copy(), sim.data.qvel.copy()
        if perturbation == "kick":
            qpos[rng.integers(sim.model.nq)] += rng.uniform(-1.0, 1.0)
        else:
            qpos += perturbation * rng.standard_normal(sim.model.nq)
            qvel += perturbation * rng.standard_normal(sim.model.nv)
        sim.set_state(qpos, qvel)
        obs = sim._get_obs()
        for _ in range(MAX_EPISODE_STEPS):
            action = env.action_space.sample()
            next_obs, _, terminated, truncated, _ = env.step(action)
            rows.append((obs, action, next_obs, terminated))
            obs = next_obs
            if terminated or truncated:
                break
    env.close()
    return tuple(np.array(col) for col in zip(*rows))


def test_list_envs():
    mbbl = ["AntMBBL-v0", "HalfCheetahMBBL-v0", "HopperMBBL-v0", "SlimHumanoidMBBL-v0", "SwimmerMBBL-v0", "Walker2dMBBL-v0"]
    assert envs.list_envs() == sorted(PRESETS + ["IcyRoad-v0", "Intersection-v0"] + mbbl)


@pytest.mark.parametrize("env_id", PRESETS)
def test_termination_matches_env(env_id):
    obs, action, next_obs, terminated = _transitions(env_id)
    predicted = jax.jit(envs.termination_fn(env_id))(obs, action, next_obs)
    assert predicted.dtype == jnp.bool_ and predicted.shape == terminated.shape
    mismatches = np.flatnonzero(np.asarray(predicted) != terminated)
    assert mismatches.size == 0, (
        f"{env_id}: {mismatches.size}/{terminated.size} transitions disagree with the env, "
        f"first at {mismatches[:5]}: next_obs[:3]={next_obs[mismatches[:3], :3]}"
    )
    if env_id in NEVER_TERMINATE:
        assert not terminated.any()
    else:  # both outcomes must occur, or agreement would be trivial
        assert terminated.any() and not terminated.all(), f"{env_id}: {terminated.mean():.2f}"


# (env, qpos index, value) triples at which a health bound sits: the torso height for the
# `_healthy_z_range` bounds, the torso/pole angle, and for InvertedDoublePendulum the first
# hinge angle at which the tip height 0.6*(cos t1 + cos(t1 + t2)) is 1 when t2 = 0.
_IDP_LIMIT = float(np.arccos(1 / 1.2))
BOUNDS = [
    *[("Hopper-v5", 1, 0.7), ("Hopper-v5", 2, -0.2), ("Hopper-v5", 2, 0.2)],
    *[("Walker2d-v5", 1, z) for z in (0.8, 2.0)], *[("Walker2d-v5", 2, a) for a in (-1, 1)],
    *[(env_id, 2, z) for env_id in ("Ant-v5", "AntTruncatedObs-v5") for z in (0.2, 1.0)],
    *[(env_id, 2, z) for env_id in ("Humanoid-v5", "HumanoidTruncatedObs-v5") for z in (1, 2)],
    *[("InvertedPendulum-v5", 1, a) for a in (-0.2, 0.2)],
    *[("InvertedDoublePendulum-v5", 1, a) for a in (-_IDP_LIMIT, _IDP_LIMIT)],
]


@pytest.mark.parametrize("env_id, index, bound", BOUNDS)
def test_termination_matches_env_at_bounds(env_id, index, bound):
    """Start at rest within 0.02 of one bound and take one short step (frame_skip=1): both
    outcomes must occur and the termination function must agree with the env on each."""
    env = envs.make(env_id, frame_skip=1, reset_noise_scale=0.0)
    fn = jax.jit(envs.termination_fn(env_id))
    sim = env.unwrapped
    terminated, predicted = [], []
    for offset in np.linspace(-0.02, 0.02, 9):
        obs, _ = env.reset(seed=0)
        qpos = sim.data.qpos.copy()
        qpos[index] = bound + offset
        sim.set_state(qpos, sim.data.qvel)
        action = np.zeros(env.action_space.shape)
        next_obs, _, done, _, _ = env.step(action)
        terminated.append(done)
        predicted.append(bool(fn(obs[None], action[None], next_obs[None])[0]))
    env.close()
    assert predicted == terminated
    assert any(terminated) and not all(terminated), terminated


@pytest.mark.parametrize("env_id", ["Hopper-v5", "InvertedDoublePendulum-v5", "Ant-v5"])
def test_termination_vmap_and_unbatched(env_id):
    obs, action, next_obs, _ = (jnp.asarray(x[:64]) for x in _transitions(env_id))
    fn = envs.termination_fn(env_id)
    batched = fn(obs, action, next_obs)
    per_sample = jax.jit(jax.vmap(fn))(obs, action, next_obs)
    np.testing.assert_array_equal(per_sample, batched)
    assert fn(obs[0], action[0], next_obs[0]).shape == ()


@pytest.mark.parametrize(
    "env_id, dim",
    [("Hopper-v5", 11), ("Walker2d-v5", 17), ("Ant-v5", 105), ("Humanoid-v5", 45),
     ("InvertedPendulum-v5", 4)],
)
def test_non_finite_states_terminate(env_id, dim):
    nan_obs = jnp.full((2, dim), jnp.nan)
    assert envs.termination_fn(env_id)(nan_obs, None, nan_obs).all()


@pytest.mark.parametrize("env_id", PRESETS)
def test_obs_dims(env_id):
    env = envs.make(env_id)
    assert env.observation_space.shape == (envs.get_spec(env_id).obs_dim,)
    env.close()


@pytest.mark.parametrize(
    "env_id, dim", [("AntTruncatedObs-v5", 27), ("HumanoidTruncatedObs-v5", 45)]
)
def test_truncated_presets(env_id, dim):
    assert envs.get_spec(env_id).obs_dim == dim
    env = gymnasium.make(env_id)  # registered with Gymnasium too
    obs, _ = env.reset(seed=0)
    assert obs.shape == (dim,)
    env.close()
    envs._register_truncated_presets()  # registering again is a no-op, not an error


def test_make_kwargs_override_preset():
    env = envs.make("AntTruncatedObs-v5", include_cfrc_ext_in_observation=True)
    assert env.observation_space.shape == (105,)
    env.close()


def test_make_seed_is_reproducible():
    first, second = envs.make("Hopper-v5", seed=7), envs.make("Hopper-v5", seed=7)
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])
    np.testing.assert_array_equal(first.reset(seed=7)[0], second.reset(seed=7)[0])
    np.testing.assert_array_equal(first.action_space.sample(), second.action_space.sample())
    other = envs.make("Hopper-v5", seed=8)
    assert not np.array_equal(other.reset(seed=8)[0], first.reset(seed=7)[0])


def test_unknown_id_raises():
    for call in (envs.make, envs.termination_fn, envs.get_spec):
        with pytest.raises(envs.UnknownEnvError) as info:
            call("HalfCheeta-v5")
        message = str(info.value)
        assert "'HalfCheeta-v5'" in message and "Hopper-v5" in message
        assert "Did you mean: HalfCheetah-v5" in message
    assert issubclass(envs.UnknownEnvError, ValueError)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Swimmer-v5"])
def test_registered_non_preset_warns_and_never_terminates(env_id):
    assert envs.get_spec(env_id).termination is None
    with pytest.warns(UserWarning, match="No termination function is known"):
        env = envs.make(env_id, seed=0)
    with pytest.warns(UserWarning, match=env_id):
        fn = envs.termination_fn(env_id)
    obs = np.stack([env.reset(seed=i)[0] for i in range(3)])
    action = np.stack([env.action_space.sample() for _ in range(3)])
    done = jax.jit(fn)(obs, action, obs)
    assert done.dtype == jnp.bool_ and done.shape == (3,) and not done.any()
    env.close()


def test_presets_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for env_id in PRESETS:
            envs.termination_fn(env_id)
