"""PMAC weights (Algorithm 1, Eq. 4), their uses, the model diagnostics, and PMAC runs."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

import mbrlax
from mbrlax.algos import dyna as dyna_mod
from mbrlax.buffers import Buffer, buffer_init
from mbrlax.config import ConfigError, ModelConfig, PMACConfig, preset, validate
from mbrlax.models.diagnostics import model_diagnostics
from mbrlax.models.ensemble import model_init
from mbrlax.run.checkpoint import load_checkpoint
from mbrlax.run.metrics import read_metrics
from mbrlax.usage import Compose, ModelUsage, make_usage
from mbrlax.usage.pmac import PMAC, chunk_ids, tv_distance

from conftest import kill_9_during_training
from test_dyna import HOT_PATHS, TINY, TINY_FLAGS
from test_models import np_members

ALPHA, INIT, CHUNK, TOTAL = 0.9, 1000, 250, 3000


def cfg_with(**pmac):
    return preset("InvertedPendulum-v5", "pmac", total_steps=TOTAL, init_steps=INIT,
                  model=replace(ModelConfig(), train_freq=250), pmac=PMACConfig(**pmac))


def filled(size, cap=TOTAL, obs_dim=4, act_dim=1):
    b = buffer_init(obs_dim, act_dim, cap)
    return Buffer(data=b.data, ptr=jnp.int32(size % cap), size=jnp.int32(size))


def closed_form(k, n_chunks):
    """W_0 = alpha^k, W_j = (1 - alpha) alpha^(k - j) for 1 <= j <= k."""
    w = np.zeros(n_chunks)
    w[0] = ALPHA**k
    w[1:k + 1] = (1 - ALPHA) * ALPHA ** (k - np.arange(1, k + 1))
    return w


def rounds(usage_obj, sizes):
    """Run on_model_round at each buffer size in turn; yield (size, state)."""
    u = usage_obj.init(jax.random.key(0), 4, 1)
    step = jax.jit(usage_obj.on_model_round)
    for size in sizes:
        u = step(u, filled(size), None, jax.random.key(size))
        yield size, u


def test_paper_weights_match_closed_form():
    pm = PMAC(cfg_with())
    for size, u in rounds(pm, range(INIT, TOTAL + 1, CHUNK)):
        k = (size - INIT) // CHUNK
        mass = np.asarray(u["mass"])
        np.testing.assert_allclose(mass, closed_form(k, pm.n_chunks), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mass.sum(), 1.0, rtol=1e-5)
        if k:
            np.testing.assert_allclose(mass[k], 1 - ALPHA, rtol=1e-5)  # newest share
        p = np.asarray(pm.probs(u, filled(size)))
        n_c = np.array([INIT] + [CHUNK] * (pm.n_chunks - 1))
        expected = (closed_form(k, pm.n_chunks) / n_c)[np.asarray(chunk_ids(TOTAL, INIT, CHUNK))]
        expected[size:] = 0
        np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-9)
        assert int(u["chunks"]) == k


def test_thousand_step_chunks_give_the_growing_newest_chunk_one_minus_alpha():
    pm = PMAC(cfg_with(chunk_steps=1000))
    states = dict(rounds(pm, [1000, 1250, 1500, 2000, 2250]))
    for size, k, n_new in [(1250, 1, 250), (1500, 1, 500), (2000, 1, 1000), (2250, 2, 250)]:
        p = np.asarray(pm.probs(states[size], filled(size)))
        np.testing.assert_allclose(p[size - 1] * n_new, 1 - ALPHA, rtol=1e-4)
        np.testing.assert_allclose(p[0] * INIT, ALPHA**k, rtol=1e-4)


def chunk_counts(idx, size):
    ids = np.asarray(chunk_ids(TOTAL, INIT, CHUNK))[np.asarray(idx).ravel()]
    assert np.all(np.asarray(idx) < size)
    return np.bincount(ids, minlength=1 + (size - INIT) // CHUNK)


SIZE = 2500  # k = 6 chunks after the exploration chunk


@pytest.fixture(scope="module")
def pmac_round():
    pm = PMAC(cfg_with())
    u = dict(rounds(pm, range(INIT, SIZE + 1, CHUNK)))[SIZE]
    return pm, u, closed_form(6, 7)


def starts(pm, u, n=200_000):
    return jax.jit(pm.rollout_starts, static_argnums=3)(u, filled(SIZE), jax.random.key(1), n)[0]


def test_start_indices_follow_the_row_probabilities(pmac_round):
    pm, u, mass = pmac_round
    counts = chunk_counts(starts(pm, u), SIZE)
    assert chisquare(counts, mass * counts.sum()).pvalue > 1e-3
    # Power: the same counts reject uniform starts (chunk share = its size).
    sizes = np.array([INIT] + [CHUNK] * 6)
    assert chisquare(counts, sizes / sizes.sum() * counts.sum()).pvalue < 1e-12
    # Within a chunk rows are equally likely.
    idx = np.asarray(starts(pm, u))
    newest = np.bincount(idx[idx >= SIZE - CHUNK] - (SIZE - CHUNK), minlength=CHUNK)
    assert chisquare(newest).pvalue > 1e-3


def test_bootstrap_indices_follow_the_row_probabilities(pmac_round):
    pm, u, mass = pmac_round
    w = np.asarray(pm.real_data_weights(u, filled(SIZE)))
    boot = pm.model_train_args(w)["bootstrap"]
    train_idx = np.random.default_rng(0).permutation(SIZE)[: int(SIZE * 0.8)]
    idx = boot(train_idx, 7, np.random.default_rng(2))
    assert idx.shape == (7, len(train_idx)) and np.isin(idx, train_idx).all()
    ids = np.asarray(chunk_ids(TOTAL, INIT, CHUNK))
    expected = np.bincount(ids[train_idx], weights=w[train_idx], minlength=7)  # probabilities restricted to the split
    counts = chunk_counts(idx, SIZE)
    assert chisquare(counts, expected / expected.sum() * counts.sum()).pvalue > 1e-3
    uniform = np.bincount(ids[train_idx], minlength=7)
    assert chisquare(counts, uniform / uniform.sum() * counts.sum()).pvalue < 1e-12


def test_each_ablation_switch_changes_only_its_own_use(pmac_round):
    _, u, mass = pmac_round
    sizes = np.array([INIT] + [CHUNK] * 6)
    model_only, starts_only = PMAC(cfg_with(for_starts=False)), PMAC(cfg_with(for_model=False))
    # Model data: weighted with for_model, uniform (no trainer arguments) without.
    w = model_only.real_data_weights(u, filled(SIZE))
    assert "bootstrap" in model_only.model_train_args(np.asarray(w))
    assert starts_only.real_data_weights(u, filled(SIZE)) is None and starts_only.model_train_args(None) == {}
    # Starts: uniform with for_starts off, weighted with it on.
    c = chunk_counts(starts(model_only, u), SIZE)
    assert chisquare(c, sizes / sizes.sum() * c.sum()).pvalue > 1e-3
    c = chunk_counts(starts(starts_only, u), SIZE)
    assert chisquare(c, mass * c.sum()).pvalue > 1e-3
    # Weighted holdout: PMAC weights become loss weights (mean 1), with MBPO's uniform bootstrap.
    args = PMAC(cfg_with(holdout="weighted")).model_train_args(np.asarray(w))
    assert set(args) == {"weights"}
    np.testing.assert_allclose(np.asarray(args["weights"])[:SIZE].mean(), 1.0, rtol=1e-4)


def test_compose_routes_each_group_to_its_part(pmac_round):
    _, u_pmac, mass = pmac_round
    cfg = cfg_with()

    class HalfQ(ModelUsage):
        def sample_weights(self, usage, batch, is_real):
            return jnp.full_like(batch.reward, 0.5), jnp.ones_like(batch.reward)

    pm, agent = PMAC(cfg), HalfQ(cfg)
    combo = Compose(cfg, data=pm, starts=pm, agent=agent)
    assert len(combo.parts) == 3  # PMAC, HalfQ, and MBPO for the rollouts
    u = combo.init(jax.random.key(0), 4, 1)
    u = (u_pmac,) + u[1:]
    c = chunk_counts(jax.jit(combo.rollout_starts, static_argnums=3)(u, filled(SIZE), jax.random.key(1), 100_000)[0], SIZE)
    assert chisquare(c, mass * c.sum()).pvalue > 1e-3
    np.testing.assert_allclose(np.asarray(combo.real_data_weights(u, filled(SIZE))),
                               np.asarray(pm.real_data_weights(u_pmac, filled(SIZE))))
    q, pi = combo.sample_weights(u, filled(4).data, None)
    assert float(q[0]) == 0.5 and float(pi[0]) == 1.0
    with pytest.raises(ValueError, match="unknown seam group"):
        Compose(cfg, model=pm)


def test_tv_rule():
    # Known value: 1-D, s_old = 1, s = 2, mu_old - mu = 1 -> 0.5 sqrt(log(1/2) - 1 + 2 + 1).
    tv = tv_distance(jnp.array([[1.0]]), jnp.array([[0.0]]), jnp.array([[0.0]]), jnp.array([[np.log(2.0)]]))
    np.testing.assert_allclose(float(tv[0]), 0.5 * np.sqrt(np.log(0.5) + 2.0), rtol=1e-5)
    assert float(tv_distance(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2)), jnp.zeros((1, 2)))[0]) == 0.0
    cfg = cfg_with(weights="tv", tv_states=700)
    pm = PMAC(cfg)
    obs = jax.random.normal(jax.random.key(3), (TOTAL, 4))
    real = filled(SIZE)
    real = real.replace(data=real.data.replace(obs=obs))
    actor = mbrlax.agents.sac.sac_init(jax.random.key(4), 4, 1, cfg.sac).params["actor"]
    u = pm.init(jax.random.key(0), 4, 1)
    # Recorded policies drift away from the current one with age: older chunks have larger TV.
    rows = np.arange(TOTAL)
    mu = jnp.asarray(np.where(rows < SIZE, (SIZE - rows) / 500.0, 0.0)[:, None], jnp.float32)
    cur_mu, cur_ls = mbrlax.agents.sac._gaussian(actor, obs)
    u = {**u, "row_mu": cur_mu + mu, "row_log_std": cur_ls}
    mass = np.asarray(jax.jit(pm.on_model_round)(u, real, actor, jax.random.key(5))["mass"])
    per_row = mass / np.array([INIT] + [CHUNK] * (pm.n_chunks - 1))
    np.testing.assert_allclose(mass.sum(), 1.0, rtol=1e-5)
    old = per_row[1:6]
    assert np.all(np.diff(old) > 0)  # newer old chunks (smaller TV) weigh more
    np.testing.assert_allclose(per_row[0], 0.05 * per_row[1], rtol=1e-4)
    assert per_row[6] >= old.max() - 1e-9


def test_pmac_config_errors_and_presets():
    base = preset("Hopper-v5", "pmac")
    assert base.rollout.schedule == (20, 100, 1, 15) and base.sac.updates_per_step == 20
    assert preset("HalfCheetah-v5", "pmac").sac.updates_per_step == 20
    assert preset("HalfCheetah-v5").sac.updates_per_step == 40
    humanoid, humanoid_mbpo = preset("Humanoid-v5", "pmac"), preset("Humanoid-v5")
    assert (humanoid.model.train_freq, humanoid.rollout.batch_size) == (250, 100 * 250)  # Table 2: every 250 steps
    assert (humanoid_mbpo.model.train_freq, humanoid_mbpo.rollout.batch_size) == (1000, 100 * 1000)
    assert (base.model.train_freq, base.rollout.batch_size) == (250, 400 * 250)
    for field_value, name in [(dict(alpha=1.0), "pmac.alpha"), (dict(chunk_steps=0), "pmac.chunk_steps"),
                              (dict(weights="kl"), "pmac.weights"), (dict(holdout="x"), "pmac.holdout"),
                              (dict(for_model=False, for_starts=False), "pmac.for_model")]:
        with pytest.raises(ConfigError, match=name):
            validate(replace(base, pmac=PMACConfig(**field_value)))


def test_cli_help_shows_pmac_fields(capsys):
    from mbrlax.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--algo", "pmac", "--env", "Hopper-v5", "--help"])
    out = capsys.readouterr().out
    for flag in ("--pmac.alpha", "--pmac.chunk-steps", "--pmac.for-model", "--pmac.for-starts", "--pmac.holdout",
                 "--pmac.weights", "Policy-adaptation rate"):
        assert flag in out, flag


# --------------------------------------------------------------------------- diagnostics


def test_diagnostics_match_numpy():
    obs_dim, act_dim, n, window = 3, 2, 60, 30
    rng = np.random.default_rng(0)
    cfg = ModelConfig(ensemble_size=4, num_elites=2, hidden_size=16, num_layers=2, weight_decays=(0.0,) * 3)
    model = model_init(jax.random.key(0), obs_dim, act_dim, cfg)
    model = model.replace(elites=jnp.array([2, 0], jnp.int32), norm_mean=jnp.asarray(rng.normal(size=5), jnp.float32),
                          norm_std=jnp.asarray(rng.uniform(0.5, 2, 5), jnp.float32))
    # A trajectory with an episode end (done at 39) and a reset without done (break before 44).
    obs = np.zeros((n, obs_dim), np.float32)
    obs[0] = rng.normal(size=obs_dim)
    act = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    nxt = np.zeros_like(obs)
    done = np.zeros(n, np.float32)
    done[39] = 1
    for r in range(n):
        if r:
            obs[r] = rng.normal(size=obs_dim) if r in (40, 44) else nxt[r - 1]
        nxt[r] = obs[r] + 0.1 * rng.normal(size=obs_dim)
    reward = rng.normal(size=n).astype(np.float32)
    cap = 70
    buf = buffer_init(obs_dim, act_dim, cap)
    pad = lambda a: np.concatenate([a, np.zeros((cap - n,) + a.shape[1:], a.dtype)])
    data = buf.data.replace(obs=jnp.asarray(pad(obs)), action=jnp.asarray(pad(act)), reward=jnp.asarray(pad(reward)),
                            next_obs=jnp.asarray(pad(nxt)), done=jnp.asarray(pad(done)))
    real = Buffer(data=data, ptr=jnp.int32(n), size=jnp.int32(n))
    key = jax.random.key(9)
    got = jax.jit(model_diagnostics, static_argnums=3)(model, real, key, window)

    elites = [2, 0]
    target = lambda rows: np.concatenate([reward[rows, None], nxt[rows] - obs[rows]], 1)
    def mse(rows):
        pred = np_members(model, np.concatenate([obs[rows], act[rows]], 1))[0]
        return np.mean([np.mean((pred[e] - target(rows)) ** 2) for e in elites])
    np.testing.assert_allclose(float(got["model/local_error"]), mse(np.arange(n - window, n)), rtol=1e-4)
    old = np.asarray(jax.random.randint(key, (1000,), 0, n - window))
    np.testing.assert_allclose(float(got["model/global_error"]), mse(old), rtol=1e-4)
    for h in (1, 5, 10):
        errs = []
        for r in range(n - window, n - h + 1):
            rows = range(r, r + h)
            if any(done[q - 1] or not np.array_equal(nxt[q - 1], obs[q]) for q in rows if q > r):
                continue
            s = obs[r]
            for q in rows:
                pred = np_members(model, np.concatenate([s, act[q]])[None])[0][elites, 0, 1:].mean(0)
                s = s + pred
            errs.append(np.mean((s - nxt[r + h - 1]) ** 2))
        assert len(errs) > 0
        np.testing.assert_allclose(float(got[f"model/hstep_error_{h}"]), np.mean(errs), rtol=1e-4)


# --------------------------------------------------------------------------- runs


def tiny_pmac(tmp_path, **kw):
    return preset("InvertedPendulum-v5", "pmac", **{**TINY, "out": str(tmp_path / "run"),
                                                    "pmac": PMACConfig(chunk_steps=100), **kw})


def test_pmac_run_metrics_traces_and_state(tmp_path):
    dyna_mod.TRACE_COUNTS.clear()
    cfg = tiny_pmac(tmp_path, total_steps=500)
    run = mbrlax.train(cfg)
    traces = dict(dyna_mod.TRACE_COUNTS)
    for name in HOT_PATHS:
        assert traces.get(name) == 1, (name, traces)
    m = read_metrics(run.run_dir)
    np.testing.assert_array_equal(m["agent/updates"], [0, 200, 400, 600, 800])  # G = 2 per learning step
    for col in ("model/local_error", "model/global_error", "model/hstep_error_1", "model/hstep_error_5",
                "model/hstep_error_10"):
        assert np.all(np.isfinite(m[col][2:])) and np.isnan(m[col][1]), col  # none before the first training
    assert np.all(np.diff(m["time/wall"]) > 0)
    u = run.state.usage  # 4 model rounds at 100, 200, 300, 400 -> k = 3 chunks of 100 steps after chunk 0
    assert int(u["rounds"]) == 4 and int(u["chunks"]) == 3
    pm = make_usage(cfg)
    assert isinstance(pm, PMAC)
    np.testing.assert_allclose(np.asarray(u["mass"])[:4], [ALPHA**3, 0.1 * ALPHA**2, 0.1 * ALPHA, 0.1], rtol=1e-5)
    # the last row (500 rows: chunks 0-3 of 100 weighted, chunk 4's 100 rows not yet): the logged shares and the
    # effective sample size 1 / sum p^2 of the row probabilities W_c / n_c, as a fraction of the rows
    w = np.array([ALPHA**3, 0.1 * ALPHA**2, 0.1 * ALPHA, 0.1])
    assert m["pmac/newest_share"][-1] == pytest.approx(0.1, rel=1e-5)
    assert m["pmac/chunk0_share"][-1] == pytest.approx(ALPHA**3, rel=1e-5)
    assert m["pmac/ess_fraction"][-1] == pytest.approx(1 / np.sum(w**2 / 100) / 500, rel=1e-5)
    assert m["pmac/ess_fraction"][0] == pytest.approx(1.0)  # 100 exploration rows, uniform


def test_pmac_resume_after_kill_9_restores_strategy_state(tmp_path):
    out = tmp_path / "killed"
    kill_9_during_training(TINY_FLAGS + ["--algo", "pmac", "--pmac.chunk-steps", "100", "--total-steps", "1500"], out, rows=4)
    cfg = mbrlax.api.load_config(out)
    obs_dim, act_dim = mbrlax.api.env_dims(cfg)
    saved, meta = load_checkpoint(out, dyna_mod.init_run_state(cfg, obs_dim, act_dim))
    done_rounds = (meta["env_steps"] - 1 - 100) // 100 + 1  # rounds at steps 100, 200, ... < env_steps
    assert int(saved.usage["rounds"]) == done_rounds >= 2  # the checkpoint holds the strategy's state
    run = mbrlax.resume(out)
    np.testing.assert_array_equal(read_metrics(out)["env_steps"], np.arange(100, 1501, 100))
    u = run.state.usage  # as uninterrupted: 14 rounds (steps 100..1400), 13 chunks after chunk 0
    assert int(u["rounds"]) == 14 and int(u["chunks"]) == 13
    np.testing.assert_allclose(np.asarray(u["mass"]), closed_form(13, 15), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(read_metrics(out)["agent/updates"], 2 * np.maximum(np.arange(100, 1501, 100) - 100, 0))


def test_plot_against_agent_updates(tmp_path):
    from mbrlax.cli import main

    run = mbrlax.train(preset("InvertedPendulum-v5", "sac", **{**TINY, "total_steps": 300, "out": str(tmp_path / "sac")}))
    png = tmp_path / "updates.png"
    main(["plot", str(run.run_dir), "--x", "agent/updates", "--y", "eval_return", "-o", str(png)])
    assert png.stat().st_size > 1000
    np.testing.assert_array_equal(read_metrics(run.run_dir)["agent/updates"], [0, 200, 400])
