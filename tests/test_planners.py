"""Planners and discriminator-corrected value estimation (DAM Algorithm 1, Eq. 4/8, Algorithm 3)."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.planners import ActionSpace, cem, make_logit_probe, make_planner, make_value_estimator, random_shooting

OBS_DIM = 3


# --- a small deterministic model, in JAX and as a NumPy reference -----------------------------


def _params(space, seed=0):
    rng = np.random.default_rng(seed)
    f = space.feature_dim
    return {
        "A": jnp.asarray(rng.normal(size=(OBS_DIM, OBS_DIM)) * 0.5, jnp.float32),
        "B": jnp.asarray(rng.normal(size=(f, OBS_DIM)), jnp.float32),
        "c": jnp.asarray(rng.normal(size=OBS_DIM) * 0.1, jnp.float32),
        "u": jnp.asarray(rng.normal(size=f), jnp.float32),
    }


def det_step(params, s, f, key):
    return jnp.tanh(s @ params["A"] + f @ params["B"] + params["c"])


def det_logit(params, s, f, s_next):
    return jnp.sin(3.0 * (s * s_next).sum(-1)) + f @ params["u"]


def det_reward(s, a, s_next):
    bonus = 0.3 * a if a.ndim == 1 else a.sum(-1)
    return -(s_next**2).sum(-1) + bonus + s[:, 0]


def reference_value(params, space, obs, actions, gamma, logits, weight_mode, max_weight, logit_gain=1.0, logit_offset=0.0):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = []
    for seq in np.asarray(actions):
        s, log_w, ret = np.asarray(obs, np.float64), 0.0, 0.0
        for t, a in enumerate(seq):
            f = np.eye(space.n)[a] if space.is_discrete else np.asarray(a, np.float64)
            s_next = np.tanh(s @ p["A"] + f @ p["B"] + p["c"])
            r = -(s_next**2).sum() + (0.3 * a if space.is_discrete else np.sum(a)) + s[0]
            if logits:
                logit = logit_gain * (np.sin(3.0 * (s * s_next).sum()) + f @ p["u"]) + logit_offset
                w = np.exp(logit) if weight_mode == "exp" else 1.0 / (1.0 + np.exp(-logit))
                if max_weight is not None:
                    w = min(w, max_weight)
                log_w += np.log(w)
            ret += gamma**t * np.exp(log_w) * r
            s = s_next
        out.append(ret)
    return np.array(out)


SPACES = {"discrete": ActionSpace.discrete(3), "continuous": ActionSpace.continuous([-1.0, -2.0], [1.0, 0.5])}


@pytest.mark.parametrize("kind", sorted(SPACES))
@pytest.mark.parametrize(
    "logits,weight_mode,gamma,max_weight",
    [
        (False, "exp", 1.0, None),
        (False, "exp", 0.9, None),
        (True, "exp", 1.0, None),
        (True, "exp", 0.9, 1.5),
        (True, "sigmoid", 1.0, None),
        (True, "sigmoid", 0.8, 0.6),
    ],
)
def test_value_matches_reference_loop(kind, logits, weight_mode, gamma, max_weight):
    space, horizon, n = SPACES[kind], 5, 6
    params = _params(space)
    value = make_value_estimator(
        det_step, det_reward, space, horizon, num_particles=3,
        logit_fn=det_logit if logits else None, weight_mode=weight_mode, max_weight=max_weight, gamma=gamma,
    )
    actions = space.uniform(jax.random.PRNGKey(1), (n, horizon))
    obs = jnp.array([0.3, -0.5, 0.8])
    got = jax.jit(value)(params, obs, actions, jax.random.PRNGKey(2))
    want = reference_value(params, space, obs, actions, gamma, logits, weight_mode, max_weight)
    assert got.shape == (n,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_exp_weight_products_beyond_float32_keep_exact_order(kind):
    """Logits of 20 +- ~50 per step: values beyond float32's 3e38, spanning more than 1e50
    (no common scale fits them all in float32). They come
    back finite as the documented order-preserving key sign(v) * (log|v| - min log|v| + 1)
    (float64 oracle), so the planners' argmax and top-k are those of the exact values."""
    space, horizon, n, gain, offset = SPACES[kind], 5, 32, 25.0, 20.0
    params = _params(space)
    value = make_value_estimator(det_step, det_reward, space, horizon, num_particles=1,
                                 logit_fn=lambda p, s, f, s2: gain * det_logit(p, s, f, s2) + offset)
    actions = space.uniform(jax.random.PRNGKey(1), (n, horizon))
    obs = jnp.array([0.3, -0.5, 0.8])
    got = np.asarray(jax.jit(value)(params, obs, actions, jax.random.PRNGKey(2)), np.float64)
    want = reference_value(params, space, obs, actions, 1.0, True, "exp", None, gain, offset)
    assert np.max(np.abs(want)) > 1e45 and np.max(np.abs(want)) / np.min(np.abs(want)) > 1e50
    log_mag = np.log(np.abs(want))
    np.testing.assert_allclose(got, np.sign(want) * (log_mag - log_mag.min() + 1.0), rtol=1e-5, atol=1e-3)
    assert np.argmax(got) == np.argmax(want) and np.argmin(got) == np.argmin(want)


