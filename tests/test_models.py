"""Tests for mbrlax.models: the probabilistic ensemble against NumPy references of the
MBPO equations (REFERENCE.md, MBPO section), finite differences for the gradient, and
the trainer on synthetic data with a known noise level."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.config import ModelConfig
from mbrlax.models.ensemble import (
    all_members,
    forward,
    model_init,
    model_inputs,
    model_targets,
    nll_loss,
    sample_step,
)
from mbrlax.models.trainer import ModelTrainer, input_normalizer, uniform_bootstrap, weighted_bootstrap

# Small widths for behavioural tests, but the default depth (4 hidden layers -> 5 layers),
# so the default per-layer weight decays line up one to one.
SMALL = ModelConfig(ensemble_size=5, num_elites=3, hidden_size=16)


# ----------------------------------------------------------------------------- NumPy references


def softplus(x):
    return np.logaddexp(0.0, x)


def silu(x):
    return x / (1.0 + np.exp(-x))


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@np.errstate(invalid="ignore")  # NaN members (sampling tests) stay NaN without warnings
def np_forward(params, norm_mean, norm_std, x):
    """Per member: normalize, SiLU MLP, split mean / raw log-var, soft bounds."""
    p = f64(params)
    x = np.asarray(x, np.float64)
    mx, mn = p["max_logvar"], p["min_logvar"]
    means, lvs = [], []
    for i in range(x.shape[0]):
        h = (x[i] - np.asarray(norm_mean, np.float64)) / np.asarray(norm_std, np.float64)
        for layer in p["layers"][:-1]:
            h = silu(h @ layer["w"][i] + layer["b"][i])
        h = h @ p["layers"][-1]["w"][i] + p["layers"][-1]["b"][i]
        d = h.shape[-1] // 2
        mu, raw = h[:, :d], h[:, d:]
        lv = mx - softplus(mx - raw)
        lv = mn + softplus(lv - mn)
        means.append(mu)
        lvs.append(lv)
    return np.stack(means), np.stack(lvs)


def np_members(model, x):
    """np_forward of a ModelState on inputs [B, in] shared by every member: (means, log-vars) [E, B, out]."""
    e = model.params["layers"][0]["w"].shape[0]
    return np_forward(model.params, model.norm_mean, model.norm_std, np.broadcast_to(x, (e,) + np.shape(x)))


def np_nll(params, norm_mean, norm_std, x, y, w, decays):
    p = f64(params)
    mu, lv = np_forward(params, norm_mean, norm_std, x)
    y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
    per_sample = np.mean((mu - y) ** 2 * np.exp(-lv) + lv, axis=-1)
    per_member = np.sum(per_sample * w, axis=1) / np.sum(w, axis=1)
    bounds = 0.01 * (p["max_logvar"].sum() - p["min_logvar"].sum())
    assert len(decays) == len(p["layers"])
    decay = sum(c * 0.5 * np.sum(layer["w"] ** 2) for c, layer in zip(decays, p["layers"]))
    return per_member.sum() + bounds + decay


def tree_allclose(a, b, **kw):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


# ----------------------------------------------------------------------------- fixtures


def random_model(seed=0, obs_dim=3, act_dim=2, cfg=SMALL):
    """A model with non-default normalizer, log-var bounds and outputs that cross both bounds."""
    rng = np.random.default_rng(seed)
    state = model_init(jax.random.key(seed), obs_dim, act_dim, cfg)
    out = obs_dim + 1
    # Larger weights (outputs vary with the inputs) and raw log-var offsets from -14 to +4,
    # so both soft bounds are exercised.
    layers = [{"w": layer["w"] * 3.0, "b": layer["b"]} for layer in state.params["layers"]]
    last = dict(layers[-1])
    offset = np.concatenate([rng.normal(size=out), np.linspace(-14.0, 4.0, out)])
    last["b"] = last["b"] + jnp.asarray(offset, jnp.float32)
    params = {
        "layers": layers[:-1] + [last],
        "max_logvar": jnp.asarray(rng.uniform(0.0, 1.0, out), jnp.float32),
        "min_logvar": jnp.asarray(rng.uniform(-9.0, -5.0, out), jnp.float32),
    }
    in_dim = obs_dim + act_dim
    return state.replace(
        params=params,
        norm_mean=jnp.asarray(rng.normal(size=in_dim), jnp.float32),
        norm_std=jnp.asarray(rng.uniform(0.5, 2.0, in_dim), jnp.float32),
    )


# ----------------------------------------------------------------------------- forward / loss


def test_forward_matches_numpy_reference():
    state = random_model()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SMALL.ensemble_size, 64, 5)).astype(np.float32) * 2.0
    mean, lv = jax.jit(forward)(state.params, state.norm_mean, state.norm_std, jnp.asarray(x))
    ref_mean, ref_lv = np_forward(state.params, state.norm_mean, state.norm_std, x)
    assert mean.shape == lv.shape == (SMALL.ensemble_size, 64, 4)
    np.testing.assert_allclose(np.asarray(mean), ref_mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(lv), ref_lv, rtol=1e-4, atol=1e-4)
    # The bounds were really exercised (else the soft-bound part of the check would be vacuous).
    mx, mn = np.asarray(state.params["max_logvar"]), np.asarray(state.params["min_logvar"])
    assert np.all(ref_lv <= mx + 1e-6) and np.all(ref_lv >= mn - 1e-6)
    assert np.any(ref_lv > mx - 0.5) and np.any(ref_lv < mn + 0.5)


def _loss_inputs(seed=2, batch=32):
    rng = np.random.default_rng(seed)
    e = SMALL.ensemble_size
    x = rng.normal(size=(e, batch, 5)).astype(np.float32)
    y = rng.normal(size=(e, batch, 4)).astype(np.float32)
    w = rng.uniform(0.1, 2.0, size=(e, batch)).astype(np.float32)
    return x, y, w


def test_nll_loss_matches_numpy_reference():
    state = random_model()
    x, y, w = _loss_inputs()
    decays = SMALL.weight_decays
    loss = jax.jit(nll_loss, static_argnums=6)(
        state.params, state.norm_mean, state.norm_std, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w), decays
    )
    ref = np_nll(state.params, state.norm_mean, state.norm_std, x, y, w, decays)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    # The decay and bound terms separately, in float64 (they are small next to the data term):
    # per layer c_l * 0.5 * ||W_l||^2 (weights only), and 0.01 (sum max - sum min).
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), state.params)
        args = [jnp.asarray(np.asarray(a), jnp.float64) for a in (state.norm_mean, state.norm_std, x, y, w)]
        zero = (0.0,) * len(decays)
        loss64 = jax.jit(nll_loss, static_argnums=6)
        only_decay = float(loss64(p, *args, decays)) - float(loss64(p, *args, zero))
        ref_decay = sum(c * 0.5 * np.sum(np.asarray(layer["w"], np.float64) ** 2)
                        for c, layer in zip(decays, state.params["layers"]))
        np.testing.assert_allclose(only_decay, ref_decay, rtol=1e-7)
        # The whole loss in float64, with other log-var bounds.
        p2 = dict(p, max_logvar=p["max_logvar"] + 1.0, min_logvar=p["min_logvar"] - 2.0)
        ref2 = np_nll(p2, *args[:2], x, y, w, decays)
        np.testing.assert_allclose(float(loss64(p2, *args, decays)), ref2, rtol=1e-10)


def test_nll_zero_weight_samples_do_not_matter():
    state = random_model()
    x, y, w = _loss_inputs()
    w[:, ::3] = 0.0
    rng = np.random.default_rng(3)
    x2, y2 = x.copy(), y.copy()
    x2[:, ::3] = rng.normal(size=x2[:, ::3].shape) * 50.0
    y2[:, ::3] = rng.normal(size=y2[:, ::3].shape) * 50.0
    f = jax.jit(jax.value_and_grad(nll_loss), static_argnums=6)
    args = (state.norm_mean, state.norm_std)
    l1, g1 = f(state.params, *args, jnp.asarray(x), jnp.asarray(y), jnp.asarray(w), SMALL.weight_decays)
    l2, g2 = f(state.params, *args, jnp.asarray(x2), jnp.asarray(y2), jnp.asarray(w), SMALL.weight_decays)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-6)
    tree_allclose(g1, g2, rtol=1e-5, atol=1e-7)
    # Positive control: with weight on those rows the loss does change.
    l3, _ = f(state.params, *args, jnp.asarray(x2), jnp.asarray(y2), jnp.ones_like(jnp.asarray(w)), SMALL.weight_decays)
    l4, _ = f(state.params, *args, jnp.asarray(x), jnp.asarray(y), jnp.ones_like(jnp.asarray(w)), SMALL.weight_decays)
    assert abs(float(l3) - float(l4)) > 1.0


def test_nll_gradient_matches_central_differences():
    state = random_model()
    x, y, w = _loss_inputs(batch=16)
    decays = SMALL.weight_decays
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), t)
        p = to64(state.params)
        nm, ns, x64, y64, w64 = to64((state.norm_mean, state.norm_std, x, y, w))
        f = jax.jit(lambda q: nll_loss(q, nm, ns, x64, y64, w64, decays))
        g = jax.jit(jax.grad(f))(p)
        assert jax.tree.leaves(g)[0].dtype == jnp.float64
        rng = np.random.default_rng(4)
        directions = [jax.tree.map(lambda a: rng.normal(size=a.shape), p) for _ in range(3)]
        # One direction only along the log-var bounds (their gradient includes the 0.01 terms).
        only_bounds = jax.tree.map(lambda a: np.zeros(a.shape), p)
        only_bounds["max_logvar"] = rng.normal(size=p["max_logvar"].shape)
        only_bounds["min_logvar"] = rng.normal(size=p["min_logvar"].shape)
        directions.append(only_bounds)
        eps = 1e-6
        p_np, g_np = f64(p), f64(g)
        for d in directions:
            plus = jax.tree.map(lambda a, b: a + eps * b, p_np, d)
            minus = jax.tree.map(lambda a, b: a - eps * b, p_np, d)
            fd = (float(f(plus)) - float(f(minus))) / (2 * eps)
            an = sum(float(np.vdot(a, b)) for a, b in zip(jax.tree.leaves(g_np), jax.tree.leaves(d)))
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


# ----------------------------------------------------------------------------- init


def test_init_default_sizes():
    """Default model (REFERENCE.md): 4x200 SiLU, truncated normal with std 1/(2 sqrt(fan_in)).

    As in MBPO's TF code (tf.truncated_normal(stddev=s)), s is the std of the underlying
    normal truncated at 2 s, so the empirical std is s * sqrt(1 - 4 phi(2) / (2 Phi(2) - 1)).
    """
    cfg = ModelConfig()
    obs_dim, act_dim = 11, 3
    state = model_init(jax.random.key(0), obs_dim, act_dim, cfg)
    sizes = [obs_dim + act_dim] + [200] * 4 + [2 * (obs_dim + 1)]
    layers = state.params["layers"]
    assert len(layers) == 5 == len(cfg.weight_decays)
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    trunc_factor = math.sqrt(1 - 4 * phi2 / math.erf(2 / math.sqrt(2)))  # ~0.8796
    for layer, fan_in, fan_out in zip(layers, sizes[:-1], sizes[1:]):
        w, b = np.asarray(layer["w"]), np.asarray(layer["b"])
        assert w.shape == (7, fan_in, fan_out) and b.shape == (7, fan_out)
        s = 1.0 / (2.0 * math.sqrt(fan_in))
        assert np.all(np.abs(w) <= 2.0 * s * (1 + 1e-5))
        assert np.abs(w).max() > 1.9 * s  # truncated at 2 s, not narrower
        assert abs(w.std() / (trunc_factor * s) - 1.0) < 0.03
        assert abs(w.mean()) < 6 * s / math.sqrt(w.size)
        np.testing.assert_array_equal(b, 0.0)
        assert not np.allclose(w[0], w[1])  # members initialized independently
    np.testing.assert_array_equal(np.asarray(state.params["max_logvar"]), np.full(obs_dim + 1, 0.5, np.float32))
    np.testing.assert_array_equal(np.asarray(state.params["min_logvar"]), np.full(obs_dim + 1, -10.0, np.float32))
    np.testing.assert_array_equal(np.asarray(state.elites), np.arange(5))
    assert state.holdout_mse.shape == (7,)
    # No weakly typed leaves (they turn strong after an update and force re-compiles).
    assert not [leaf for leaf in jax.tree.leaves(state) if getattr(leaf, "weak_type", False)]


# ----------------------------------------------------------------------------- sample_step

ELITES = np.array([3, 0, 2])
NON_ELITES = [1, 4]
SAMPLE = jax.jit(sample_step, static_argnums=4)  # one compile per batch size / flag


def _sampling_model(seed, out_logvar, nan_non_elites=True):
    """5 members, elites 3, 0, 2. Member m's mean is offset by 100 m (so the member that produced
    an output is identifiable), inputs matter strongly (scaled weights), and the log-variance is
    exactly `out_logvar` (raw log-var driven far above the max bound, min bound far below)."""
    obs_dim, act_dim = 3, 2
    state = model_init(jax.random.key(seed), obs_dim, act_dim, SMALL)
    out = obs_dim + 1
    layers = [dict(layer) for layer in state.params["layers"]]
    layers = [{"w": layer["w"] * 3.0, "b": layer["b"]} for layer in layers]
    bias = np.zeros((5, 2 * out), np.float32)
    bias[:, :out] = 100.0 * np.arange(5)[:, None]
    bias[:, out:] = 1e4
    layers[-1]["b"] = jnp.asarray(bias)
    if nan_non_elites:
        nan = np.zeros(5, bool)
        nan[NON_ELITES] = True
        layers = jax.tree.map(
            lambda a: jnp.where(jnp.asarray(nan).reshape((-1,) + (1,) * (a.ndim - 1)), jnp.nan, a), layers
        )
    rng = np.random.default_rng(seed)
    params = {
        "layers": layers,
        "max_logvar": jnp.full((out,), out_logvar, jnp.float32),
        "min_logvar": jnp.full((out,), -40.0, jnp.float32),
    }
    return state.replace(
        params=params,
        elites=jnp.asarray(ELITES, jnp.int32),
        norm_mean=jnp.asarray(rng.normal(size=5) * 0.1, jnp.float32),
        norm_std=jnp.asarray(rng.uniform(0.8, 1.2, 5), jnp.float32),
    )


def _identify(state, obs, action, reward, next_obs, tol):
    """For each row, the elite whose mean on that row's own input is nearest to the output."""
    x = np.asarray(model_inputs(obs, action))
    preds, _ = np_forward(state.params, state.norm_mean, state.norm_std, np.broadcast_to(x, (5,) + x.shape))
    out = np.concatenate([np.asarray(reward)[:, None], np.asarray(next_obs) - np.asarray(obs)], axis=1)
    dist = np.abs(preds[ELITES] - out[None]).max(axis=-1)  # [elites, B]
    who = dist.argmin(axis=0)
    assert np.all(dist.min(axis=0) < tol), dist.min(axis=0).max()
    return ELITES[who], out - preds[ELITES[who], np.arange(len(who))]


