"""MEMR (Algorithm 1): the priority (Eq. 4), prioritized starts (Eq. 3), importance weights (Eq. 5),
the model-data policy pi_psi, the segmented model buffer, and MEMR runs."""

from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare, norm

import mbrlax
from mbrlax.agents.sac import sample_action
from mbrlax.algos import dyna as dyna_mod
from mbrlax.buffers import Buffer, buffer_add, buffer_init
from mbrlax.config import ConfigError, MEMRConfig, RolloutConfig, preset, validate
from mbrlax.nets import mlp_init
from mbrlax.run.checkpoint import load_checkpoint
from mbrlax.run.metrics import read_metrics
from mbrlax.types import Transition
from mbrlax.usage import make_usage
from mbrlax.usage.memr import MEMR, priority, psi_gaussian
from mbrlax.usage.sumtree import sumtree_build, sumtree_probs, sumtree_sample, sumtree_set

from conftest import check_pack_is_the_run_with_its_model_buffer_cleared, kill_9_during_training
from test_dyna import HOT_PATHS, TINY, TINY_FLAGS

OBS, ACT, SEG, TOTAL = 4, 2, 50, 2000


def small(**memr):
    """MEMR with 50 start states per generation and a model buffer of 10 segments."""
    return preset("InvertedPendulum-v5", "memr", total_steps=TOTAL,
                  rollout=replace(RolloutConfig(), batch_size=SEG, real_ratio=0.0),
                  memr=MEMRConfig(**{"model_buffer_size": 10 * SEG, **memr}))


def filled(size, cap=TOTAL, seed=0):
    rng = np.random.default_rng(seed)
    b = buffer_init(OBS, ACT, cap)
    data = b.data.replace(obs=jnp.asarray(rng.normal(size=(cap, OBS)), jnp.float32),
                          action=jnp.asarray(rng.uniform(-0.95, 0.95, (cap, ACT)), jnp.float32))
    return Buffer(data=data, ptr=jnp.int32(size % cap), size=jnp.int32(size))


def random_priorities(n=TOTAL, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.01, 5.0, n), jnp.float32)


def with_priorities(m, size, seed=1):
    """The initial MEMR state after `size` real rows got random priorities."""
    u = m.init(jax.random.key(0), OBS, ACT)
    return m.set_priorities(u, jnp.arange(size), random_priorities(size, seed))


def test_sum_tree_totals_updates_and_draws_match_numpy():
    rng = np.random.default_rng(0)
    masses = rng.uniform(0, 1, 37)
    tree = sumtree_build(jnp.asarray(masses, jnp.float32))
    assert tree.shape == (128,) and float(tree[1]) == pytest.approx(masses.sum(), rel=1e-6)
    for _ in range(20):  # random updates, with repeated rows and zeros
        rows = rng.integers(0, 37, 8)
        rows[1] = rows[0]
        vals = rng.uniform(0, 2, 8) * (rng.uniform(size=8) > 0.2)
        vals[1] = vals[0]
        tree = sumtree_set(tree, jnp.asarray(rows), jnp.asarray(vals, jnp.float32))
        masses[rows] = vals
    np.testing.assert_allclose(tree[64:64 + 37], masses, rtol=1e-6)
    np.testing.assert_allclose(tree[1], masses.sum(), rtol=1e-5)
    idx = np.asarray(sumtree_sample(tree, jax.random.key(1), 200_000))
    counts = np.bincount(idx, minlength=64)
    assert counts[:37][masses == 0].sum() == 0 and counts[37:].sum() == 0  # never a zero-mass or padding row
    pos = masses > 0
    assert chisquare(counts[:37][pos], masses[pos] / masses[pos].sum() * len(idx)).pvalue > 1e-3
    np.testing.assert_allclose(sumtree_probs(tree, jnp.arange(37)), masses / masses.sum(), rtol=1e-5)


def test_priority_is_eq4_from_the_gaussian_log_density():
    rng = np.random.default_rng(0)
    for act_dim in (1, 3):
        psi = mlp_init(jax.random.key(act_dim), [OBS, 16, 16, 2 * act_dim])
        obs = rng.normal(size=(64, OBS)).astype(np.float32)
        act = rng.uniform(-0.99, 0.99, (64, act_dim)).astype(np.float32)
        mu, log_std = (np.asarray(x, np.float64) for x in psi_gaussian(psi, obs))
        u, sigma = np.arctanh(act.astype(np.float64)), np.exp(log_std)
        if act_dim == 1:  # Eq. 4 as printed: -log(sqrt(2 pi) pi_psi(a|s) sigma)
            expected = -np.log(np.sqrt(2 * np.pi) * norm.pdf(u, mu, sigma) * sigma)[:, 0]
        else:  # SPECS B1: -(log pi_psi(u|s) / d + mean log sigma + 0.5 log 2 pi)
            expected = -(norm.logpdf(u, mu, sigma).sum(-1) / act_dim + np.log(sigma).mean(-1) + 0.5 * np.log(2 * np.pi))
        assert np.mean((expected > 1e-4) & (expected < 50)) > 0.9  # mostly unclipped
        np.testing.assert_allclose(priority(psi, obs, act), np.clip(expected, 1e-4, 50.0), rtol=1e-4, atol=1e-6)


