"""DAM model parts (shared/papers/dam.txt): the mixture density network against a NumPy
reference and on a bimodal distribution the Gaussian cannot fit; the discriminator's
exp(logit) against a known density ratio (Eq. 5-8); minimum-variance weights (Eq. 9-10)
through the trainer."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.config import ModelConfig
from mbrlax.models import discriminator as disc_mod
from mbrlax.models.discriminator import disc_init, disc_logits, importance_weights, train_discriminator
from mbrlax.models.dynamics import make_dynamics, make_trainer
from mbrlax.models.ensemble import ModelState, forward, model_init
from mbrlax.models.mdn import (
    LV_MAX,
    LV_MIN,
    mdn_forward,
    mdn_init,
    mdn_log_prob,
    mdn_member_nll,
    mdn_nll_loss,
    mdn_prepare,
    mdn_sample_step,
)
from mbrlax.models.minvar import minvar_weights
from mbrlax.models.trainer import ModelTrainer

# One small config and one trainer per model kind for every training test (compiles once);
# 1600 training rows / batch 100 = 16 minibatches: one jitted chunk per epoch.
CFG = ModelConfig(ensemble_size=1, num_elites=1, hidden_size=32, num_layers=2, weight_decays=(1e-5, 1e-5, 1e-5),
                  batch_size=100, patience=10, max_epochs=100)
CAP = 2000


@functools.cache
def trainer(kind: str):
    dyn = make_dynamics(kind, num_components=2)
    return dyn, make_trainer(dyn, CFG)


# ----------------------------------------------------------------------------- NumPy reference


def softplus(x):
    return np.logaddexp(0.0, x)


def np_mdn_log_prob(params, norm_mean, norm_std, x, y):
    """Per member: normalize, SiLU MLP, split logits / means / raw log-var, soft bounds on the
    standardized log-variance, mixture density of the raw target (with the 1/y_std Jacobian)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    out = p["y_mean"].shape[0]
    res = []
    for i in range(x.shape[0]):
        h = (x[i] - np.asarray(norm_mean, np.float64)) / np.asarray(norm_std, np.float64)
        for layer in p["layers"][:-1]:
            h = h @ layer["w"][i] + layer["b"][i]
            h = h / (1.0 + np.exp(-h))
        h = h @ p["layers"][-1]["w"][i] + p["layers"][-1]["b"][i]
        k = h.shape[-1] // (1 + 2 * out)
        logits, mu, raw = h[:, :k], h[:, k:k + k * out], h[:, k + k * out:]
        mu, raw = mu.reshape(-1, k, out), raw.reshape(-1, k, out)
        lv = LV_MAX - softplus(LV_MAX - raw)
        lv = LV_MIN + softplus(lv - LV_MIN)
        mean_raw = mu * p["y_std"] + p["y_mean"]
        var_raw = np.exp(lv) * p["y_std"] ** 2
        pi = np.exp(logits - logits.max(-1, keepdims=True))
        pi /= pi.sum(-1, keepdims=True)
        dens = np.prod(np.exp(-0.5 * (y[i][:, None] - mean_raw) ** 2 / var_raw) / np.sqrt(2 * np.pi * var_raw), -1)
        res.append(np.log(np.sum(pi * dens, axis=-1)))
    return np.stack(res)


def random_mdn(seed, e=2, obs_dim=2, act_dim=1, k=3, hidden=8):
    """MDN params (two SiLU layers) with random weights and non-trivial input / target normalizers."""
    rng = np.random.default_rng(seed)
    in_dim, out = obs_dim + act_dim, obs_dim + 1
    sizes = [in_dim, hidden, hidden, k * (1 + 2 * out)]
    f = lambda *shape: jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[-2] if len(shape) == 3 else 1), jnp.float32)
    layers = [{"w": f(e, a, b), "b": f(e, b)} for a, b in zip(sizes[:-1], sizes[1:])]
    params = {"layers": layers, "y_mean": jnp.asarray(rng.normal(size=out), jnp.float32),
              "y_std": jnp.asarray(rng.uniform(0.5, 2.0, out), jnp.float32)}
    return params, jnp.asarray(rng.normal(size=in_dim), jnp.float32), jnp.asarray(rng.uniform(0.5, 2, in_dim), jnp.float32)