def test_value_rejects_bad_settings():
    space = ActionSpace.discrete(2)
    with pytest.raises(ValueError, match="weight_mode"):
        make_value_estimator(det_step, det_reward, space, 3, 1, logit_fn=det_logit, weight_mode="linear")
    with pytest.raises(ValueError, match="max_weight"):
        make_value_estimator(det_step, det_reward, space, 3, 1, max_weight=0.0)
    value = make_value_estimator(det_step, det_reward, space, 3, 1)
    with pytest.raises(ValueError, match="expected"):
        value(_params(space), jnp.zeros(OBS_DIM), jnp.zeros((4, 2), jnp.int32), jax.random.PRNGKey(0))


# --- importance-sampling correctness: q is a wrong Gaussian, logit_fn is the exact log p/q -------

MU_P, SIG_P, MU_Q, SIG_Q = 1.0, 1.0, 0.0, 1.5


def _log_normal(x, mu, sig):
    return -0.5 * ((x - mu) / sig) ** 2 - jnp.log(sig) - 0.5 * jnp.log(2 * jnp.pi)


def gauss_q_step(params, s, f, key):  # q: s' = s + a + N(MU_Q, SIG_Q^2); truth p: N(MU_P, SIG_P^2)
    return s + f + MU_Q + SIG_Q * jax.random.normal(key, s.shape)


def gauss_logit(params, s, f, s_next):  # exact log p(s'|s,a) / q(s'|s,a)
    mean = (s + f)[:, 0]
    return _log_normal(s_next[:, 0], mean + MU_P, SIG_P) - _log_normal(s_next[:, 0], mean + MU_Q, SIG_Q)


def linear_reward(s, a, s_next):
    return s_next[:, 0]


def test_importance_weights_remove_model_bias():
    space, horizon, particles = ActionSpace.continuous([-1.0], [1.0]), 2, 40_000
    actions = jnp.array([[[0.5], [-0.2]], [[-1.0], [1.0]], [[0.0], [0.0]]])
    a1, a2 = np.asarray(actions[:, 0, 0]), np.asarray(actions[:, 1, 0])
    true = (a1 + MU_P) + (a1 + a2 + 2 * MU_P)  # E_p[s_1 + s_2] from s_0 = 0
    model = (a1 + MU_Q) + (a1 + a2 + 2 * MU_Q)  # E_q[s_1 + s_2]
    obs, key = jnp.zeros(1), jax.random.PRNGKey(3)
    plain = make_value_estimator(gauss_q_step, linear_reward, space, horizon, particles)
    corrected = make_value_estimator(gauss_q_step, linear_reward, space, horizon, particles, logit_fn=gauss_logit)
    v_plain = np.asarray(jax.jit(plain)(None, obs, actions, key))
    v_corr = np.asarray(jax.jit(corrected)(None, obs, actions, key))
    np.testing.assert_allclose(v_plain, model, atol=0.06)  # the uncorrected estimate is biased by 3
    np.testing.assert_allclose(v_corr, true, atol=0.15)  # ~5 standard errors
    assert np.all(np.abs(v_plain - true) > 2.5)