def test_start_states_are_drawn_with_p_to_the_alpha():
    m = MEMR(small())
    size = 40
    u = with_priorities(m, size)
    draw = jax.jit(lambda k: m.rollout_starts(u, filled(size), k, 20_000)[0])
    idx = np.concatenate([np.asarray(draw(jax.random.key(i))) for i in range(5)])
    assert idx.min() >= 0 and idx.max() < size  # only rows that exist
    p = np.asarray(u["priority"][:size], np.float64) ** 0.6
    counts = np.bincount(idx, minlength=size)
    assert chisquare(counts, p / p.sum() * len(idx)).pvalue > 1e-3
    assert chisquare(counts).pvalue < 1e-6  # and not uniform


def test_importance_weights_and_the_beta_schedule():
    m = MEMR(small())
    for step, beta in ((0, 0.4), (500, 0.55), (1000, 0.7), (2000, 1.0), (3000, 1.0)):
        assert float(m.beta(step)) == pytest.approx(beta)
    size = 1000
    P = np.asarray(random_priorities(size), np.float64) ** 0.6
    P /= P.sum()
    for norm_name, reduce in (("max", np.max), ("mean", np.mean)):
        mm = MEMR(small(is_norm=norm_name))
        u = with_priorities(mm, size)
        idx, w = mm.rollout_starts(u, filled(size), jax.random.key(3), SEG)
        raw = (size * P[np.asarray(idx)]) ** -0.7  # Eq. 5 at beta(1000) = 0.7
        np.testing.assert_allclose(w, raw / reduce(raw), rtol=1e-4)


def test_alpha_zero_is_the_uniform_control_with_unit_weights():
    m = MEMR(small(alpha=0.0))
    u = with_priorities(m, 300)
    probs = np.asarray(sumtree_probs(u["tree"], jnp.arange(TOTAL)))
    np.testing.assert_allclose(probs[:300], 1 / 300, rtol=1e-5)
    assert np.all(probs[300:] == 0)
    idx, w = m.rollout_starts(u, filled(300), jax.random.key(1), 30_000)
    np.testing.assert_allclose(w, 1.0, rtol=1e-5)
    counts = np.bincount(np.asarray(idx), minlength=300)
    assert len(counts) == 300 and chisquare(counts).pvalue > 1e-3


def generations(n):
    """A model buffer of 10 segments after n generations of SEG rows; reward = the generation's number."""
    buf = buffer_init(OBS, ACT, 10 * SEG)
    for g in range(n):
        z = jnp.zeros((SEG, OBS))
        buf = buffer_add(buf, Transition(z, jnp.zeros((SEG, ACT)), jnp.full(SEG, float(g)), z, jnp.zeros(SEG)))
    return buf


@pytest.mark.parametrize("n_gen, held", [(4, range(0, 4)), (13, range(3, 13))])
def test_each_agent_minibatch_comes_from_one_uniformly_drawn_segment(n_gen, held):
    cfg = small()
    cfg = replace(cfg, sac=replace(cfg.sac, batch_size=64))
    m = MEMR(cfg)
    u = {**m.init(jax.random.key(0), OBS, ACT), "is_weight": jnp.arange(10 * SEG, dtype=jnp.float32)}  # = row
    imagined = generations(n_gen)
    draw = jax.jit(lambda k: m.agent_batch(u, filled(100), imagined, 0, k))
    seen = []
    for i in range(1000):
        b = draw(jax.random.key(i))
        gen = np.asarray(b.reward)
        assert np.all(gen == gen[0]), gen  # one segment per minibatch
        first = (int(gen[0]) % 10) * SEG  # where that generation was written
        rows = np.asarray(b.q_weight).astype(int)
        assert np.all((rows >= first) & (rows < first + SEG))  # Q weights are those rows' IS weights
        np.testing.assert_array_equal(b.pi_weight, 1.0)  # the policy loss is unweighted
        seen.append(int(gen[0]))
    counts = np.bincount(seen, minlength=n_gen)
    assert set(np.flatnonzero(counts)) == set(held)  # every held segment, and only those
    assert chisquare(counts[list(held)]).pvalue > 1e-3  # uniformly