def test_mdn_log_prob_and_loss_match_numpy_reference():
    params, nm, ns = random_mdn(0)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 3)), jnp.float32)
    y = jnp.asarray(2 * rng.normal(size=(2, 9, 3)), jnp.float32)
    ref = np_mdn_log_prob(params, nm, ns, x, y)
    log_prob, loss, score = jax.jit(mdn_log_prob), jax.jit(mdn_nll_loss, static_argnums=6), jax.jit(mdn_member_nll)
    np.testing.assert_allclose(np.asarray(log_prob(params, nm, ns, x, y)), ref, rtol=1e-4, atol=1e-4)

    w = jnp.asarray(rng.uniform(0, 2, (2, 9)) * (rng.random((2, 9)) > 0.3), jnp.float32)
    decays = (0.1, 0.2, 0.3)
    wn = np.asarray(w, np.float64)
    want = np.sum(np.sum(-ref / 3 * wn, 1) / wn.sum(1))
    want += sum(c * 0.5 * np.sum(np.asarray(layer["w"], np.float64) ** 2) for c, layer in zip(decays, params["layers"]))
    assert float(loss(params, nm, ns, x, y, w, decays)) == pytest.approx(want, rel=1e-5)

    # Rows of weight 0 are ignored; a common scale of the weights cancels (weighted mean).
    y_junk = jnp.where(w[..., None] == 0, 1e3, y)
    assert float(loss(params, nm, ns, x, y_junk, w, decays)) == pytest.approx(want, rel=1e-5)
    assert float(loss(params, nm, ns, x, y, 3.0 * w, decays)) == pytest.approx(want, rel=1e-5)

    # Holdout score: every member on the same rows, masked mean of -log q / out_dim.
    mask = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1, 1], jnp.float32)
    ref1 = np_mdn_log_prob(params, nm, ns, np.broadcast_to(x[0], (2, 9, 3)), np.broadcast_to(y[0], (2, 9, 3)))
    want_score = np.sum(-ref1 / 3 * np.asarray(mask), 1) / np.sum(mask)
    np.testing.assert_allclose(np.asarray(score(params, nm, ns, x[0], y[0], mask)), want_score, rtol=1e-5)


def test_mdn_forward_shapes_bounds_and_constant_normalizer():
    params, nm, ns = random_mdn(2, e=2, k=4)
    x = jax.random.normal(jax.random.key(3), (2, 5, 3)) * 100  # extreme inputs hit the variance bounds
    log_pi, mean, lv = jax.jit(mdn_forward)(params, nm, ns, x)
    assert log_pi.shape == (2, 5, 4) and mean.shape == lv.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(log_pi, -1)), 0.0, atol=1e-5)
    lv_std = np.asarray(lv - 2 * jnp.log(params["y_std"]))  # back to standardized units
    assert lv_std.min() >= LV_MIN - 1e-4 and lv_std.max() <= LV_MAX + 1e-4
    # The target normalizer gets no gradient (Adam then leaves it unchanged).
    g = jax.jit(jax.grad(mdn_nll_loss), static_argnums=6)(params, nm, ns, x, jnp.ones((2, 5, 3)), jnp.ones((2, 5)), (0.0,) * 3)
    assert float(jnp.abs(g["y_mean"]).max()) == 0.0 and float(jnp.abs(g["y_std"]).max()) == 0.0


