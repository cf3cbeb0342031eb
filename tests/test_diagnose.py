"""`mbrlax diagnose`: per-output one-step error, open-loop h-step error and calibration against a NumPy
computation on a small hand-made case; the held-out rows; bad runs. (The CLI on a trained run:
tests/test_custom_env.py, the README's example.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrlax.buffers import Buffer, buffer_init
from mbrlax.cli import main
from mbrlax.config import ConfigError, ModelConfig, preset
from mbrlax.diagnose import csv_rows, diagnose_model, held_out_rows
from mbrlax.models.diagnostics import elite_mse
from mbrlax.models.ensemble import model_init

from test_models import np_members


def hand_made(n=40, obs_dim=3, act_dim=2):
    """A model with chosen elites and input normalizer, and a trajectory with an episode end (done at 19)
    and a reset without done (before row 27), in a buffer with a few more rows than the case."""
    rng = np.random.default_rng(0)
    cfg = ModelConfig(ensemble_size=4, num_elites=2, hidden_size=16, num_layers=2, weight_decays=(0.0,) * 3)
    model = model_init(jax.random.key(0), obs_dim, act_dim, cfg)
    model = model.replace(elites=jnp.array([3, 1], jnp.int32),
                          norm_mean=jnp.asarray(rng.normal(size=obs_dim + act_dim), jnp.float32),
                          norm_std=jnp.asarray(rng.uniform(0.5, 2, obs_dim + act_dim), jnp.float32))
    obs, nxt = np.zeros((n, obs_dim), np.float32), np.zeros((n, obs_dim), np.float32)
    act = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    done = np.zeros(n, np.float32)
    done[19] = 1
    obs[0] = rng.normal(size=obs_dim)
    for r in range(n):
        if r:
            obs[r] = rng.normal(size=obs_dim) if r in (20, 27) else nxt[r - 1]
        nxt[r] = obs[r] + rng.normal(size=obs_dim).astype(np.float32)  # errors of about the predicted std
    reward = rng.normal(size=n).astype(np.float32)
    cap = n + 5
    pad = lambda a: jnp.asarray(np.concatenate([a, np.zeros((cap - n,) + a.shape[1:], a.dtype)]))
    buf = buffer_init(obs_dim, act_dim, cap)
    data = buf.data.replace(obs=pad(obs), action=pad(act), reward=pad(reward), next_obs=pad(nxt), done=pad(done))
    return model, Buffer(data=data, ptr=jnp.int32(n), size=jnp.int32(n)), (obs, act, reward, nxt, done)


def test_diagnostics_match_numpy():
    model, real, (obs, act, reward, nxt, done) = hand_made()
    start, end, horizon = 8, 40, 6
    got = diagnose_model(model, real, start, end, horizon)

    rows = np.arange(start, end)
    elites = [3, 1]
    mean, lv = np_members(model, np.concatenate([obs[rows], act[rows]], 1))
    mean, var = mean[elites], np.exp(lv[elites])
    y = np.concatenate([reward[rows, None], nxt[rows] - obs[rows]], 1)
    np.testing.assert_allclose(got["mse"], ((mean - y) ** 2).mean(axis=(0, 1)), rtol=1e-4)
    z = np.abs(y - mean.mean(0)) / np.sqrt(var.mean(0) + mean.var(0))
    for k in (1, 2):
        np.testing.assert_array_equal(got[f"within_{k}std"], (z <= k).mean(0))
        assert 0.1 < got[f"within_{k}std"].mean() < 1.0  # the case is not trivially (un)calibrated
    # The per-output errors average to the run's own one-step metric (model/local_error, holdout_mse).
    mask = jnp.ones(len(rows), bool)
    np.testing.assert_allclose(got["mse"].mean(), elite_mse(model, obs[rows], act[rows], reward[rows], nxt[rows], mask),
                               rtol=1e-5)

    expected = []
    for h in range(1, horizon + 1):
        errs = []
        for r in range(start, end - h + 1):
            if any(done[q - 1] or not np.array_equal(nxt[q - 1], obs[q]) for q in range(r + 1, r + h)):
                continue  # the stretch crosses an episode end or a reset
            s = obs[r]
            for q in range(r, r + h):
                s = s + np_members(model, np.concatenate([s, act[q]])[None])[0][elites, 0, 1:].mean(0)
            errs.append(np.mean((s - nxt[r + h - 1]) ** 2))
        expected.append(np.mean(errs))
    np.testing.assert_allclose(got["hstep_mse"], expected, rtol=1e-4)
    assert np.all(np.diff(expected) > 0)  # open-loop errors grow with h here

    rows_csv = csv_rows(got, end - start)
    assert rows_csv[0] == ("held_out_rows", "", "", 32)
    assert ("one_step_mse", "next_obs[2]", 1, got["mse"][3]) in rows_csv
    assert [r[2:] for r in rows_csv if r[0] == "hstep_mse"] == [(h, v) for h, v in zip(range(1, 7), got["hstep_mse"])]


@pytest.mark.parametrize("env_steps, rows", [(400, (300, 400)), (350, (300, 350)), (301, (300, 301)),
                                             (300, (200, 300)), (101, (100, 101))])
def test_held_out_rows_are_the_ones_after_the_last_model_training(env_steps, rows):
    cfg = preset("InvertedPendulum-v5", init_steps=100, model=ModelConfig(train_freq=100))
    assert held_out_rows(cfg, env_steps) == rows


def test_diagnose_refuses_runs_without_a_trained_ensemble(tmp_path, capsys):
    cfg = preset("InvertedPendulum-v5", init_steps=100, model=ModelConfig(train_freq=100))
    with pytest.raises(ConfigError, match="never trained.*init_steps=100"):
        held_out_rows(cfg, 100)
    (tmp_path / "config.json").write_text(json.dumps(preset("InvertedPendulum-v5", "sac").to_dict()))
    with pytest.raises(SystemExit) as e:
        main(["diagnose", str(tmp_path)])
    assert e.value.code == 2 and "is a sac run" in capsys.readouterr().err
