"""Tests for mbrlax.agents.sac against NumPy references of the SAC equations
(tanh-Gaussian log-density, soft Bellman target, losses), a Python loop for the scanned
updates, and the sign of the temperature update."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbrlax.agents.sac import make_sac_update, sac_init, sac_loss, sample_action
from mbrlax.config import SACConfig
from mbrlax.types import Batch, Transition

OBS, ACT = 3, 2
CFG = SACConfig(hidden_size=16, num_layers=1, batch_size=8, gamma=0.9, tau=0.05, lr=1e-2, updates_per_step=4)


# ----------------------------------------------------------------------------- NumPy references


def np_mlp(layers, x):
    """ReLU hidden layers, linear output (float64)."""
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def np_gaussian(actor, obs):
    out = np_mlp(actor, obs)
    d = out.shape[-1] // 2
    return out[:, :d], np.clip(out[:, d:], -20.0, 2.0)


def np_log_one_minus_tanh2(u):
    """log(1 - tanh(u)^2) = log(sech(u)^2) = log 4 - 2 log(e^u + e^-u), overflow-free."""
    a = np.abs(u)
    return math.log(4.0) - 2.0 * (a + np.log1p(np.exp(-2.0 * a)))


def np_tanh_gaussian_logp(u, mean, log_std):
    gauss = -0.5 * ((u - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return np.sum(gauss - np_log_one_minus_tanh2(u), axis=-1)


def np_sample(actor, obs, key):
    """Reparameterized sample with the noise jax.random.normal(key, mean.shape)."""
    mean, log_std = np_gaussian(actor, obs)
    eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    u = mean + np.exp(log_std) * eps
    return np.tanh(u), np_tanh_gaussian_logp(u, mean, log_std)


def np_q(critic, obs, act):
    x = np.concatenate([obs, act], axis=-1)
    return np.stack([np_mlp([{k: v[i] for k, v in layer.items()} for layer in critic], x)[:, 0] for i in range(2)])


def np_batch(b):
    return {k: np.asarray(v, np.float64) for k, v in vars(b).items()}


# ----------------------------------------------------------------------------- fixtures


_sac_init = jax.jit(sac_init, static_argnums=(1, 2, 3))  # one compile instead of one per layer shape


def make_state(seed=0, cfg=CFG):
    state = _sac_init(jax.random.key(seed), OBS, ACT, cfg)
    # Target critic different from the online one, and alpha != 1, so both matter.
    rng = np.random.default_rng(seed + 100)
    target = jax.tree.map(lambda a: a + jnp.asarray(0.1 * rng.normal(size=a.shape), jnp.float32), state.target_critic)
    params = dict(state.params, log_alpha=jnp.log(jnp.float32(0.3)))
    return state.replace(params=params, target_critic=target)


def make_batch(seed, b=8):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    done = np.zeros(b, np.float32)
    done[::3] = 1.0
    return Batch(
        obs=f(b, OBS), action=jnp.asarray(rng.uniform(-0.99, 0.99, (b, ACT)), jnp.float32), reward=f(b),
        next_obs=f(b, OBS), done=jnp.asarray(done), q_weight=jnp.asarray(rng.uniform(0.2, 2.0, b), jnp.float32),
    )


def tree_allclose(a, b, **kw):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


TARGET_ENTROPY = -float(ACT)  # the default: -action_dim
LOSS = jax.jit(sac_loss, static_argnums=(4, 5))


# ----------------------------------------------------------------------------- sample_action


def test_sample_action_logp_is_tanh_gaussian_density():
    """u recovered from the action by arctanh (no assumption on how the noise is drawn)."""
    actor = make_state(1).params["actor"]
    obs = np.random.default_rng(0).normal(size=(512, OBS)).astype(np.float32)
    action, logp = jax.jit(sample_action)(actor, jnp.asarray(obs), jax.random.key(3))
    action, logp = np.asarray(action, np.float64), np.asarray(logp, np.float64)
    assert action.shape == (512, ACT) and logp.shape == (512,)
    assert np.all(np.abs(action) <= 1.0)
    safe = np.all(np.abs(action) < 0.995, axis=-1)
    assert safe.mean() > 0.8
    mean, log_std = np_gaussian(actor, obs)
    u = np.arctanh(action)
    ref = np_tanh_gaussian_logp(u, mean, log_std)
    np.testing.assert_allclose(logp[safe], ref[safe], atol=2e-3, rtol=1e-4)
    # Actions are really samples (not the mean action).
    assert np.std(u - mean) > 0.1


def test_sample_action_clips_log_std_and_is_stable_when_saturated():
    """Constant outputs (zero last-layer weights): means (0, 20, 0.5), log-stds (-22, 0, 3) ->
    clipped to (-20, 0, 2); tanh(20 + eps) saturates to 1 in float32 but the log-prob must not."""
    rng = np.random.default_rng(1)
    actor = [
        {"w": jnp.asarray(rng.normal(size=(OBS, 8)), jnp.float32), "b": jnp.zeros(8)},
        {"w": jnp.zeros((8, 6)), "b": jnp.asarray([0.0, 20.0, 0.5, -22.0, 0.0, 3.0])},
    ]
    obs = jnp.asarray(rng.normal(size=(64, OBS)), jnp.float32)
    key = jax.random.key(9)
    action, logp = jax.jit(sample_action)(actor, obs, key)
    assert np.all(np.isfinite(np.asarray(logp)))
    ref_action, ref_logp = np_sample(actor, obs, key)
    np.testing.assert_allclose(np.asarray(action), ref_action, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logp), ref_logp, rtol=1e-5, atol=1e-3)
    assert np.all(np.asarray(action)[:, 1] == 1.0)  # saturated, as the test intends


# ----------------------------------------------------------------------------- sac_loss


def test_q_target_is_soft_bellman_backup():
    """Per-sample target recovered from the critic's last-bias gradient with one-hot weights:
    d loss / d b_i = mean_j w_j (Q_i(s_j, a_j) - y_j), so w = B e_j gives Q_i(s_j, a_j) - y_j."""
    state = make_state(2)
    batch = make_batch(3)
    b = batch.reward.shape[0]
    key = jax.random.key(4)

    def bias_grads(w):
        g = jax.grad(lambda p: sac_loss(p, state.target_critic, batch.replace(q_weight=w), key, CFG, TARGET_ENTROPY)[0])(
            state.params
        )
        return g["critic"][-1]["b"][:, 0]  # [2]

    grads = np.asarray(jax.jit(jax.vmap(bias_grads))(b * jnp.eye(b)), np.float64)  # [B, 2]
    nb = np_batch(batch)
    q = np_q(state.params["critic"], nb["obs"], nb["action"])  # [2, B]
    implied = q.T - grads  # [B, 2]: the target seen by each critic

    # Hand-computed: y = r + gamma (1 - done) (min_i Qtarg_i(s', a') - alpha log pi(a'|s')).
    _, k_next = jax.random.split(key)
    a_next, logp_next = np_sample(state.params["actor"], nb["next_obs"], k_next)
    q_next = np_q(state.target_critic, nb["next_obs"], a_next).min(axis=0)
    alpha = 0.3
    y = nb["reward"] + CFG.gamma * (1 - nb["done"]) * (q_next - alpha * logp_next)
    np.testing.assert_allclose(implied[:, 0], y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(implied[:, 1], y, rtol=1e-4, atol=1e-4)
    # Terminal samples: the target is the reward alone.
    np.testing.assert_allclose(implied[nb["done"] == 1, 0], nb["reward"][nb["done"] == 1], atol=1e-4)
    # The target uses the target critic, not the online one.
    y_online = nb["reward"] + CFG.gamma * (1 - nb["done"]) * (
        np_q(state.params["critic"], nb["next_obs"], a_next).min(axis=0) - alpha * logp_next
    )
    assert np.max(np.abs(y_online - y)) > 1e-2


def test_loss_metrics_match_numpy():
    state = make_state(5)
    batch = make_batch(6)
    key = jax.random.key(7)
    loss, m = LOSS(state.params, state.target_critic, batch, key, CFG, TARGET_ENTROPY)
    nb = np_batch(batch)
    k_pi, k_next = jax.random.split(key)
    alpha = 0.3
    a_next, logp_next = np_sample(state.params["actor"], nb["next_obs"], k_next)
    y = nb["reward"] + CFG.gamma * (1 - nb["done"]) * (
        np_q(state.target_critic, nb["next_obs"], a_next).min(axis=0) - alpha * logp_next
    )
    q = np_q(state.params["critic"], nb["obs"], nb["action"])
    q_loss = 0.5 * np.sum(np.mean(nb["q_weight"] * (q - y) ** 2, axis=1))
    a_pi, logp_pi = np_sample(state.params["actor"], nb["obs"], k_pi)
    pi_loss = np.mean(nb["q_weight"] * (alpha * logp_pi - np_q(state.params["critic"], nb["obs"], a_pi).min(axis=0)))
    alpha_loss = -math.log(alpha) * np.mean(logp_pi + TARGET_ENTROPY)
    np.testing.assert_allclose(float(m["sac/q_loss"]), q_loss, rtol=1e-4)
    np.testing.assert_allclose(float(m["sac/pi_loss"]), pi_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(m["sac/entropy"]), -np.mean(logp_pi), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), q_loss + pi_loss + alpha_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(m["sac/alpha"]), alpha, rtol=1e-6)


def test_zero_weight_sample_does_not_affect_actor_and_critic_gradients():
    """The temperature loss is unweighted by design (ReW trains alpha on unweighted data), so
    only the actor and critic gradients are checked for independence."""
    state = make_state(8)
    batch = make_batch(9)
    j = 3
    weight = batch.q_weight.at[j].set(0.0)
    rng = np.random.default_rng(10)
    changed = batch.replace(
        obs=batch.obs.at[j].set(jnp.asarray(rng.normal(size=OBS) * 5, jnp.float32)),
        action=batch.action.at[j].set(jnp.asarray(rng.uniform(-1, 1, ACT), jnp.float32)),
        reward=batch.reward.at[j].set(100.0),
        next_obs=batch.next_obs.at[j].set(jnp.asarray(rng.normal(size=OBS) * 5, jnp.float32)),
        done=batch.done.at[j].set(1.0 - batch.done[j]),
    )
    grad = jax.jit(jax.grad(lambda p, bt: sac_loss(p, state.target_critic, bt, jax.random.key(11), CFG, TARGET_ENTROPY)[0]))
    g1 = grad(state.params, batch.replace(q_weight=weight))
    g2 = grad(state.params, changed.replace(q_weight=weight))
    for part in ("actor", "critic"):
        tree_allclose(g1[part], g2[part], rtol=1e-5, atol=1e-7)
    # Positive control: with weight 1 on that sample the gradients do change.
    g3 = grad(state.params, batch.replace(q_weight=weight.at[j].set(1.0)))
    g4 = grad(state.params, changed.replace(q_weight=weight.at[j].set(1.0)))
    for part in ("actor", "critic"):
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g3[part]), jax.tree.leaves(g4[part])))
        assert diff > 1e-3, part


# ----------------------------------------------------------------------------- updates


def _data(n=50, seed=12):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return Transition(obs=f(n, OBS), action=jnp.asarray(rng.uniform(-1, 1, (n, ACT)), jnp.float32), reward=f(n),
                      next_obs=f(n, OBS), done=jnp.asarray(rng.random(n) < 0.2, jnp.float32))


def sample_batch(data, key):
    k_idx, k_w = jax.random.split(key)
    idx = jax.random.randint(k_idx, (CFG.batch_size,), 0, data.reward.shape[0])
    rows = jax.tree.map(lambda d: d[idx], data)
    return Batch(**vars(rows), q_weight=jax.random.uniform(k_w, (CFG.batch_size,), minval=0.5, maxval=1.5))


UPDATE = jax.jit(make_sac_update(CFG, ACT, sample_batch))


def test_scanned_updates_equal_python_loop():
    """G updates in lax.scan == G single updates in a Python loop (same per-update keys): Adam on
    the joint loss, then Polyak target update with tau after the parameter step."""
    state = make_state(13)
    data = _data()
    key = jax.random.key(14)
    new, metrics = UPDATE(state, data, key)

    opt = optax.adam(CFG.lr)

    @jax.jit
    def one(s, k):
        k_batch, k_loss = jax.random.split(k)
        batch = sample_batch(data, k_batch)
        grads, m = jax.grad(sac_loss, has_aux=True)(s.params, s.target_critic, batch, k_loss, CFG, TARGET_ENTROPY)
        upd, opt_state = opt.update(grads, s.opt_state, s.params)
        params = optax.apply_updates(s.params, upd)
        target = jax.tree.map(lambda p, t: CFG.tau * p + (1 - CFG.tau) * t, params["critic"], s.target_critic)
        return s.replace(params=params, target_critic=target, opt_state=opt_state), m

    ref, ms = state, []
    for k in jax.random.split(key, CFG.updates_per_step):
        ref, m = one(ref, k)
        ms.append(m)
    tree_allclose(new.params, ref.params, rtol=1e-4, atol=1e-5)
    tree_allclose(new.target_critic, ref.target_critic, rtol=1e-4, atol=1e-5)
    for name in ("sac/q_loss", "sac/pi_loss", "sac/alpha", "sac/entropy"):
        np.testing.assert_allclose(float(metrics[name]), np.mean([float(m[name]) for m in ms]), rtol=1e-4, atol=1e-5)
    assert float(metrics["sac/finite"]) == 1.0
    # G updates really happened (not one): the actor moved further than after one step.
    one_step, _ = one(state, jax.random.split(key, CFG.updates_per_step)[0])
    d_one = np.abs(np.asarray(one_step.params["log_alpha"]) - np.asarray(state.params["log_alpha"]))
    d_all = np.abs(np.asarray(new.params["log_alpha"]) - np.asarray(state.params["log_alpha"]))
    assert d_all > 2 * d_one > 0


def test_sac_state_has_no_weak_types():
    state = _sac_init(jax.random.key(0), OBS, ACT, CFG)
    assert not [leaf for leaf in jax.tree.leaves(state) if getattr(leaf, "weak_type", False)]


@pytest.mark.parametrize("entropy_above_target", [True, False])
def test_alpha_moves_toward_entropy_target(entropy_above_target):
    """Entropy above the target (-2) -> alpha decreases; below -> increases. The policy's entropy
    is set through the actor's log-std bias: std 1 gives about 2 (1.42 - 0.87) > -2 (pre-tanh
    entropy plus E log(1 - tanh^2)); log-std -10 gives about 2 (-10 + 1.42) << -2."""
    state = make_state(15)
    actor = [dict(layer) for layer in state.params["actor"]]
    actor[-1]["w"] = actor[-1]["w"].at[:, ACT:].set(0.0)
    actor[-1]["b"] = actor[-1]["b"].at[ACT:].set(0.0 if entropy_above_target else -10.0)
    state = state.replace(params=dict(state.params, actor=actor))
    new, metrics = UPDATE(state, _data(), jax.random.key(16))
    assert (float(metrics["sac/entropy"]) > TARGET_ENTROPY) == entropy_above_target  # precondition
    step = float(new.params["log_alpha"] - state.params["log_alpha"])
    # Adam moves log_alpha by about lr per update, all G updates in the same direction.
    if entropy_above_target:
        assert step < -0.5 * CFG.updates_per_step * CFG.lr
    else:
        assert step > 0.5 * CFG.updates_per_step * CFG.lr


def test_separate_q_and_policy_weights():
    """Batch.pi_weight weights only the policy loss and Batch.q_weight only the Q loss (NumPy oracle)."""
    state, batch, key = make_state(5), make_batch(6), jax.random.key(7)
    pi_w = jnp.asarray(np.random.default_rng(3).uniform(0.0, 3.0, batch.reward.shape[0]), jnp.float32)
    _, m_same = LOSS(state.params, state.target_critic, batch, key, CFG, TARGET_ENTROPY)
    _, m_split = LOSS(state.params, state.target_critic, batch.replace(pi_weight=pi_w), key, CFG, TARGET_ENTROPY)
    np.testing.assert_allclose(float(m_split["sac/q_loss"]), float(m_same["sac/q_loss"]), rtol=1e-6)
    nb = np_batch(batch)
    a_pi, logp_pi = np_sample(state.params["actor"], nb["obs"], jax.random.split(key)[0])
    per = 0.3 * logp_pi - np_q(state.params["critic"], nb["obs"], a_pi).min(axis=0)
    np.testing.assert_allclose(float(m_split["sac/pi_loss"]), np.mean(np.asarray(pi_w) * per), rtol=1e-4, atol=1e-5)
    assert abs(float(m_split["sac/pi_loss"]) - float(m_same["sac/pi_loss"])) > 1e-3