def bimodal_data(n, seed):
    """obs, action ~ U(-1, 1); reward = 0.5 obs + 0.05 noise; next_obs - obs = +-2 (50/50) + 0.1 noise."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 1))
    act = rng.uniform(-1, 1, (n, 1))
    reward = 0.5 * obs[:, 0] + 0.05 * rng.normal(size=n)
    delta = np.where(rng.random(n) < 0.5, 2.0, -2.0) + 0.1 * rng.normal(size=n)
    f = lambda a: jnp.asarray(a, jnp.float32)
    return f(obs), f(act), f(np.concatenate([obs, act], 1)), f(np.stack([reward, delta], 1))


def gaussian_log_prob(state, x, y):
    xb = jnp.broadcast_to(x, (state.holdout_mse.shape[0],) + x.shape)
    mean, lv = forward(state.params, state.norm_mean, state.norm_std, xb)
    return jnp.sum(-0.5 * ((y - mean) ** 2 * jnp.exp(-lv) + lv + jnp.log(2 * jnp.pi)), -1)[0]


def fit(kind, x, y, n, weights=None):
    dyn, tr = trainer(kind)
    state = dyn.init(jax.random.key(0), 1, 1, CFG)
    state, _ = tr.train(state, x, y, n, np.random.default_rng(0), weights=weights)
    return state


def test_mdn_fits_bimodal_transitions_the_gaussian_cannot():
    _, _, x, y = bimodal_data(CAP, seed=0)
    obs, act, x_test, y_test = bimodal_data(CAP, seed=1)
    fits = {}
    for kind in ("gaussian", "mdn"):
        state = fit(kind, x, y, CAP)
        _, nxt = jax.jit(trainer(kind)[0].sample_step)(state, obs, act, jax.random.key(1))
        fits[kind] = state, np.asarray(nxt - obs)[:, 0]
    (mdn, d_mdn), (gauss, d_gauss) = fits["mdn"], fits["gaussian"]
    near = lambda d, c: np.mean(np.abs(d - c) < 0.5)

    # MDN samples: both modes about half each, almost nothing in between.
    assert 0.4 < near(d_mdn, 2.0) < 0.6 and 0.4 < near(d_mdn, -2.0) < 0.6
    assert near(d_mdn, 0.0) < 0.02
    # Mixture: weights ~ 1/2 each, delta means ~ +-2, std ~ 0.1.
    log_pi, mean, lv = jax.jit(mdn_forward)(mdn.params, mdn.norm_mean, mdn.norm_std, x_test[None])
    pi, mu, sd = np.exp(np.asarray(log_pi[0])), np.asarray(mean[0, :, :, 1]), np.exp(0.5 * np.asarray(lv[0, :, :, 1]))
    order = np.argsort(mu, axis=1)
    take = lambda a: np.take_along_axis(a, order, 1)
    np.testing.assert_allclose(take(pi).mean(0), [0.5, 0.5], atol=0.08)
    np.testing.assert_allclose(take(mu).mean(0), [-2.0, 2.0], atol=0.1)
    assert np.all(np.abs(take(sd).mean(0) - 0.1) < 0.05)
    # The Gaussian spreads one mode across the gap.
    assert near(d_gauss, 0.0) > 0.15 and near(d_gauss, 2.0) + near(d_gauss, -2.0) < 0.6

    # Test-set NLL (both [reward, delta] dims, nats per transition): the MDN is far better.
    nll_mdn = -float(jnp.mean(jax.jit(mdn_log_prob)(mdn.params, mdn.norm_mean, mdn.norm_std, x_test[None], y_test[None])))
    nll_gauss = -float(jnp.mean(jax.jit(gaussian_log_prob)(gauss, x_test, y_test)))
    assert nll_mdn < nll_gauss - 2.0, (nll_mdn, nll_gauss)


def test_mdn_sample_step_uses_every_elite():
    """Members with different constant outputs: each row samples a uniformly chosen elite."""
    e, out = 3, 2
    layers = [{"w": jnp.zeros((e, 2, 4)), "b": jnp.zeros((e, 4))}, {"w": jnp.zeros((e, 4, 1 + 2 * out))}]
    out_b = jnp.zeros((e, 1 + 2 * out)).at[:, 3:].set(-20.0)  # logit, mean (r, d), raw log-var (r, d) -> min
    layers[-1]["b"] = out_b.at[:, 2].set(jnp.asarray([10.0, 20.0, 30.0]))  # member m predicts delta 10 (m + 1)
    params = {"layers": layers, "y_mean": jnp.zeros(out), "y_std": jnp.ones(out)}
    state = ModelState(params=params, opt_state=None, norm_mean=jnp.zeros(2), norm_std=jnp.ones(2),
                       elites=jnp.asarray([2, 0], jnp.int32), holdout_mse=jnp.zeros(e))
    obs = jnp.zeros((4000, 1))
    reward, nxt = jax.jit(mdn_sample_step)(state, obs, obs, jax.random.key(1))
    vals = np.round(np.asarray(nxt[:, 0]))
    assert set(np.unique(vals)) == {10.0, 30.0}
    assert abs(np.mean(vals == 30.0) - 0.5) < 0.04
    assert reward.shape == (4000,)


def test_mdn_prepare_seeds_fresh_models_only():
    """The target standardizer is refit every time; components are seeded from the data
    (k-means) only before the first training."""
    _, _, x, y = bimodal_data(CAP, seed=3)
    y = y.at[1000:].set(1e3)  # rows beyond n are not data
    cfg = ModelConfig(ensemble_size=2, num_elites=1, hidden_size=8, num_layers=2)
    state = mdn_init(jax.random.key(0), 1, 1, cfg, 2)
    fresh = mdn_prepare(state, x, y, 1000, np.random.default_rng(0))
    y_np = np.asarray(y[:1000], np.float64)
    np.testing.assert_allclose(fresh.params["y_mean"], y_np.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fresh.params["y_std"], y_np.std(0), rtol=1e-5)
    b = np.asarray(fresh.params["layers"][-1]["b"])  # [E, K (1 + 2 out)]
    delta_means = b[:, 2:6].reshape(2, 2, 2)[:, :, 1] * y_np[:, 1].std() + y_np[:, 1].mean()
    np.testing.assert_allclose(np.sort(delta_means, axis=1), [[-2, 2], [-2, 2]], atol=0.05)
    np.testing.assert_allclose(np.exp(b[:, :2]), 0.5, atol=0.05)
    trained = state.replace(holdout_mse=jnp.zeros(2))
    again = mdn_prepare(trained, x, y, 1000, np.random.default_rng(0))
    np.testing.assert_array_equal(again.params["layers"][-1]["b"], trained.params["layers"][-1]["b"])


# ----------------------------------------------------------------------------- minimum variance


def test_minvar_weights():
    returns = jnp.asarray([-5.0, 0.0, 10.0, 1e6])  # trajectory 3 has no transitions: ignored
    idx = jnp.asarray([0, 0, 1, 2, 2, 2])
    w = np.asarray(minvar_weights(returns, idx))
    assert np.all(w > 0) and w.mean() == pytest.approx(1.0, rel=1e-6)
    assert w[0] == w[1] < w[2] < w[3] == w[4] == w[5]  # monotone in the trajectory's return
    # R - min R + 0.1 (max R - min R), over the referenced trajectories
    np.testing.assert_allclose(w / w[0], (np.asarray(returns)[np.asarray(idx)] + 5.0 + 1.5) / 1.5, rtol=1e-6)
    # Invariant to the reward's offset and scale.
    np.testing.assert_allclose(np.asarray(minvar_weights(3.0 * returns - 7.0, idx)), w, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(minvar_weights(jnp.asarray([-3.0, -3.0]), jnp.asarray([0, 1, 1]))), 1.0)
    np.testing.assert_array_equal(np.asarray(minvar_weights(jnp.asarray([1e6, 1e6]), jnp.asarray([0, 1]))), 1.0)


def conflicting_data(n, seed):
    """Same inputs; next_obs - obs = +1 in high-return trajectories (R = 10), -1 in low ones (R = 0).
    One transition per trajectory: trajectory i = row i, even rows high."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 1))
    high = np.arange(n) % 2 == 0
    delta = np.where(high, 1.0, -1.0) + 0.05 * rng.normal(size=n)
    x = jnp.asarray(np.concatenate([obs, np.zeros((n, 1))], 1), jnp.float32)
    y = jnp.asarray(np.stack([np.zeros(n), delta], 1), jnp.float32)
    return x, y, jnp.asarray(np.where(high, 10.0, 0.0)), jnp.arange(n)