@pytest.mark.parametrize("batch", [1, 601])  # neither divisible by the 3 elites
def test_sample_step_only_elites_each_row_its_own_input(batch):
    state = _sampling_model(0, out_logvar=-20.0)  # noise std e^-10
    rng = np.random.default_rng(batch)
    obs = jnp.asarray(rng.normal(size=(batch, 3)), jnp.float32)
    action = jnp.asarray(rng.uniform(-1, 1, size=(batch, 2)), jnp.float32)
    reward, next_obs, dis = SAMPLE(state, obs, action, jax.random.key(7), False)
    assert reward.shape == (batch,) and next_obs.shape == (batch, 3) and dis.shape == (batch, 4)
    # NaN non-elites: any evaluation of them would leak NaN into the outputs.
    assert np.all(np.isfinite(np.asarray(reward))) and np.all(np.isfinite(np.asarray(next_obs)))
    np.testing.assert_array_equal(np.asarray(dis), 0.0)
    who, resid = _identify(state, obs, action, reward, next_obs, tol=1e-3)
    # The match is to the row's *own* input: a mix-up between rows would show up here,
    # because outputs depend strongly on inputs.
    if batch > 1:
        x = np.asarray(model_inputs(obs, action))
        preds, _ = np_forward(state.params, state.norm_mean, state.norm_std, np.broadcast_to(x, (5,) + x.shape))
        rolled = preds[who, (np.arange(batch) + 1) % batch]
        assert np.median(np.abs(rolled - preds[who, np.arange(batch)]).max(-1)) > 0.05
    if batch == 601:
        counts = np.array([(who == e).sum() for e in ELITES])
        sd = math.sqrt(batch * (1 / 3) * (2 / 3))
        assert np.all(np.abs(counts - batch / 3) < 5 * sd), counts


