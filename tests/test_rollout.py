"""Tests for mbrlax.rollout.branched_rollout: equal to a Python loop over depth that calls
sample_action / sample_step with the same keys, horizon and termination semantics, and no
re-tracing when the horizon changes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.agents.sac import sample_action
from mbrlax.config import ModelConfig
from mbrlax.models.ensemble import model_init, sample_step
from mbrlax.nets import mlp_init
from mbrlax.rollout import branched_rollout

OBS, ACT = 3, 2
N, MAX_H = 24, 6
THRESHOLD = 1.0
# Same shapes as tests/test_models.py's small model (shared compiled init pieces).
CFG = ModelConfig(ensemble_size=5, num_elites=3, hidden_size=16)


def term_fn(obs, action, next_obs):
    return next_obs[:, 0] > THRESHOLD


@pytest.fixture(scope="module")
def setup():
    model = model_init(jax.random.key(0), OBS, ACT, CFG).replace(elites=jnp.asarray([4, 1, 2], jnp.int32))
    actor = mlp_init(jax.random.key(1), [OBS, 16, 16, 2 * ACT])
    start = jnp.asarray(np.random.default_rng(0).normal(size=(N, OBS)) * 0.5, jnp.float32)
    return model, actor, start


sample_action_j = jax.jit(sample_action)
sample_step_j = jax.jit(sample_step, static_argnums=4)


def reference(model, actor, start, key, horizon, with_dis):
    """Python loop over depth; per depth: k_act, k_model = split(depth key)."""
    keys = jax.random.split(key, MAX_H)
    obs, alive = np.asarray(start), np.ones(N, bool)
    out = {k: [] for k in ("obs", "action", "reward", "next_obs", "done", "valid", "dis")}
    for d in range(MAX_H):
        if d < horizon:
            k_act, k_model = jax.random.split(keys[d])
            action, _ = sample_action_j(actor, jnp.asarray(obs), k_act)
            reward, next_obs, dis = sample_step_j(model, jnp.asarray(obs), action, k_model, with_dis)
            done = np.asarray(term_fn(obs, action, np.asarray(next_obs)))
            action, reward, next_obs, dis = map(np.asarray, (action, reward, next_obs, dis))
        else:
            action, reward, next_obs = np.zeros((N, ACT)), np.zeros(N), obs
            done, dis = np.ones(N, bool), np.zeros((N, OBS + 1))
        valid = alive & (d < horizon)
        for k, v in zip(out, (obs, action, reward, next_obs, done.astype(np.float32), valid, dis)):
            out[k].append(v)
        alive = valid & ~done
        obs = next_obs
    return {k: np.stack(v) for k, v in out.items()}


TRACES = []


def _rollout(model, actor, start, key, horizon, with_dis):
    TRACES.append(with_dis)  # runs once per trace
    return branched_rollout(model, actor, start, key, horizon, MAX_H, term_fn, with_dis)


ROLLOUT = jax.jit(_rollout, static_argnums=5)


@pytest.mark.parametrize("with_dis", [False, True])
def test_rollout_equals_python_loop(setup, with_dis):
    model, actor, start = setup
    key, horizon = jax.random.key(2), 4
    tr, valid, dis = ROLLOUT(model, actor, start, key, horizon, with_dis)
    ref = reference(model, actor, start, key, horizon, with_dis)
    np.testing.assert_array_equal(np.asarray(valid), ref["valid"])
    for k in ("obs", "action", "reward", "next_obs", "done"):
        np.testing.assert_allclose(np.asarray(getattr(tr, k)), ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(np.asarray(dis), ref["dis"], rtol=1e-5, atol=1e-5)
    if with_dis:
        assert np.all(ref["dis"][:horizon] > 0)


def test_rollout_horizon_and_termination(setup):
    model, actor, start = setup
    horizon = 5
    tr, valid, _ = ROLLOUT(model, actor, start, jax.random.key(3), horizon, False)
    valid, done = np.asarray(valid), np.asarray(tr.done)
    next_obs0 = np.asarray(tr.next_obs)[..., 0]
    assert not valid[horizon:].any()  # depth >= horizon: never valid
    assert valid[0].all()
    # done is the termination function of the step.
    np.testing.assert_array_equal(done[:horizon] > 0.5, next_obs0[:horizon] > THRESHOLD)
    # Consecutive steps chain: the next step starts where the last ended.
    np.testing.assert_allclose(np.asarray(tr.obs)[1:horizon], np.asarray(tr.next_obs)[: horizon - 1])
    early, survivors = 0, 0
    for n in range(N):
        hits = np.flatnonzero(valid[:, n] & (done[:, n] > 0.5))
        if len(hits) == 0:
            # Never terminated: valid for the whole horizon.
            assert valid[:horizon, n].all()
            survivors += 1
            continue
        t = hits[0]
        # The terminal transition is kept, nothing after it.
        assert valid[: t + 1, n].all() and not valid[t + 1:, n].any()
        early += t < horizon - 1
    # Both cases really occur (branches ending before the horizon, and branches that survive).
    assert early >= 3 and survivors >= 3, (early, survivors)


def test_changing_horizon_does_not_retrace(setup):
    """Horizon is a traced value: every horizon runs through the same trace (counted by a Python
    side effect inside the jitted function), and each still has its own validity pattern."""
    model, actor, start = setup
    ROLLOUT(model, actor, start, jax.random.key(0), 1, False)
    before = TRACES.count(False)
    assert before >= 1
    for h in [1, 4, 2, MAX_H]:
        key = jax.random.key(10 + h)
        tr, valid, _ = ROLLOUT(model, actor, start, key, h, False)
        valid = np.asarray(valid)
        assert not valid[h:].any() and valid[0].all()
        # Skipped steps are empty (zero action and reward, state carried over).
        assert np.all(np.asarray(tr.action)[h:] == 0) and np.all(np.asarray(tr.reward)[h:] == 0)
        np.testing.assert_array_equal(np.asarray(tr.next_obs)[h:], np.asarray(tr.obs)[h:])
        if h == 2:
            np.testing.assert_array_equal(valid, reference(model, actor, start, key, h, False)["valid"])
    assert TRACES.count(False) == before