def test_single_particle_is_algorithm_1_and_probe_sees_its_samples():
    """num_particles=1: ESTIMATEVALUE of Algorithm 1 on ONE sampled trajectory per candidate,
    R = sum_t (prod_{m<=t} w_m) r_t, against a loop over the same samples (the model's noise is
    recomputed from the per-step keys); make_logit_probe returns the logits of those transitions."""
    space, horizon, n = ActionSpace.continuous([-1.0], [1.0]), 4, 5
    actions = space.uniform(jax.random.PRNGKey(1), (n, horizon))
    obs, key = jnp.asarray([0.2]), jax.random.PRNGKey(4)
    value = make_value_estimator(gauss_q_step, linear_reward, space, horizon, 1, logit_fn=gauss_logit,
                                 weight_mode="sigmoid")
    probe = make_logit_probe(gauss_q_step, gauss_logit, space, horizon, 1)
    got, logits = jax.jit(value)(None, obs, actions, key), jax.jit(probe)(None, obs, actions, key)
    keys = jax.random.split(key, horizon)
    s, w, ret, want_logits = np.full((n, 1), 0.2), np.ones(n), np.zeros(n), []
    for t in range(horizon):
        a = np.asarray(actions[:, t])
        s_next = s + a + MU_Q + SIG_Q * np.asarray(jax.random.normal(keys[t], (n, 1)))
        logit = np.asarray(gauss_logit(None, jnp.asarray(s), jnp.asarray(a), jnp.asarray(s_next)))
        w, s = w / (1.0 + np.exp(-logit)), s_next  # w <- w * sigma(D~)
        ret += w * s[:, 0]
        want_logits.append(logit)
    assert logits.shape == (horizon, n)
    np.testing.assert_allclose(np.asarray(logits), np.stack(want_logits), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got), ret, rtol=1e-4, atol=1e-4)


def test_correction_changes_the_plan():
    # Action 0 is safe (reward 0.5). Action 1 looks good in the wrong model q (s' ~ N(1, 2^2))
    # but truly gives s' ~ N(-1, 1): the corrected planner must avoid it.
    space = ActionSpace.discrete(2)

    def step(params, s, f, key):
        return jnp.where(f[:, 1:] > 0, 1.0 + 2.0 * jax.random.normal(key, s.shape), s)

    def logit(params, s, f, s_next):
        lr = _log_normal(s_next[:, 0], -1.0, 1.0) - _log_normal(s_next[:, 0], 1.0, 2.0)
        return jnp.where(f[:, 1] > 0, lr, 0.0)

    def reward(s, a, s_next):
        return jnp.where(a == 1, s_next[:, 0], 0.5)

    obs, key = jnp.zeros(1), jax.random.PRNGKey(0)
    for logit_fn, want in [(None, 1), (logit, 0)]:
        value = make_value_estimator(step, reward, space, 1, 2000, logit_fn=logit_fn)
        action, info = make_planner("rs", value, space, horizon=1, num_sequences=16)(None, obs, key)
        assert int(action) == want
        assert abs(float(info["value"]) - (1.0 if want else 0.5)) < 0.2


# --- planners find known optima ---------------------------------------------------------------

TARGET = 0.6


def point_step(params, s, f, key):  # s' = s + a + drift
    return s + f + params["drift"]


def point_reward(s, a, s_next):
    return -((s_next[:, 0] - TARGET) ** 2)


def chain_step(params, s, f, key):  # obs = [flag]; action 1 sets the flag
    return jnp.maximum(s, f[:, 1:2])


