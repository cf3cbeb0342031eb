"""ReW-PE-SAC (rew.txt, Algorithm 1): the meta-gradient of Eq. 5 against autodiff through the inner step and
finite differences, the weight network (initial weight, causality over depth, stored carries), set rollouts,
real action sequences, the exploration policy, weighted minibatches, and ReW / PMAC+ReW runs."""

from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

import mbrlax
from mbrlax.agents.sac import _gaussian, sac_init
from mbrlax.algos import dyna as dyna_mod
from mbrlax.buffers import Buffer, buffer_add, buffer_init
from mbrlax.config import ConfigError, ModelConfig, ReWConfig, SACConfig, config_from_dict, preset, validate
from mbrlax.models.ensemble import all_members, model_init
from mbrlax.nets import mlp_init
from mbrlax.run.metrics import read_metrics
from mbrlax.types import Transition
from mbrlax.usage import Compose, make_usage
from mbrlax.usage import rew as rew_mod
from mbrlax.usage.pmac import PMAC
from mbrlax.usage.rew import (ReW, explore_action, inner_step, meta_gradient, meta_gradient_autodiff, real_sequences,
                              sequence_weights, set_losses, set_rollout, weight_net_init, weight_step)

from conftest import check_pack_is_the_run_with_its_model_buffer_cleared, kill_9_during_training
from test_dyna import HOT_PATHS, TINY, TINY_FLAGS

OBS, ACT = 3, 2
D = 2 * OBS + ACT + 1
SIGMOID_3 = 1.0 / (1.0 + np.exp(-3.0))


RNG = np.random.default_rng(0)  # test data from NumPy: an un-jitted jax.random call compiles (~0.5 s each here)
init_weight_net = jax.jit(weight_net_init, static_argnums=(1, 2, 3))


@pytest.fixture(autouse=True)
def fresh_rng():
    """Each test's data is the same whichever tests ran before it."""
    global RNG
    RNG = np.random.default_rng(0)


def normal(*shape, dtype=np.float32):
    return jnp.asarray(RNG.normal(size=shape), dtype)


def random_head(params):
    """The weight network with random output weights (at init they are 0 and every weight is sigmoid(3))."""
    return {**params, "head": {"w": normal(*params["head"]["w"].shape), "b": params["head"]["b"]}}


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# --------------------------------------------------------------------------- the meta-gradient (Eqs. 1-5)