def test_sample_step_elite_choice_is_random_per_row():
    """601 rows, 3 elites: 2 padded positions. Over many keys each row, the padded ones
    included, must get each elite with probability 1/3."""
    state = _sampling_model(1, out_logvar=-20.0)
    rng = np.random.default_rng(0)
    b, n_keys = 601, 300
    obs = jnp.asarray(rng.normal(size=(b, 3)), jnp.float32)
    action = jnp.asarray(rng.uniform(-1, 1, size=(b, 2)), jnp.float32)
    keys = jax.random.split(jax.random.key(3), n_keys)
    rewards = np.stack([np.asarray(SAMPLE(state, obs, action, k, False)[0]) for k in keys])
    # Reward offset 100 m identifies the member (the network part is small in comparison).
    member = np.rint(rewards / 100.0).astype(int)  # [keys, B]
    assert set(np.unique(member)) == set(ELITES)
    sd = math.sqrt(n_keys * (1 / 3) * (2 / 3))
    for e in ELITES:
        freq = (member == e).sum(axis=0)  # per row, over keys
        assert np.all(np.abs(freq - n_keys / 3) < 5 * sd), (e, freq[:4], np.abs(freq - n_keys / 3).max())


def test_sample_step_noise_is_gaussian_with_model_variance():
    std = 0.3
    state = _sampling_model(2, out_logvar=2 * math.log(std))
    rng = np.random.default_rng(1)
    b = 601
    obs = jnp.asarray(rng.normal(size=(b, 3)), jnp.float32)
    action = jnp.asarray(rng.uniform(-1, 1, size=(b, 2)), jnp.float32)
    reward, next_obs, _ = SAMPLE(state, obs, action, jax.random.key(5), False)
    _, resid = _identify(state, obs, action, reward, next_obs, tol=8 * std)
    np.testing.assert_allclose(resid.std(), std, rtol=0.06)  # 2404 draws: ~1.5% standard error
    np.testing.assert_allclose(resid.std(axis=0), std, rtol=0.15)
    assert np.all(np.abs(resid.mean(axis=0)) < 5 * std / math.sqrt(b))
    # Independent across output dims.
    corr = np.corrcoef(resid.T)
    assert np.all(np.abs(corr[~np.eye(4, dtype=bool)]) < 0.1)