def test_real_rows_in_agent_minibatches_weigh_one():
    cfg = small()
    cfg = replace(cfg, sac=replace(cfg.sac, batch_size=64), rollout=replace(cfg.rollout, real_ratio=0.25))
    m = MEMR(cfg)
    u = {**m.init(jax.random.key(0), OBS, ACT), "is_weight": jnp.full(10 * SEG, 0.5)}
    b = m.agent_batch(u, filled(100), generations(3), 0, jax.random.key(0))
    np.testing.assert_array_equal(b.q_weight, [1.0] * 16 + [0.5] * 48)
    real_obs = np.asarray(filled(100).data.obs[:100])
    assert all(any(np.array_equal(o, r) for r in real_obs) for o in np.asarray(b.obs[:16]))


def test_pi_psi_recovers_a_known_gaussian_policy():
    m = MEMR(small(psi_lr=1e-3, psi_hidden=64))
    rng = np.random.default_rng(0)
    A, b, sigma = rng.normal(size=(OBS, ACT)) * 0.5, np.array([0.2, -0.3]), np.array([0.3, 0.6])

    def data(n):
        s = rng.normal(size=(n, OBS))
        return s.astype(np.float32), np.tanh(s @ A + b + sigma * rng.normal(size=(n, ACT))).astype(np.float32)

    u = m.init(jax.random.key(0), OBS, ACT)
    psi, opt = u["psi"], u["psi_opt"]
    fit = jax.jit(m.fit_psi)
    for i in range(600):  # online, as in the loop: D epochs on each fresh segment of 400 pairs
        psi, opt, nll = fit(psi, opt, *data(400), jax.random.key(i))
    s, _ = data(2000)
    mu, log_std = (np.asarray(x) for x in psi_gaussian(psi, s))
    assert np.sqrt(np.mean((mu - (s @ A + b)) ** 2)) < 0.1
    np.testing.assert_allclose(np.exp(log_std).mean(0), sigma, rtol=0.15)
    true_nll = np.sum(np.log(sigma) + 0.5 * np.log(2 * np.pi * np.e))  # entropy of the pre-tanh Gaussian
    assert abs(float(nll) - true_nll) < 0.1


def test_after_rollout_refreshes_only_the_sampled_priorities():
    m = MEMR(small())
    u = {**with_priorities(m, 200), "segments": jnp.int32(12)}
    real = filled(200)
    idx = jnp.asarray(np.random.default_rng(2).permutation(200)[:SEG])
    actor = mlp_init(jax.random.key(5), [OBS, 32, 32, 2 * ACT])
    obs = real.data.obs[idx]
    act, _ = sample_action(actor, obs, jax.random.key(6))
    trs = Transition(obs[None], act[None], jnp.zeros((1, SEG)), obs[None], jnp.zeros((1, SEG)))
    w = jnp.linspace(0.1, 1.0, SEG)
    key = jax.random.key(7)
    new = m.after_rollout(u, idx, w, trs, jnp.ones((1, SEG), bool), None, actor, key)

    old_p, new_p = np.asarray(u["priority"]), np.asarray(new["priority"])
    others = np.setdiff1d(np.arange(TOTAL), np.asarray(idx))
    np.testing.assert_array_equal(new_p[others], old_p[others])  # untouched
    fresh, _ = sample_action(actor, obs, jax.random.split(key)[1])  # the fresh action a' ~ pi_phi(s_j)
    np.testing.assert_allclose(new_p[np.asarray(idx)], priority(new["psi"], obs, fresh), rtol=1e-5)
    assert not np.allclose(new_p[np.asarray(idx)], old_p[np.asarray(idx)])
    np.testing.assert_allclose(sumtree_probs(new["tree"], jnp.arange(TOTAL)), new_p**0.6 / np.sum(new_p**0.6),
                               rtol=1e-4, atol=1e-9)  # the tree holds the new p^a
    assert not np.allclose(np.asarray(new["psi"][0]["w"]), np.asarray(u["psi"][0]["w"]))  # pi_psi was fitted
    first = (12 % 10) * SEG  # generation 12 goes to segment 2 of 10
    np.testing.assert_allclose(np.asarray(new["is_weight"])[first:first + SEG], w)
    np.testing.assert_array_equal(np.delete(np.asarray(new["is_weight"]), np.s_[first:first + SEG]), 1.0)
    assert int(new["segments"]) == 13