@pytest.mark.parametrize("kind", ["gaussian", "mdn"])
def test_minvar_objective_fits_high_return_transitions(kind):
    """Eq. 9-10: q* is proportional to R(tau) p(tau). With weights 11 : 1 (R' = R + 1), the
    Gaussian's mean moves from 0 (MLE) to (11 - 1) / 12, and the MDN's weight on the
    high-return mode from 1/2 to 11/12; padded rows (weight 0) are ignored."""
    n = 1000
    x, y, returns, traj = conflicting_data(CAP, 0)
    y = y.at[n:].set(100.0)  # rows beyond n must not matter
    w = jnp.zeros(CAP).at[:n].set(minvar_weights(returns, traj[:n]))
    probe = x[None, :64]
    for weights, want_high in ((None, 0.5), (w, 11 / 12)):
        state = fit(kind, x, y, n, weights)
        if kind == "gaussian":
            mean, _ = jax.jit(forward)(state.params, state.norm_mean, state.norm_std, probe)
            assert float(jnp.mean(mean[..., 1])) == pytest.approx(2 * want_high - 1, abs=0.08)
        else:
            log_pi, mean, _ = jax.jit(mdn_forward)(state.params, state.norm_mean, state.norm_std, probe)
            high = np.asarray(mean[0, :, :, 1]) > 0
            got = float(np.mean(np.sum(np.exp(np.asarray(log_pi[0])) * high, -1)))
            assert got == pytest.approx(want_high, abs=0.05)