def test_sample_step_disagreement_is_std_over_all_members():
    state = random_model(seed=3).replace(elites=jnp.asarray(ELITES, jnp.int32))
    rng = np.random.default_rng(2)
    b = 601
    obs = jnp.asarray(rng.normal(size=(b, 3)), jnp.float32)
    action = jnp.asarray(rng.uniform(-1, 1, size=(b, 2)), jnp.float32)
    key = jax.random.key(11)
    r1, n1, dis = SAMPLE(state, obs, action, key, True)
    r0, n0, dis0 = SAMPLE(state, obs, action, key, False)
    np.testing.assert_array_equal(np.asarray(dis0), 0.0)
    # The disagreement does not change the sampled step.
    np.testing.assert_allclose(np.asarray(r1), np.asarray(r0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(n1), np.asarray(n0), rtol=1e-6)
    means, _ = all_members(state, obs, action)
    assert means.shape == (5, b, 4)
    np.testing.assert_allclose(np.asarray(dis), np.asarray(means).std(axis=0), rtol=1e-4, atol=1e-6)
    x = np.asarray(model_inputs(obs, action))
    ref, _ = np_forward(state.params, state.norm_mean, state.norm_std, np.broadcast_to(x, (5,) + x.shape))
    np.testing.assert_allclose(np.asarray(dis), ref.std(axis=0), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- trainer

NOISE = 0.1
# No weight decay, so that zero sample weights give exactly zero layer gradients (stopping test).
TRAIN_CFG = ModelConfig(
    ensemble_size=4, num_elites=2, hidden_size=32, num_layers=2, weight_decays=(0.0, 0.0, 0.0),
    batch_size=75, lr=3e-3, max_epochs=400,  # 1200 train rows = 16 minibatches: one compiled chunk size
)


def _synthetic(rng, n, obs_dim=2, act_dim=1):
    obs = rng.uniform(-2, 2, size=(n, obs_dim))
    act = rng.uniform(-1, 1, size=(n, act_dim))
    delta = np.sin(obs) + 0.5 * act + NOISE * rng.normal(size=(n, obs_dim))
    reward = obs @ np.array([0.5, -1.0]) + 2.0 * act[:, 0] + 0.3 + NOISE * rng.normal(size=n)
    return obs.astype(np.float32), act.astype(np.float32), reward.astype(np.float32), (obs + delta).astype(np.float32)


_all_members = jax.jit(all_members)


def _elite_test_stats(state, obs, act, reward, next_obs):
    means, lv = _all_members(state, jnp.asarray(obs), jnp.asarray(act))
    y = np.asarray(model_targets(obs, reward, next_obs))
    el = np.asarray(state.elites)
    mse = np.mean((np.asarray(means)[el] - y) ** 2)
    var = np.mean(np.exp(np.asarray(lv)[el]))
    return mse, var


@pytest.fixture(scope="module")
def trainer_setup():
    """One trainer (its jitted pieces compile once) and 1500 transitions in an 1800-row store."""
    rng = np.random.default_rng(0)
    n, cap = 1500, 1800
    obs, act, reward, next_obs = _synthetic(rng, n)
    x = np.full((cap, 3), np.nan, np.float32)  # rows beyond n must never be read
    y = np.full((cap, 3), np.nan, np.float32)
    x[:n] = model_inputs(obs, act)
    y[:n] = model_targets(obs, reward, next_obs)
    return ModelTrainer(TRAIN_CFG), x, y, n


def test_trainer_learns_known_dynamics_and_noise(trainer_setup):
    trainer, x, y, n = trainer_setup
    test = _synthetic(np.random.default_rng(1), 2000)
    state = model_init(jax.random.key(0), 2, 1, TRAIN_CFG)
    mse_before, _ = _elite_test_stats(state, *test)
    seed = 123
    state, info = trainer.train(state, jnp.asarray(x), jnp.asarray(y), n, np.random.default_rng(seed))
    mse_after, var_after = _elite_test_stats(state, *test)
    # 16 minibatches per epoch = one chunk size: compiled once for the whole training (the
    # state's leaf types must not change after the first update).
    assert trainer._train_chunk._cache_size() == 1

    assert np.isfinite(info["model/train_loss"])
    assert info["model/train_size"] == n - int(0.2 * n)
    # Early stopping stopped it well before the cap.
    assert TRAIN_CFG.patience + 1 < info["model/epochs"] < TRAIN_CFG.max_epochs
    # Learned the function: test MSE of the elites' means near the noise floor.
    assert mse_after < 0.1 * mse_before
    assert NOISE**2 * 0.8 < mse_after < 3 * NOISE**2, mse_after
    # Learned the noise: predicted variance of the elites near NOISE^2.
    assert 0.4 * NOISE**2 < var_after < 2.5 * NOISE**2, var_after
    # Elites: the num_elites members with the lowest holdout MSE.
    hm = np.asarray(state.holdout_mse)
    assert len(state.elites) == TRAIN_CFG.num_elites
    assert set(np.asarray(state.elites)) == set(np.argsort(hm)[: TRAIN_CFG.num_elites])
    assert np.all(np.isfinite(hm))
    # holdout_mse is the holdout MSE of the restored (best) snapshots: recompute it on the
    # holdout split (the trainer's first draw from its rng is the permutation of the n rows).
    hold = np.random.default_rng(seed).permutation(n)[: int(0.2 * n)]
    xs = np.broadcast_to(x[hold], (4,) + x[hold].shape)
    preds, _ = np_forward(state.params, state.norm_mean, state.norm_std, xs)
    ref = np.mean((preds - y[hold]) ** 2, axis=(1, 2))
    np.testing.assert_allclose(hm, ref, rtol=1e-4)
    assert info["model/holdout_mse"] == pytest.approx(ref[np.asarray(state.elites)].mean(), rel=1e-4)
    # The normalizer comes from the training split.
    train = np.random.default_rng(seed).permutation(n)[int(0.2 * n):]
    np.testing.assert_allclose(np.asarray(state.norm_mean), x[train].mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.norm_std), x[train].std(0), rtol=1e-4)


def test_input_normalizer_treats_float32_constant_columns_as_constant():
    # A constant heading of pi/2 stored in float32 has a float32 std of ~4e-6, not 0
    # (Intersection-v0's agent heading); dividing by it made 12-step model rollouts
    # overflow. Columns that really vary keep their float64 mean and std.
    rng = np.random.default_rng(0)
    x = np.stack([np.full(875, np.pi / 2), np.zeros(875), rng.normal(3.0, 0.01, 875),
                  rng.uniform(-10, 10, 875)], axis=1).astype(np.float32)
    assert x.std(axis=0)[0] > 1e-12  # what the float32 std < 1e-12 rule (MBPO's) would keep
    mean, std = input_normalizer(x)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_array_equal(std[:2], [1.0, 1.0])
    ref = x.astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std[2:], ref[:, 2:].std(0), rtol=1e-6)