def test_meta_gradient_is_eq5_and_matches_autodiff_and_finite_differences():
    with jax.enable_x64(True):
        ks = jax.random.split(jax.random.key(0), 12)
        agent = jax.jit(sac_init, static_argnums=(1, 2, 3))(ks[0], OBS, ACT, SACConfig(hidden_size=8))
        theta = f64({"critic": agent.params["critic"], "actor": agent.params["actor"]})
        critic_pre = theta["critic"]
        H, N, S, NV, MU, ALPHA = 3, 4, 5, 6, 0.05, 0.3
        w_params = f64(random_head(init_weight_net(ks[1], D, 6, 3.0)))
        f = lambda *shape: normal(*shape, dtype=np.float64)
        x = f(H, N, D)
        mask = np.asarray(RNG.uniform(size=H * N) > 0.2, np.float64)
        per_set = mask / np.sum(mask)
        obs, action = f(H * N, OBS), np.tanh(f(H * N, ACT))
        targets = f(H * N, S)
        real_obs, real_act, real_y = f(NV, OBS), np.tanh(f(NV, ACT)), f(NV)

        weight_fn = lambda p: sequence_weights(p, x)[0].reshape(-1) * per_set
        losses_fn = lambda th: set_losses(th, critic_pre, obs, action, targets, ALPHA, ks[10])
        objective_fn = lambda th: jnp.mean(set_losses(th, critic_pre, real_obs, real_act, real_y[:, None], ALPHA, ks[11]))

        meta_j = lambda p: objective_fn(inner_step(theta, weight_fn(p), losses_fn, MU))
        directions = [jax.tree.map(lambda l: RNG.normal(size=l.shape), w_params) for _ in range(3)]
        eps = 1e-4

        @jax.jit
        def everything(w_params, theta):
            grad, j = meta_gradient(w_params, weight_fn, theta, losses_fn, objective_fn, MU)
            grad_ad, j_ad = meta_gradient_autodiff(w_params, weight_fn, theta, losses_fn, objective_fn, MU)
            # Eq. 5 assembled term by term: -mu sum_n (g_n . v) dw_n/dtheta_w.
            g = jax.jacrev(losses_fn)(theta)  # per-set gradients, leaves [N, ...]
            v = jax.grad(objective_fn)(inner_step(theta, weight_fn(w_params), losses_fn, MU))
            g_dot_v = sum(jnp.sum(gl * vl, axis=tuple(range(1, gl.ndim))) for gl, vl in
                          zip(jax.tree.leaves(g), jax.tree.leaves(v)))
            dw = jax.jacrev(weight_fn)(w_params)  # leaves [N, ...]
            grad_eq5 = jax.tree.map(lambda d: -MU * jnp.tensordot(g_dot_v, d, axes=1), dw)
            return grad, j, grad_ad, j_ad, grad_eq5

        grad, j, grad_ad, j_ad, grad_eq5 = everything(w_params, theta)
        # Central finite differences of J(theta'(theta_w)) along random directions.
        shift = lambda d, s: jax.tree.map(lambda p, dd: p + s * dd, w_params, d)
        meta_j = jax.jit(meta_j)
        fd = [(meta_j(shift(d, eps)) - meta_j(shift(d, -eps))) / (2 * eps) for d in directions]
        flat = lambda t: np.concatenate([np.ravel(l) for l in jax.tree.leaves(t)])
        assert float(j) == pytest.approx(float(j_ad), rel=1e-12)
        np.testing.assert_allclose(flat(grad), flat(grad_ad), rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(flat(grad), flat(grad_eq5), rtol=1e-9, atol=1e-15)
        for part in ("embed", "gru", "head"):  # the gradient reaches every layer of the weight network
            assert np.abs(flat(grad[part])).max() > 1e-8, part
        for d, f in zip(directions, fd):
            assert float(f) == pytest.approx(float(flat(grad) @ flat(d)), rel=1e-5, abs=1e-12)


def test_weight_network_adam_steps_are_not_cut_by_eps():
    """At Hopper's sizes (obs 11, act 3, H = 5, Ne = 52, Nv = 256, mu = 3e-4) Eq. 5's gradient on the GRU is of
    order 1e-9: Adam's first step must still move each entry by about the learning rate (|m / sqrt(v)| = 1),
    which optax's default eps = 1e-8 would cut to a fraction."""
    obs_dim, act_dim, r = 11, 3, ReWConfig()
    ks = jax.random.split(jax.random.key(0), 4)
    agent = jax.jit(sac_init, static_argnums=(1, 2, 3))(ks[0], obs_dim, act_dim, SACConfig())
    theta = {"critic": agent.params["critic"], "actor": agent.params["actor"]}
    d, n = 2 * obs_dim + act_dim + 1, r.horizon * r.meta_starts
    x = normal(r.horizon, r.meta_starts, d)
    obs, action, targets = normal(n, obs_dim), jnp.tanh(normal(n, act_dim)), 1.0 + 0.3 * normal(n, 7)
    nv = r.meta_batch
    real_obs, real_act, real_y = normal(nv, obs_dim), jnp.tanh(normal(nv, act_dim)), 1.0 + 0.3 * normal(nv)
    w = init_weight_net(ks[1], d, r.hidden, r.last_bias)
    w = {**w, "head": {"w": jnp.asarray(RNG.uniform(-0.03, 0.03, (r.hidden, 1)), jnp.float32), "b": w["head"]["b"]}}

    @jax.jit
    def grad(w):
        weight_fn = lambda p: sequence_weights(p, x)[0].reshape(-1) / n
        losses_fn = lambda th: set_losses(th, theta["critic"], obs, action, targets, 0.2, ks[2])
        objective_fn = lambda th: jnp.mean(set_losses(th, theta["critic"], real_obs, real_act, real_y[:, None], 0.2,
                                                      ks[3]))
        return meta_gradient(w, weight_fn, theta, losses_fn, objective_fn, r.inner_lr)[0]

    entries = lambda tree: np.abs(np.concatenate([np.ravel(v) for v in jax.tree.leaves(tree)]))
    g = grad(w)
    assert np.median(entries(g["gru"])) < 1e-7  # the regime this test is about
    opt = ReW(preset("HopperMBBL-v0", "rew")).w_opt
    moved = entries(opt.update(g, opt.init(w), w)[0]["gru"]) / r.weight_lr
    assert np.median(moved) > 0.98 and np.mean(moved > 0.9) > 0.99  # (optax's default eps 1e-8: median 0.27)


# --------------------------------------------------------------------------- the weight network (Fig. 1 right)


def test_initial_weights_are_sigmoid_3():
    params = init_weight_net(jax.random.key(0), D, 64, 3.0)
    x = normal(5, 100, D) * 10
    w, carries = jax.jit(sequence_weights)(params, x)
    np.testing.assert_allclose(w, SIGMOID_3, rtol=1e-6)
    assert float(SIGMOID_3) == pytest.approx(0.9526, abs=1e-4)
    r = ReW(tiny_rew(last_bias=2.0))
    u = jax.jit(r.init, static_argnums=(1, 2))(jax.random.key(0), 4, 1)
    u = {**u, "feat": normal(*u["feat"].shape), "carry": normal(*u["carry"].shape)}
    np.testing.assert_allclose(jax.jit(r.row_weights)(u, jnp.arange(50)), 1.0 / (1.0 + np.exp(-2.0)), rtol=1e-6)


def test_weights_are_causal_over_depth_and_one_step_from_the_stored_carry():
    H, N = 5, 7
    params = random_head(init_weight_net(jax.random.key(0), D, 16, 3.0))
    x = normal(H, N, D)
    w, carries = jax.jit(sequence_weights)(params, x)
    assert np.std(np.asarray(w)) > 1e-3  # input-dependent weights
    np.testing.assert_array_equal(carries[0], 0.0)
    for k in range(H - 1):  # the weight at depth k does not change when the features after k do
        later = jnp.concatenate([x[:k + 1], normal(H - k - 1, N, D)])
        w2, _ = jax.jit(sequence_weights)(params, later)
        np.testing.assert_array_equal(w2[:k + 1], w[:k + 1])
        assert np.all(np.abs(np.asarray(w2[k + 1] - w[k + 1])) > 0)
    step = jax.jit(weight_step)
    for k in range(H):  # one GRU step from the carry before depth k (what the model buffer stores) gives w_k
        np.testing.assert_allclose(step(params, carries[k], x[k])[1], w[k], rtol=1e-6)


# --------------------------------------------------------------------------- set rollouts and real sequences


def small_model(ensemble=4, seed=0):
    cfg = ModelConfig(hidden_size=16, num_layers=2, weight_decays=(0.0, 0.0, 0.0), ensemble_size=ensemble,
                      num_elites=2)
    m = jax.jit(model_init, static_argnums=(1, 2, 3))(jax.random.key(seed), OBS, ACT, cfg)
    # Larger variances than the -10 floor of an untrained model, so the samples spread.
    return m.replace(params={**m.params, "min_logvar": np.full(m.params["min_logvar"].shape, -3.0, np.float32)})


def test_set_rollout_sets_spread_and_next_input():
    model, B, M, H, N = small_model(), 4, 2, 3, 3000
    start, actions = normal(N, OBS), jnp.tanh(normal(H, N, ACT))
    reward_fn = lambda o, a, n: jnp.sum(n, -1) - jnp.sum(a**2, -1)
    done_fn = lambda o, a, n: n[:, 0] > 1.5
    sr = jax.jit(lambda m, s, a, k: set_rollout(m, s, a, k, H, H, done_fn, reward_fn, samples=M, full_sets=True))(
        model, start, actions, jax.random.key(3))
    S = M * B
    assert sr.set_next_obs.shape == (H, N, S, OBS) and sr.set_reward.shape == (H, N, S)
    np.testing.assert_array_equal(sr.transitions.action, actions)  # the given (real) actions
    np.testing.assert_array_equal(sr.transitions.obs[0], start)
    np.testing.assert_array_equal(sr.transitions.obs[1:], sr.transitions.next_obs[:-1])  # chosen = next input
    nxt, rew = np.asarray(sr.set_next_obs, np.float64), np.asarray(sr.set_reward, np.float64)
    np.testing.assert_allclose(rew, np.sum(nxt, -1) - np.sum(np.asarray(actions, np.float64) ** 2, -1)[..., None],
                               rtol=1e-4, atol=1e-4)  # the known reward on every sample
    spread = np.concatenate([rew.std(-1)[..., None], nxt.std(-2)], -1)
    np.testing.assert_allclose(sr.spread, spread, rtol=1e-3, atol=1e-5)
    # The next input is one of the set's samples, uniformly.
    hit = np.all(nxt == np.asarray(sr.transitions.next_obs)[:, :, None], axis=-1)  # [H, N, S]
    assert np.all(hit.sum(-1) == 1)
    counts = np.bincount(hit.argmax(-1).ravel(), minlength=S)
    assert chisquare(counts).pvalue > 1e-3
    # Sample s = m B + b comes from member b's Gaussian.
    mean, logvar = jax.jit(all_members)(model, start, actions[0])
    for b in range(B):
        z = (nxt[0, :, b::B] - np.asarray(start)[:, None] - np.asarray(mean[b, :, None, 1:])) / np.exp(
            0.5 * np.asarray(logvar[b, :, None, 1:]))
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    # Termination: a rollout stops after its chosen sample terminates.
    done = np.asarray(sr.transitions.done) > 0.5
    np.testing.assert_array_equal(sr.valid[0], True)
    np.testing.assert_array_equal(sr.valid[1:], np.cumprod(~done[:-1], axis=0).astype(bool))
    assert 0 < done[0].mean() < 1
    np.testing.assert_array_equal(sr.set_done, np.asarray(sr.set_next_obs[..., 0] > 1.5, np.float32))


def test_equal_samples_have_exactly_zero_spread():
    """A reward of (s, a) only (the MBBL rewards) is the same for every sample of a set: its spread must be 0, not
    float32's ulp noise (which the normalizer would blow up to a unit-variance feature for rewards ~100)."""
    model, H, N = small_model(ensemble=7), 3, 500  # sets of 7 samples, as on Hopper
    reward_fn = lambda o, a, n: 100.0 + 10.0 * jnp.sum(o, -1) - jnp.sum(a**2, -1)
    never = lambda o, a, n: jnp.zeros(o.shape[0], bool)
    sr = jax.jit(lambda m, s, a, k: set_rollout(m, s, a, k, H, H, never, reward_fn))(
        model, normal(N, OBS), jnp.tanh(normal(H, N, ACT)), jax.random.key(5))
    np.testing.assert_array_equal(sr.spread[..., 0], 0.0)
    assert np.all(np.asarray(sr.spread[..., 1:]) > 0)  # the next states do spread
    # XLA may fold the repeated reward above; on stored equal values a plain std is off by an ulp in about half the
    # sets, the spread about the first sample never.
    equal = np.repeat(RNG.normal(100, 30, size=(2000, 1)).astype(np.float32), 7, axis=1)
    assert np.mean(np.asarray(jnp.std(equal, axis=1)) > 0) > 0.2
    np.testing.assert_array_equal(rew_mod.sample_std(jnp.asarray(equal)), 0.0)
    varied = normal(2000, 7, 3)
    np.testing.assert_allclose(rew_mod.sample_std(varied), np.asarray(varied).std(1), rtol=1e-5)


def test_normalizer_ignores_non_finite_masked_rows():
    """Rows after a rollout's termination are masked out and may hold inf or nan: they must not reach the statistics."""
    x = normal(4, 50, D)
    mask = jnp.asarray(RNG.uniform(size=(4, 50)) < 0.7)
    rows = np.asarray(x)[np.asarray(mask)]
    norm0 = {"mean": jnp.zeros(D), "var": jnp.ones(D), "count": jnp.int32(0)}
    update = jax.jit(rew_mod.updated_norm, static_argnums=3)
    for fill in (jnp.inf, jnp.nan):
        got = update(norm0, jnp.where(mask[..., None], x, fill), mask, 0.1)
        np.testing.assert_allclose(got["mean"], rows.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["var"], rows.var(0), rtol=1e-4, atol=1e-6)


def test_real_sequences_follow_one_episode():
    rng = np.random.default_rng(0)
    cap, size, H = 400, 300, 4
    obs = rng.normal(size=(cap, OBS)).astype(np.float32)
    nxt = np.roll(obs, -1, axis=0).copy()  # a chain ...
    breaks = rng.choice(size, 25, replace=False)
    nxt[breaks] = rng.normal(size=(25, OBS))  # ... with episode ends (resets)
    done = np.zeros(cap, np.float32)
    terminal = rng.choice(np.setdiff1d(np.arange(size), breaks), 10, replace=False)
    done[terminal] = 1.0  # terminal transitions (the next row starts a new episode)
    act = rng.uniform(-1, 1, (cap, ACT)).astype(np.float32)
    data = Transition(jnp.asarray(obs), jnp.asarray(act), jnp.zeros(cap), jnp.asarray(nxt), jnp.asarray(done))
    real = Buffer(data=data, ptr=jnp.int32(size), size=jnp.int32(size))
    start, actions, linked = jax.jit(real_sequences, static_argnums=(2, 3))(real, jax.random.key(1), 5000, H)
    start, linked = np.asarray(start), np.asarray(linked)
    assert start.min() >= 0 and start.max() == size - H  # every start with H rows in the buffer
    np.testing.assert_array_equal(actions, act[start[None] + np.arange(H)[:, None]])
    cut = np.zeros(cap, bool)
    cut[breaks] = cut[terminal] = True
    for i, s in enumerate(start):
        expect = [not cut[s:s + k].any() for k in range(H)]
        np.testing.assert_array_equal(linked[:, i], expect)
    assert 0.2 < linked[-1].mean() < 0.9


def test_explore_action_is_the_policy_at_temperature_lambda():
    actor = jax.jit(mlp_init, static_argnums=1)(jax.random.key(0), (OBS, 8, 2 * ACT))
    actor[-1] = {"w": np.zeros((8, 2 * ACT), np.float32), "b": np.float32([0.1, -0.2, np.log(0.05), np.log(0.02)])}
    obs = np.zeros((40_000, OBS), np.float32)
    mean, log_std = jax.jit(_gaussian)(actor, obs[:1])
    explore = jax.jit(explore_action, static_argnums=3)
    for scale in (1.0, 10.0):
        u = np.arctanh(np.asarray(explore(actor, obs, jax.random.key(1), scale), np.float64))
        np.testing.assert_allclose(u.mean(0), mean[0], atol=0.01)
        np.testing.assert_allclose(u.std(0), np.sqrt(scale) * np.exp(log_std[0]), rtol=0.03)


# --------------------------------------------------------------------------- the strategy's state and batches


def tiny_rew(**rew):
    return preset("InvertedPendulum-v5", "rew", **{**TINY, "rew": ReWConfig(**rew)})


def test_after_rollout_keeps_features_at_the_rows_the_buffer_writes():
    cfg = tiny_rew(horizon=3)
    r = ReW(cfg)
    cap = r.imagined_capacity()
    u = jax.jit(r.init, static_argnums=(1, 2))(jax.random.key(0), 4, 1)
    u = {**u, "w": random_head(u["w"]), "ptr": jnp.int32(cap - 7), "size": jnp.int32(cap)}
    buf = jax.jit(buffer_init, static_argnums=(0, 1, 2))(4, 1, cap).replace(ptr=jnp.int32(cap - 7),
                                                                            size=jnp.int32(cap))
    H, N = 3, 40
    trs = Transition(normal(H, N, 4), jnp.tanh(normal(H, N, 1)), np.zeros((H, N), np.float32),
                     np.zeros((H, N, 4), np.float32), np.zeros((H, N), np.float32))
    valid = jnp.asarray(RNG.uniform(size=(H, N)) < 0.7)
    spread = jnp.abs(normal(H, N, 5))
    new = jax.jit(r.after_rollout)(u, None, None, trs, valid, spread, None, None)
    add = jax.jit(lambda b, t, v: buffer_add(b, jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), t),
                                             v.reshape(-1)))
    buf = add(buf, trs, valid)
    assert int(new["ptr"]) == int(buf.ptr) and int(new["size"]) == int(buf.size)
    written = (cap - 7 + np.arange(int(valid.sum()))) % cap  # wraps around
    np.testing.assert_array_equal(new["feat"][written, :4], buf.data.obs[written])
    x = np.concatenate([trs.obs, trs.action, spread], -1)
    _, carries = jax.jit(sequence_weights)(u["w"], rew_mod.normalize(new["norm"], x))
    v = np.asarray(valid).reshape(-1)
    np.testing.assert_allclose(new["carry"][written], np.asarray(carries).reshape(H * N, -1)[v], rtol=1e-6)
    np.testing.assert_array_equal(new["depth"][written], np.repeat(np.arange(H), N)[v])
    np.testing.assert_allclose(new["norm"]["mean"], np.asarray(x).reshape(H * N, -1)[v].mean(0), rtol=1e-5,
                               atol=1e-6)
    untouched = np.setdiff1d(np.arange(cap), written)
    np.testing.assert_array_equal(new["feat"][untouched], 0.0)