def test_memr_config_errors_presets_and_help(capsys):
    cfg = preset("Hopper-v5", "memr")
    assert (cfg.sac.updates_per_step, cfg.rollout.batch_size, cfg.rollout.real_ratio) == (5, 400, 0.0)
    m = make_usage(cfg)
    assert isinstance(m, MEMR) and m.max_horizon() == 1 and m.rollout_horizon(100) == 1
    assert m.imagined_capacity() == 1_000_000 and m.rollout_due(7) and not MEMR(small(every=50)).rollout_due(7)
    for bad, field in ((dict(alpha=-1.0), "memr.alpha"), (dict(beta_end=1.5), "memr.beta_end"),
                       (dict(every=0), "memr.every"), (dict(model_buffer_size=10), "memr.model_buffer_size"),
                       (dict(psi_lr=0.0), "memr.psi_lr")):
        with pytest.raises(ConfigError, match=field):
            validate(small(**bad))
    from mbrlax.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--algo", "memr", "--help"])
    out = capsys.readouterr().out
    assert "--memr.alpha" in out and "Prioritization exponent" in out and "--memr.every" in out


# --------------------------------------------------------------------------- runs


def tiny_memr(tmp_path, **kw):
    return preset("InvertedPendulum-v5", "memr", **{
        **TINY, "out": str(tmp_path / "run"), "rollout": replace(TINY["rollout"], batch_size=SEG, real_ratio=0.0),
        "memr": MEMRConfig(model_buffer_size=100 * SEG), **kw})


def test_memr_run_metrics_traces_and_state(tmp_path):
    dyna_mod.TRACE_COUNTS.clear()
    run = mbrlax.train(tiny_memr(tmp_path))  # 400 steps, 100 exploration, G = 2
    for name in HOT_PATHS:
        assert dyna_mod.TRACE_COUNTS.get(name) == 1, (name, dict(dyna_mod.TRACE_COUNTS))
    m = read_metrics(run.run_dir)
    np.testing.assert_array_equal(m["rollout/model_transitions"][1:], [100 * SEG, 200 * SEG, 300 * SEG])
    np.testing.assert_array_equal(m["agent/updates"], [0, 200, 400, 600])
    assert np.all(m["rollout/horizon"][1:] == 1)
    for col in ("memr/priority_mean", "memr/is_weight_min", "memr/is_weight_mean", "memr/pi_psi_nll"):
        assert np.all(np.isfinite(m[col][1:])), col
    assert np.all((m["memr/is_weight_min"][1:] > 0) & (m["memr/is_weight_min"][1:] <= m["memr/is_weight_mean"][1:]))
    assert np.all(m["memr/is_weight_mean"][1:] <= 1)  # normalized by the segment's max
    u = run.state.usage
    assert int(u["segments"]) == 300 and int(run.state.imagined.size) == 100 * SEG  # wrapped 3 times
    prio = np.asarray(u["priority"])
    assert np.all(prio[:400] > 0) and np.all(prio[400:] == 0)  # every real row got its priority on insertion


def test_memr_resume_after_kill_9_continues_the_strategy_state(tmp_path):
    out = tmp_path / "killed"
    flags = TINY_FLAGS + ["--algo", "memr", "--rollout.batch-size", str(SEG), "--rollout.real-ratio", "0",
                          "--memr.model-buffer-size", str(100 * SEG), "--total-steps", "1000"]
    kill_9_during_training(flags, out, rows=4)
    cfg = mbrlax.api.load_config(out)
    saved, meta = load_checkpoint(out, dyna_mod.init_run_state(cfg, *mbrlax.api.env_dims(cfg)))
    assert int(saved.usage["segments"]) == meta["env_steps"] - 100 >= 200  # one generation per learning step
    run = mbrlax.resume(out)
    m = read_metrics(out)
    np.testing.assert_array_equal(m["env_steps"], np.arange(100, 1001, 100))  # no gap, no duplicate
    np.testing.assert_array_equal(m["rollout/model_transitions"][1:], SEG * np.arange(100, 901, 100))
    assert int(run.state.usage["segments"]) == 900


def test_memr_pack_resets_the_importance_weights_of_the_dropped_model_rows(tmp_path):
    cfg = tiny_memr(tmp_path)
    mbrlax.train(cfg, stop_at=200)
    packed, _ = check_pack_is_the_run_with_its_model_buffer_cleared(
        Path(cfg.out), tmp_path, {"state.usage['is_weight']": 1.0})
    assert int(packed.state.usage["segments"]) == 300  # the segments stay aligned with the buffer's ptr