def test_trainer_stops_after_patience_without_improvement(trainer_setup):
    """All sample weights 0 and no weight decay: the layers get zero gradients, so the holdout
    MSE never changes after epoch 1 (which sets the first snapshot). Training must stop once no
    member improved for more than `patience` epochs: after exactly patience + 2 epochs."""
    trainer, x, y, n = trainer_setup
    state0 = model_init(jax.random.key(1), 2, 1, TRAIN_CFG)
    weights = jnp.zeros(x.shape[0])
    state, info = trainer.train(state0, jnp.asarray(x), jnp.asarray(y), n, np.random.default_rng(0), weights)
    assert info["model/epochs"] == TRAIN_CFG.patience + 2
    tree_allclose(state.params["layers"], state0.params["layers"], rtol=0, atol=0)
    hm = np.asarray(state.holdout_mse)
    assert set(np.asarray(state.elites)) == set(np.argsort(hm)[: TRAIN_CFG.num_elites])


def test_weighted_bootstrap_respects_weights():
    rng = np.random.default_rng(0)
    n = 100
    weights = rng.uniform(0.5, 1.5, size=n)
    weights[::2] = 0.0
    train_idx = rng.permutation(n)[:80]
    boot = weighted_bootstrap(weights)(train_idx, 60, np.random.default_rng(1))
    assert boot.shape == (60, 80)
    assert np.all(np.isin(boot, train_idx))
    assert np.all(weights[boot] > 0)  # zero-weight rows never drawn
    positive = train_idx[weights[train_idx] > 0]
    assert set(np.unique(boot)) == set(positive)  # every positive-weight train row drawn
    counts = np.bincount(boot.ravel(), minlength=n)[positive]
    p = weights[positive] / weights[positive].sum()
    expected = p * boot.size
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
    # Members draw different resamples.
    assert not np.array_equal(boot[0], boot[1])


def test_uniform_bootstrap_draws_with_replacement_from_train():
    train_idx = np.random.default_rng(0).permutation(50)[:30]
    boot = uniform_bootstrap(train_idx, 7, np.random.default_rng(1))
    assert boot.shape == (7, 30)
    assert np.all(np.isin(boot, train_idx))
    assert any(len(np.unique(row)) < 30 for row in boot)  # with replacement
    assert not np.array_equal(boot[0], boot[1])