def test_dynamics_trainer_without_weights_is_model_trainer():
    _, _, x, y = bimodal_data(CAP, seed=2)
    ours = fit("gaussian", x, y, CAP)
    ref, _ = ModelTrainer(CFG).train(model_init(jax.random.key(0), 1, 1, CFG), x, y, CAP, np.random.default_rng(0))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), ours, ref)
    with pytest.raises(ValueError, match="invalid model kind"):
        make_dynamics("flow")


# ----------------------------------------------------------------------------- discriminator


def log_ratio(s):
    """log N(s; 0, 1) - log N(s; 0.5, 1.5^2)."""
    return -0.5 * s**2 + 0.5 * ((s - 0.5) / 1.5) ** 2 + np.log(1.5)


def sample_q(params, obs, action, key):
    """The 'model' q(s'|s, a) = N(0.5, 1.5^2), whatever (s, a): a fresh draw per row and call."""
    return 0.5 + 1.5 * jax.random.normal(key, obs.shape)


def test_discriminator_recovers_known_density_ratio():
    """Real s' ~ N(0, 1), model s' ~ N(0.5, 1.5^2) for the same real (s, a): exp(D~) -> p/q (Eq. 5-8).
    Algorithm 2: a fresh model sample for every row in every update, early stopping on held-out rows."""
    n, cap = 8000, 8192
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(cap, 1))
    act = np.eye(2)[rng.integers(0, 2, cap)]
    real = rng.normal(0.0, 1.0, (cap, 1))
    f = lambda a: jnp.asarray(a, jnp.float32)
    state = disc_init(jax.random.key(0), 4, hidden=64)
    state, info = train_discriminator(state, f(obs), f(act), f(real), None, rng, n=n, steps=2000, batch_size=512,
                                      holdout=0.2, sampler=sample_q)
    # Logits averaged over real (s, a) on a grid of s' in the bulk, against the true log-ratio.
    s_grid = np.linspace(-2, 2, 41)
    m = 200
    o, a = np.tile(obs[:m], (41, 1)), np.tile(act[:m], (41, 1))
    s = np.repeat(s_grid, m)[:, None]
    logits = np.asarray(disc_logits(state, f(o), f(a), f(s))).reshape(41, m)
    got, true = logits.mean(1), log_ratio(s_grid)
    assert np.corrcoef(got, true)[0, 1] > 0.97
    assert np.mean(np.abs(got - true)) < 0.15, np.abs(got - true)
    assert logits.std(1).mean() < 0.2  # (s, a) carry no information
    for acc in (info["accuracy"], info["holdout_accuracy"]):
        assert 0.55 < acc < 0.75  # overlapping distributions: no perfect classifier
    assert 0.8 < info["fake_weight_mean"] < 1.2  # E_q[p/q] = 1
    assert info["loss"] < 2 * np.log(2) and info["holdout_loss"] < 2 * np.log(2)
    # Held-out logits: larger on real rows than on model samples, as log p/q is on average.
    assert info["real_logit_mean"] > 0 > info["model_logit_mean"], info