def test_minibatch_weights_real_rows_one_model_rows_their_weights():
    cfg = tiny_rew()
    cfg = replace(cfg, rollout=replace(cfg.rollout, real_ratio=0.25))
    r = ReW(cfg)
    cap = r.imagined_capacity()
    u = jax.jit(r.init, static_argnums=(1, 2))(jax.random.key(0), 4, 1)
    u = {**u, "w": random_head(u["w"]), "size": jnp.int32(cap), "feat": normal(*u["feat"].shape),
         "carry": normal(*u["carry"].shape)}
    init = jax.jit(buffer_init, static_argnums=(0, 1, 2))
    real = init(4, 1, 500).replace(size=jnp.int32(300), ptr=jnp.int32(300))
    imagined = init(4, 1, cap).replace(size=jnp.int32(cap))
    key = jax.random.key(4)
    b = jax.jit(r.agent_batch, static_argnums=3)(u, real, imagined, cap, key)
    real_idx, model_idx = jax.jit(r.agent_rows, static_argnums=2)(real, imagined, cap, key)
    n_real = cfg.sac.batch_size // 4
    np.testing.assert_array_equal(b.q_weight[:n_real], 1.0)
    np.testing.assert_allclose(b.q_weight[n_real:], jax.jit(r.row_weights)(u, model_idx), rtol=1e-6)
    assert np.std(np.asarray(b.q_weight[n_real:])) > 1e-3
    np.testing.assert_array_equal(b.pi_weight, b.q_weight)
    pe = ReW(tiny_rew(weights="none"))
    b = jax.jit(pe.agent_batch, static_argnums=3)(pe.init(jax.random.key(0), 4, 1), real, imagined, cap, key)
    np.testing.assert_array_equal(b.q_weight, 1.0)


