"""Tests for the DAM paper's IcyRoad-v0 and Intersection-v0 (mbrlax.envs.dam_envs)."""

from __future__ import annotations

import math
import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mbrlax import envs
from mbrlax.envs import dam_envs

DEC, CRUISE, ACC = 0, 1, 2
IDS = ["IcyRoad-v0", "Intersection-v0"]


def _icy(**kwargs):
    return dam_envs.IcyRoadEnv(**kwargs)


def _inter(turn_left, **kwargs):
    env = dam_envs.IntersectionEnv(**kwargs)
    env.reset(seed=0, options={"turn_left": turn_left})
    return env


def _rollout(env, actions):
    """(observations incl. the first, rewards, collisions, truncations) of a fixed action list."""
    obs, rewards, collisions, truncs = [env._obs()], [], [], []
    for a in actions:
        o, r, terminated, truncated, info = env.step(a)
        assert not terminated
        obs.append(o)
        rewards.append(r)
        collisions.append(info.get("collision", False))
        truncs.append(truncated)
    return np.array(obs), np.array(rewards), np.array(collisions), truncs


# ----------------------------------------------------------------------------- both


@pytest.mark.parametrize("env_id", IDS)
def test_check_env(env_id):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped.*")
        check_env(gymnasium.make(env_id).unwrapped)
        check_env(gymnasium.make(env_id))


@pytest.mark.parametrize(
    "env_id, obs_dim, steps", [("IcyRoad-v0", 4, 5), ("Intersection-v0", 10, 25)]
)
def test_presets(env_id, obs_dim, steps):
    assert env_id in envs.list_envs()
    spec = envs.get_spec(env_id)
    assert (spec.obs_dim, spec.episode_steps) == (obs_dim, steps)
    env = envs.make(env_id, seed=0)
    assert env.observation_space.shape == (obs_dim,) and env.action_space.n == 3
    next_obs = jnp.zeros((7, obs_dim))
    done = envs.termination_fn(env_id)(next_obs, jnp.zeros(7, int), next_obs)
    assert done.shape == (7,) and not done.any()
    assert envs.reward_fn(env_id) is spec.reward


def test_reward_fn_unknown():
    with pytest.raises(ValueError, match="IcyRoad-v0, Intersection-v0"):
        envs.reward_fn("Hopper-v5")


@pytest.mark.parametrize("env_id, steps", [("IcyRoad-v0", 5), ("Intersection-v0", 25)])
def test_episode_length_truncates(env_id, steps):
    env = envs.make(env_id)
    for seed in range(3):
        env.reset(seed=seed)
        flags = [env.step(env.action_space.sample())[2:4] for _ in range(steps)]
        assert flags == [(False, False)] * (steps - 1) + [(False, True)]


@pytest.mark.parametrize("env_id", IDS)
def test_seeded_reset_reproducible(env_id):
    rng = np.random.default_rng(1)
    actions = rng.integers(0, 3, size=25).tolist()

    def trajectory(seed):
        env = envs.make(env_id)
        env.reset(seed=seed)
        rows = []
        for a in actions:
            o, r, _, truncated, _ = env.step(a)
            rows.append(np.append(o, r))
            if truncated:
                env.reset()
        return np.array(rows)

    for seed in range(5):
        np.testing.assert_array_equal(trajectory(seed), trajectory(seed))
    assert any(not np.array_equal(trajectory(0), trajectory(s)) for s in range(1, 20))


def _random_transitions(env_id, n_episodes=60):
    env = envs.make(env_id)
    obs_, act_, next_, rew_ = [], [], [], []
    for seed in range(n_episodes):
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        truncated = False
        while not truncated:
            a = env.action_space.sample()
            next_obs, r, _, truncated, _ = env.step(a)
            obs_.append(obs), act_.append(a), next_.append(next_obs), rew_.append(r)
            obs = next_obs
    return np.array(obs_), np.array(act_), np.array(next_), np.array(rew_, dtype=np.float32)