def test_discriminator_early_stopping_on_held_out_rows():
    """Few real rows of a model that is exactly right: a net can only memorize its training rows,
    the held-out cross-entropy never improves much, and training stops early near chance."""
    cap, n = 64, 40
    rng = np.random.default_rng(1)
    obs, act = jnp.asarray(rng.normal(size=(cap, 1)), jnp.float32), jnp.zeros((cap, 2))
    real = sample_q(None, obs, act, jax.random.key(5))
    state = disc_init(jax.random.key(0), 4, hidden=64)
    kw = dict(n=n, steps=1000, batch_size=64, patience=3, check_every=50, sampler=sample_q)  # one compile
    state, info = train_discriminator(state, obs, act, real, None, rng, holdout=0.25, **kw)
    assert info["steps"] < 1000 and info["best_step"] <= info["steps"] - 3 * 50
    assert 0.2 < info["holdout_accuracy"] < 0.8 and info["holdout_loss"] < 2 * np.log(2) + 0.1  # 10 rows: coarse
    _, info = train_discriminator(state, obs, act, real, None, rng, **kw)  # no holdout: all steps
    assert info["steps"] == 1000 and np.isnan(info["holdout_accuracy"])
    with pytest.raises(ValueError, match="exactly one source"):
        train_discriminator(state, obs, act, real, real, rng, sampler=sample_q)
    with pytest.raises(ValueError, match="holdout"):
        train_discriminator(state, obs, act, real, real, rng, holdout=1.0)


def test_importance_weights_modes_and_clip():
    logits = jnp.asarray([-3.0, 0.0, 1.0, 5.0])
    np.testing.assert_allclose(importance_weights(logits), np.exp(np.asarray(logits)), rtol=1e-6)
    np.testing.assert_allclose(importance_weights(logits, "sigmoid"), 1 / (1 + np.exp(-np.asarray(logits))), rtol=1e-6)
    np.testing.assert_allclose(importance_weights(logits, max_weight=2.0), [np.exp(-3.0), 1.0, 2.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="invalid mode"):
        importance_weights(logits, "softmax")


def test_discriminator_compiles_once_as_data_grows():
    """Fixed capacity, growing n, a fresh disc_init every time (Algorithm 2): one compile."""
    cap = 64
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(cap, 2)), jnp.float32)
    a = jnp.zeros((cap, 3))
    before = disc_mod._train._cache_size()
    for i, n in enumerate((10, 20, 40, 64)):
        state = disc_init(jax.random.key(i), 7, hidden=8)
        state, info = train_discriminator(state, z, a, z + 1.0, z, rng, n=n, steps=20, batch_size=16, holdout=0.2)
        assert np.isfinite(info["loss"]) and np.isfinite(info["holdout_accuracy"])
    assert disc_mod._train._cache_size() - before == 1
    assert disc_logits(state, z, a, z).shape == (cap,)