def test_weight_metrics_read_the_newest_rows_counted_back_from_ptr():
    """After `mbrlax pack` the model buffer is empty but keeps its ptr, so new rows land at ptr, ptr + 1, ...: the
    weight columns must read the `size` rows before ptr (every depth present), not rows [0, size)."""
    cfg = tiny_rew(horizon=3)
    r = ReW(cfg)
    cap = r.imagined_capacity()
    u = jax.jit(r.init, static_argnums=(1, 2))(jax.random.key(0), 4, 1)
    ptr, size = 100, 300  # the rows before ptr wrap around the end
    rows = (ptr - size + np.arange(size)) % cap
    assert cap > size
    put = lambda col, v: col.at[rows].set(v)
    u = {**u, "w": random_head(u["w"]), "ptr": jnp.int32(ptr), "size": jnp.int32(size),
         "feat": put(u["feat"], normal(size, u["feat"].shape[1])),
         "carry": put(u["carry"], normal(size, cfg.rew.hidden)),
         "depth": put(u["depth"], np.tile(np.arange(3, dtype=np.int32), size // 3))}
    agent = jax.jit(sac_init, static_argnums=(1, 2, 3))(jax.random.key(1), 4, 1, cfg.sac)
    real = jax.jit(buffer_init, static_argnums=(0, 1, 2))(4, 1, 500).replace(size=jnp.int32(300), ptr=jnp.int32(300))
    m = jax.jit(r.epoch_metrics)(u, agent, real)
    w = np.asarray(jax.jit(r.row_weights)(u, jnp.asarray(rows)))
    depth = np.asarray(u["depth"])[rows]
    for k in range(3):
        assert float(m[f"rew/weight_depth_{k}"]) == pytest.approx(w[depth == k].mean(), abs=4 * float(w.std()) / 30)
    assert float(m["rew/weight_mean"]) == pytest.approx(w.mean(), abs=4 * float(w.std()) / 64)  # 4,096 draws
    assert float(m["rew/weight_min"]) >= w.min() - 1e-6


def test_rew_config_presets_errors_registry_and_help(capsys):
    cfg = preset("Hopper-v5", "rew")
    r = make_usage(cfg)
    assert isinstance(r, ReW) and r.max_horizon() == 5 and r.rollout_horizon(100) == 5
    assert r.imagined_capacity() == 400 * 250 * 4 * 5 and cfg.sac.updates_per_step == 20
    assert config_from_dict(cfg.to_dict()) == cfg
    combo = make_usage(preset("Hopper-v5", "pmac+rew"))
    assert isinstance(combo, Compose)
    assert isinstance(combo.owner["data"], PMAC) and combo.owner["starts"] is combo.owner["data"]
    assert isinstance(combo.owner["rollouts"], ReW) and combo.owner["agent"] is combo.owner["rollouts"]
    assert "rew/weight_depth_4" in combo.metric_columns
    for bad, field in ((dict(weights="soft"), "rew.weights"), (dict(horizon=0), "rew.horizon"),
                       (dict(explore_scale=0.0), "rew.explore_scale"), (dict(corrupt_fraction=2.0), "rew.corrupt_fraction"),
                       (dict(real_updates=-1), "rew.real_updates")):
        with pytest.raises(ConfigError, match=field):
            validate(tiny_rew(**bad))
    with pytest.raises(ConfigError, match="init_steps"):
        validate(replace(tiny_rew(horizon=10), init_steps=5))
    from mbrlax.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--algo", "rew", "--help"])
    out = capsys.readouterr().out
    assert "--rew.weights" in out and "PE-SAC" in out and "--rew.explore-scale" in out


def test_real_updates_and_meta_every():
    cfg = tiny_rew(real_updates=2)
    r = ReW(cfg)
    state = jax.jit(dyna_mod.init_run_state, static_argnums=(0, 1, 2, 3))(cfg, 4, 1, r)
    data = state.real.data.replace(obs=normal(*state.real.data.obs.shape), next_obs=normal(*state.real.data.obs.shape))
    state = state.replace(real=Buffer(data=data, ptr=jnp.int32(200), size=jnp.int32(200)))
    u, agent = jax.jit(r.after_updates)(state.usage, state, jax.random.key(0))
    assert not np.allclose(agent.params["critic"][0]["w"], state.agent.params["critic"][0]["w"])
    u0, agent0 = ReW(tiny_rew()).after_updates(state.usage, state, jax.random.key(0))
    assert agent0 is state.agent
    every2 = ReW(tiny_rew(meta_every=2))  # a meta step only at even real-buffer sizes
    meta = jax.jit(every2.before_updates)
    for size, moved in ((200, True), (201, False)):
        s = state.replace(real=state.real.replace(size=jnp.int32(size), ptr=jnp.int32(size)))
        u = meta(state.usage, s, jax.random.key(1))
        assert np.any(np.asarray(u["w"]["head"]["w"]) != 0) == moved
        assert np.isfinite(float(u["meta_loss"])) == moved


# --------------------------------------------------------------------------- runs


def rew_columns(horizon):
    return ["rew/weight_mean", "rew/weight_min", *(f"rew/weight_depth_{k}" for k in range(horizon)),
            "rew/meta_loss", "rew/real_q_loss"]


def test_pmac_rew_run_metrics_traces_and_aligned_state(tmp_path):
    dyna_mod.TRACE_COUNTS.clear()
    rew_mod.TRACE_COUNTS.clear()
    cfg = preset("InvertedPendulum-v5", "pmac+rew", **{**TINY, "out": str(tmp_path / "run"),
                                                        "rew": ReWConfig(horizon=3, meta_starts=8, meta_batch=32)})
    run = mbrlax.train(cfg)  # 400 steps, 100 exploration, G = 2, a meta step per learning step
    for name in HOT_PATHS:
        assert dyna_mod.TRACE_COUNTS.get(name) == 1, (name, dict(dyna_mod.TRACE_COUNTS))
    assert rew_mod.TRACE_COUNTS["epoch_metrics"] == 1
    m = read_metrics(run.run_dir)
    for col in rew_columns(3):
        assert np.all(np.isfinite(m[col][1:])), col
    assert np.isnan(m["rew/weight_mean"][0]) and np.isfinite(m["rew/real_q_loss"][0])  # no model rows yet
    assert np.all((m["rew/weight_min"][1:] > 0) & (m["rew/weight_mean"][1:] < 1))
    before = m["time/before_updates"]  # the meta steps' own phase: timed from the first learning step on
    assert np.isnan(before[0]) and np.all(before[1:] > 0) and np.all(np.diff(before[1:]) > 0)
    pmac_u, rew_u = run.state.usage
    np.testing.assert_allclose(float(jnp.sum(pmac_u["mass"])), 1.0, rtol=1e-5)
    assert int(pmac_u["rounds"]) == 3
    imagined = run.state.imagined
    assert int(rew_u["ptr"]) == int(imagined.ptr) and int(rew_u["size"]) == int(imagined.size) > 0
    n = int(imagined.size)
    np.testing.assert_array_equal(rew_u["feat"][:n, :4], imagined.data.obs[:n])  # features beside their rows
    np.testing.assert_array_equal(rew_u["feat"][:n, 4:5], imagined.data.action[:n])
    assert float(jnp.abs(rew_u["w"]["head"]["w"]).max()) > 0  # the meta steps moved the weight network


def test_rew_resume_after_kill_9(tmp_path):
    out = tmp_path / "killed"
    flags = TINY_FLAGS + ["--algo", "rew", "--rew.horizon", "3", "--rew.meta-starts", "8", "--rew.meta-batch", "32",
                          "--total-steps", "400"]
    kill_9_during_training(flags, out, rows=2)
    run = mbrlax.resume(out)
    m = read_metrics(out)
    np.testing.assert_array_equal(m["env_steps"], np.arange(100, 401, 100))  # no gap, no duplicate
    for col in rew_columns(3):
        assert np.all(np.isfinite(m[col][1:])), col
    assert int(run.state.usage["ptr"]) == int(run.state.imagined.ptr)
    np.testing.assert_array_equal(m["agent/updates"], 2 * np.maximum(m["env_steps"] - 100, 0))


def test_pmac_rew_pack_clears_the_features_of_the_dropped_model_rows(tmp_path):
    cfg = preset("InvertedPendulum-v5", "pmac+rew", **{**TINY, "total_steps": 400, "out": str(tmp_path / "run"),
                                                        "rew": ReWConfig(horizon=3, meta_starts=8, meta_batch=32)})
    mbrlax.train(cfg, stop_at=200)
    rew_leaf = lambda name: f"state.usage[1]['{name}']"  # (PMAC's slot, then ReW's)
    packed, _ = check_pack_is_the_run_with_its_model_buffer_cleared(
        Path(cfg.out), tmp_path, {rew_leaf("feat"): 0, rew_leaf("carry"): 0, rew_leaf("depth"): 0, rew_leaf("size"): 0})
    rew_u = packed.state.usage[1]
    assert int(rew_u["ptr"]) == int(packed.state.imagined.ptr) and int(rew_u["size"]) == int(packed.state.imagined.size)