@pytest.mark.parametrize("env_id", IDS)
def test_jax_reward_matches_env(env_id):
    obs, act, next_obs, rew = _random_transitions(env_id)
    assert len(np.unique(rew)) > 3  # the rollouts hit several reward cases
    predicted = jax.jit(envs.reward_fn(env_id))(obs, act, next_obs)
    assert predicted.shape == rew.shape
    np.testing.assert_array_equal(np.asarray(predicted), rew)


def test_intersection_reward_covers_collisions():
    """Mixed braking/cruising rollouts: the JAX reward matches on colliding transitions too."""
    fn = jax.jit(envs.reward_fn("Intersection-v0"))
    for turn_left in (True, False):
        for k in range(6):
            env = _inter(turn_left)
            obs, rew, col, _ = _rollout(env, [DEC] * k + [ACC] * (25 - k))
            predicted = np.asarray(fn(obs[:-1], jnp.zeros(25, int), obs[1:]))
            np.testing.assert_array_equal(predicted, rew.astype(np.float32))
            if turn_left and k == 0:
                assert col.any()


# -------------------------------------------------------------------------- IcyRoad


def test_icyroad_start_state():
    env = envs.make("IcyRoad-v0")
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert obs.dtype == np.float32
        np.testing.assert_array_equal(obs, [0, 0, 1, 0])


@pytest.mark.parametrize(
    "action, expected",  # from (0, 0, 1, 0), dt = 1: velocity first, then position
    [(DEC, [0, 0, 0, 0]), (CRUISE, [1, 0, 1, 0]), (ACC, [2, 0, 2, 0])],
)
def test_icyroad_euler_step(action, expected):
    env = _icy()
    env.reset(seed=0)
    obs, reward, *_ = env.step(action)
    np.testing.assert_array_equal(obs, expected)
    assert reward == expected[2]  # on road, not above 2: reward = xdot'


def test_icyroad_dt_and_floor():
    env = _icy(dt=0.5)
    env.reset(seed=0, options={"state": [1.0, 0.5, 0.0, 0.0]})
    obs, reward, *_ = env.step(DEC)  # xdot stays at 0
    np.testing.assert_array_equal(obs, [1.0, 0.5, 0.0, 0.0])
    obs, *_ = env.step(ACC)
    np.testing.assert_array_equal(obs, [1.5, 0.5, 1.0, 0.0])
    # an already swerving car keeps its ydot and slides on
    env.reset(seed=0, options={"state": [0.0, 2.0, 3.0, -2.0]})
    obs, reward, *_ = env.step(CRUISE)
    np.testing.assert_array_equal(obs, [1.5, 1.0, 3.0, -2.0])
    assert reward == 3.0 + 8.0  # |y'| = 1 is still on the road


@pytest.mark.parametrize(
    "next_state, reward",
    [
        ((3, 0.5, 1, 0), 1.0),  # on road, slow: xdot
        ((3, 1.0, 2, 0), 2.0),  # xdot = 2 is not above the threshold
        ((3, -1.0, 3, 0), 11.0),  # high-speed bonus xdot + 8 (|y| = 1 still on road)
        ((3, 2.0, 3, 2), -3.0),  # off road: xdot - 6
        ((3, -1.5, 1, 0), -5.0),  # off road, slow
    ],
)
def test_icyroad_reward_eq20(next_state, reward):
    next_obs = jnp.asarray([next_state], dtype=jnp.float32)
    assert float(dam_envs.icyroad_reward(next_obs, jnp.zeros(1, int), next_obs)[0]) == reward


def test_icyroad_swerve_is_trimodal_fig2():
    """From s = (2, 0, 2, 0), accelerate: ydot' in {-v, 0, +v} with masses (p/2, 1-p, p/2)."""
    p, v, n = 0.8, 2.0, 4000
    env = _icy(swerve_prob=p, swerve_speed=v)
    ydots = []
    for seed in range(n):
        env.reset(seed=seed, options={"state": [2.0, 0.0, 2.0, 0.0]})
        obs, reward, *_ = env.step(ACC)
        assert obs[2] == 3.0 and obs[0] == 5.0
        assert reward == (11.0 if obs[3] == 0 else -3.0)
        ydots.append(obs[3])
    ydots = np.array(ydots)
    assert set(np.unique(ydots)) == {-v, 0.0, v}
    for value, mass in ((-v, p / 2), (0.0, 1 - p), (v, p / 2)):
        freq = np.mean(ydots == value)
        assert abs(freq - mass) < 5 * math.sqrt(mass * (1 - mass) / n)