def chain_reward(s, a, s_next):
    # 0: +1 now (greedy); 1: invest, 0 now; 2: +5 once invested, else -1. Best: [1, 2, 2] = 10.
    return jnp.where(a == 0, 1.0, jnp.where(a == 2, jnp.where(s[:, 0] > 0.5, 5.0, -1.0), 0.0))


CONT = ActionSpace.continuous([-1.0], [1.0])
CHAIN = ActionSpace.discrete(3)


@pytest.mark.parametrize("name,kwargs,tol", [("rs", {"num_sequences": 4096}, 0.15),
                                             ("cem", {"num_sequences": 256, "num_iterations": 6}, 0.03)])
def test_planners_continuous_point(name, kwargs, tol):
    value = make_value_estimator(point_step, point_reward, CONT, 3, 1)
    plan = make_planner(name, value, CONT, horizon=3, **kwargs)
    action, info = plan({"drift": jnp.zeros(1)}, jnp.zeros(1), jax.random.PRNGKey(0))
    assert action.shape == (1,)
    assert abs(float(action[0]) - TARGET) < tol
    assert float(info["value"]) <= 0.0


@pytest.mark.parametrize("name,kwargs", [("rs", {"num_sequences": 256}),
                                         ("cem", {"num_sequences": 32, "num_iterations": 5})])
def test_planners_discrete_lookahead(name, kwargs):
    value = make_value_estimator(chain_step, chain_reward, CHAIN, 3, 1)
    greedy = value(None, jnp.zeros(1), jnp.arange(3)[:, None].repeat(3, 1), jax.random.PRNGKey(0))
    assert int(jnp.argmax(greedy)) == 0  # the all-same sequences favour the greedy action
    action, info = make_planner(name, value, CHAIN, horizon=3, **kwargs)(None, jnp.zeros(1), jax.random.PRNGKey(1))
    assert action.shape == () and jnp.issubdtype(action.dtype, jnp.integer)
    assert int(action) == 1
    assert float(info["value"]) == pytest.approx(10.0)


@pytest.mark.parametrize("make", [random_shooting, cem])
def test_planner_traced_once_across_params_and_obs(make):
    traces = []

    def counting_step(params, s, f, key):
        traces.append(1)
        return point_step(params, s, f, key)

    value = make_value_estimator(counting_step, point_reward, CONT, 3, 2)
    plan = jax.jit(make(value, CONT, 512, 3))
    n_first = None
    for drift, obs, want in [(0.0, 0.0, 0.6), (0.4, 0.0, 0.2), (-0.1, 0.3, 0.4)]:
        action, _ = plan({"drift": jnp.array([drift])}, jnp.array([obs]), jax.random.PRNGKey(2))
        n_first = n_first or len(traces)
        assert abs(float(action[0]) - want) < 0.2
    assert n_first >= 1 and len(traces) == n_first


# --- action spaces ----------------------------------------------------------------------------


def test_action_space_from_gym_and_features():
    d = ActionSpace.from_gym(gym.spaces.Discrete(3))
    assert d == ActionSpace.discrete(3) and d.feature_dim == 3
    np.testing.assert_array_equal(d.features(jnp.array([2, 0])), [[0, 0, 1], [1, 0, 0]])
    c = ActionSpace.from_gym(gym.spaces.Box(low=np.array([-1.0, 0.0], np.float32), high=np.array([1.0, 2.0], np.float32)))
    assert c.low == (-1.0, 0.0) and c.high == (1.0, 2.0) and c.feature_dim == 2
    a = c.uniform(jax.random.PRNGKey(0), (100, 4))
    assert a.shape == (100, 4, 2) and jnp.all(a >= jnp.array(c.low)) and jnp.all(a <= jnp.array(c.high))
    np.testing.assert_array_equal(c.features(a), a)
    with pytest.raises(ValueError, match="kind"):
        ActionSpace(kind="multi")
    with pytest.raises(ValueError, match="planner"):
        make_planner("mppi", None, d, horizon=1, num_sequences=1)