def test_icyroad_no_swerve_at_or_below_threshold():
    env = _icy()
    for seed in range(300):
        env.reset(seed=seed)
        for a in (ACC, CRUISE, CRUISE, DEC, CRUISE):  # xdot' in {2, 2, 2, 1, 1}
            obs, *_ = env.step(a)
            assert obs[1] == 0 and obs[3] == 0


# --------------------------------------------------------------------- Intersection


def test_intersection_start_state():
    env = envs.make("Intersection-v0")
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (10,)
    expected = [1.5, -10, 0, 5, math.pi / 2, -1.5, 10, 0, -5, -math.pi / 2]
    np.testing.assert_array_equal(obs, np.float32(expected))


@pytest.mark.parametrize("action, ydot", [(DEC, 4.0), (CRUISE, 5.0), (ACC, 5.0)])  # capped at 5
def test_intersection_euler_step(action, ydot):
    env = _inter(turn_left=True)
    obs, reward, *_ = env.step(action)
    expected = [1.5, -10 + 0.2 * ydot, 0, ydot, math.pi / 2, -1.5, 9, 0, -5, -math.pi / 2]
    np.testing.assert_allclose(obs, np.float32(expected), rtol=0, atol=1e-6)
    assert reward == pytest.approx(ydot)


def test_intersection_speed_bounds():
    env = _inter(turn_left=False, max_speed=7.0)
    obs, *_ = _rollout(env, [DEC] * 7 + [ACC] * 10)
    speeds = obs[1:, 3]
    assert speeds.min() == 0 and speeds.max() == 7 and speeds[6] == 0


@pytest.mark.parametrize("turn_left", [True, False])
def test_intersection_turn(turn_left):
    obs, *_ = _rollout(_inter(turn_left), [CRUISE] * 10)
    side = 1 if turn_left else -1
    # identical (turn not observable) until the car reaches y = 1.5 between steps 8 and 9
    np.testing.assert_array_equal(obs[8, 5:9], [-1.5, 2.0, 0.0, -5.0])
    heading = 0.0 if turn_left else math.pi
    expected = [-1.5 + side * 0.5, 1.5, side * 5.0, 0.0, heading]
    np.testing.assert_allclose(obs[9, 5:], expected, atol=1e-6)
    np.testing.assert_allclose(obs[10, 5:7], [-1.5 + side * 1.5, 1.5])


def test_intersection_turn_hidden_until_it_happens():
    left, *_ = _rollout(_inter(True), [CRUISE] * 25)
    right, *_ = _rollout(_inter(False), [CRUISE] * 25)
    np.testing.assert_array_equal(left[:9], right[:9])
    assert not np.array_equal(left[9], right[9])


def test_intersection_full_speed_collides_only_on_left_turn():
    _, rew, col, _ = _rollout(_inter(True), [CRUISE] * 25)
    assert col.sum() == 4 and list(np.flatnonzero(col)) == [9, 10, 11, 12]
    np.testing.assert_array_equal(rew[col], 5.0 - 10.0)
    assert rew.sum() == 125 - 40
    for actions in ([CRUISE] * 25, [ACC] * 25):  # accelerating cannot beat the left-turner
        assert _rollout(_inter(True), actions)[2].any()
        _, rew, col, _ = _rollout(_inter(False), actions)
        assert not col.any() and rew.sum() == 125


def test_intersection_braking_avoids_collision():
    _, rew, col, _ = _rollout(_inter(True), [DEC] * 5 + [ACC] * 20)
    assert not col.any() and rew.sum() == 100  # beats colliding at full speed (85)
    _, _, col, _ = _rollout(_inter(True), [DEC] * 25)
    assert not col.any()


@pytest.mark.parametrize(
    "agent_xy, other_xy, reward",
    [
        ((1.5, 0.0), (0.0, 1.5), 5.0 - 10.0),  # distance 2.1 < 2.5
        ((1.5, 1.0), (1.5, 3.4), -5.0),  # distance 2.4
        ((1.5, -1.0), (-1.0, 1.5), 5.0),  # distance 3.5
        ((0.0, 0.0), (2.5, 0.0), 5.0),  # exactly the radius: no collision
    ],
)
def test_intersection_reward_eq21(agent_xy, other_xy, reward):
    s = np.zeros((1, 10), np.float32)
    s[0, [0, 1]], s[0, 3], s[0, [5, 6]] = agent_xy, 5.0, other_xy
    assert float(dam_envs.intersection_reward(s, jnp.zeros(1, int), s)[0]) == reward
    custom = dam_envs.make_intersection_reward(collision_radius=4.0, collision_penalty=1.0)
    assert float(custom(s, jnp.zeros(1, int), s)[0]) == 4.0


def test_intersection_turn_is_fifty_fifty():
    env = envs.make("Intersection-v0")
    n = 1000
    lefts = 0
    for seed in range(n):
        env.reset(seed=seed)
        for _ in range(10):
            obs, *_ = env.step(CRUISE)
        assert obs[7] in (-5.0, 5.0)
        lefts += obs[7] > 0
    assert abs(lefts / n - 0.5) < 5 * math.sqrt(0.25 / n)
    biased = dam_envs.IntersectionEnv(turn_left_prob=1.0)
    biased.reset(seed=0)
    assert biased._turn_left


# ----------------------------------------------------------------------------- exact values (DP)


def test_icyroad_exact_values():
    """Dynamic programming over the env's own transition: the optimum 10 is accelerate once, then
    cruise at speed 2 (no swerve risk); nothing closed-loop beats it. Uniform random: 2.19 (MC)."""
    assert dam_envs.icyroad_value() == pytest.approx(10.0)
    env = _icy()
    env.reset(seed=0)
    assert _rollout(env, [ACC] + [CRUISE] * 4)[1].sum() == 10.0
    # A lower swerve chance makes the risk worth taking (risky: reach speed 3 and hope).
    assert dam_envs.icyroad_value(_icy(swerve_prob=0.3)) > 10.0
    rng = np.random.default_rng(0)
    env.reset(seed=1)
    returns = []
    for _ in range(2000):
        env.reset()
        returns.append(_rollout(env, rng.integers(0, 3, 5))[1].sum())
    random_value = dam_envs.icyroad_value(policy="random")
    assert random_value == pytest.approx(np.mean(returns), abs=4 * np.std(returns) / np.sqrt(len(returns)))
    with pytest.raises(ValueError, match="invalid policy"):
        dam_envs.icyroad_value(policy="greedy")


def test_intersection_exact_values():
    """The turn shows after step 9, the first collision is at step 10: slowing slightly before the
    intersection and then reacting (106 / 118, expected 112) beats full speed (85 / 125, 105)
    and brake-then-go (100); the DP's plans replayed in the env give its values."""
    v = dam_envs.intersection_value()
    assert (v["expected"], v["left"], v["right"], v["perfect_information"]) == pytest.approx((112, 106, 118, 116))
    for turn_left, plan, value in ((True, v["plan_left"], 106), (False, v["plan_right"], 118)):
        assert len(plan) == 25 and _rollout(_inter(turn_left), [int(a) for a in plan])[1].sum() == value
    assert v["plan_left"][:9] == v["plan_right"][:9]  # the same actions while the turn is hidden
    full_speed = [_rollout(_inter(left), [CRUISE] * 25)[1].sum() for left in (True, False)]
    assert np.mean(full_speed) == 105 < v["expected"]
    assert _rollout(_inter(True), [CRUISE] * 4 + [DEC] * 21)[1].sum() == 30  # then stop for good
    rng = np.random.default_rng(0)
    returns = [_rollout(_inter(bool(rng.random() < 0.5)), rng.integers(0, 3, 25))[1].sum() for _ in range(200)]
    random_value = dam_envs.intersection_value(policy="random")["expected"]
    assert random_value == pytest.approx(np.mean(returns), abs=4 * np.std(returns) / np.sqrt(len(returns)))
