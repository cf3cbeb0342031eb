"""Model training split over devices (mbrlax/parallel.py) gives the unsplit result."""

import warnings
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbrlax
from mbrlax.config import ConfigError, ModelConfig
from mbrlax.models.dynamics import make_dynamics, make_trainer
from mbrlax.models.ensemble import model_init
from mbrlax.models.trainer import ModelTrainer
from mbrlax.parallel import auto_device_count

CFG = ModelConfig(hidden_size=32, max_epochs=6, batch_size=64)


def _data(n=1200, cap=1500, obs_dim=3, act_dim=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(cap, obs_dim + act_dim)).astype(np.float32)
    y = np.concatenate([np.sin(x[:, :1]), 0.5 * x[:, :obs_dim] * x[:, -1:]], 1)
    y += 0.05 * rng.normal(size=y.shape)
    return jnp.asarray(x), jnp.asarray(y.astype(np.float32)), n


def _train_twice(cfg, init, trainer_of):
    """Two warm-started trainings (as in the Dyna loop), at fixed seeds."""
    x, y, n = _data()
    trainer = trainer_of(cfg)
    state = init(jax.random.key(0), 3, 1, cfg)
    infos = []
    for seed in (1, 2):
        state, info = trainer.train(state, x, y, n, np.random.default_rng(seed))
        infos.append(info)
    return trainer, state, infos


@pytest.mark.parametrize("ensemble_size", [7, 2])  # 7 over 2 devices needs one zero member; 2 needs none
def test_split_training_matches_one_device(ensemble_size):
    cfg = replace(CFG, ensemble_size=ensemble_size, num_elites=min(5, ensemble_size))
    runs = {d: _train_twice(replace(cfg, devices=d), model_init, ModelTrainer) for d in (1, 2)}
    assert runs[1][0].split.n_devices == 1 and runs[2][0].split.n_devices == 2
    (_, one, info1), (_, two, info2) = runs[1], runs[2]
    for a, b in zip(info1, info2):
        assert a["model/epochs"] == b["model/epochs"]
        np.testing.assert_allclose(a["model/train_loss"], b["model/train_loss"], rtol=1e-4)
        np.testing.assert_allclose(a["model/holdout_mse"], b["model/holdout_mse"], rtol=1e-4)
    np.testing.assert_array_equal(one.elites, two.elites)
    np.testing.assert_allclose(one.holdout_mse, two.holdout_mse, rtol=1e-4)
    # Same parameters and optimizer state, same shapes (the zero member is gone), on one device.
    for a, b in zip(jax.tree.leaves((one.params, one.opt_state)), jax.tree.leaves((two.params, two.opt_state))):
        assert a.shape == b.shape
        assert b.devices() == {jax.devices()[0]}
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_split_training_of_a_mixture_density_network_matches():
    """The MDN shares its target standardizer across members (no penalty term)."""
    dyn = make_dynamics("mdn", 2)
    cfg = replace(CFG, ensemble_size=3, num_elites=2)
    runs = [_train_twice(replace(cfg, devices=d), dyn.init, lambda c: make_trainer(dyn, c)) for d in (1, 2)]
    (_, one, info1), (_, two, info2) = runs
    np.testing.assert_allclose(info1[-1]["model/train_loss"], info2[-1]["model/train_loss"], rtol=1e-4)
    np.testing.assert_array_equal(one.elites, two.elites)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)


def test_zero_members_stay_zero_and_are_dropped():
    trainer = ModelTrainer(replace(CFG, devices=2))
    split = trainer.split
    state = model_init(jax.random.key(0), 3, 1, trainer.cfg)
    params, opt_state = split.place(state.params, trainer.opt, state.opt_state)
    assert split.padded_size == 8 and params["layers"][0]["w"].shape[0] == 8
    assert not np.any(np.asarray(params["layers"][0]["w"][7])) and params["max_logvar"].shape == (4,)
    x, y, _ = _data()
    placed = trainer.place(state, x, y, jnp.ones(x.shape[0]))
    idx = np.random.default_rng(0).integers(0, 1000, (4, 7, 64)).astype(np.int32)
    new_params, new_opt, loss = trainer._train_chunk(
        *placed[:2], *placed[2:], trainer.pad_members(idx, 0), trainer.pad_members(np.ones(idx.shape, bool), False)
    )
    assert np.isfinite(float(loss))
    for leaf in jax.tree.leaves(new_params["layers"]):
        assert not np.any(np.asarray(leaf[7]))  # zero gradients: the padded member never moves
    assert np.any(np.asarray(new_params["layers"][0]["w"][0] != params["layers"][0]["w"][0]))
    back, back_opt = split.unplace(new_params, trainer.opt, new_opt)
    assert back["layers"][0]["w"].shape[0] == 7 and back["layers"][0]["w"].devices() == {jax.devices()[0]}
    for a, b in zip(jax.tree.leaves(back_opt), jax.tree.leaves(state.opt_state)):
        assert a.shape == b.shape


@pytest.mark.parametrize("members,cores,want", [
    (7, 1, 1), (7, 2, 2), (7, 3, 3), (7, 4, 4), (7, 5, 4), (7, 6, 4), (7, 7, 7), (7, 16, 7), (1, 16, 1), (5, 2, 2),
])
def test_auto_device_count(members, cores, want):
    assert auto_device_count(members, cores) == want


def test_too_many_devices_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.devices=3: JAX has 2 cpu device"):
        ModelTrainer(replace(CFG, devices=3))


def test_configure_warns_once_jax_has_started_with_fewer_devices():
    jax.devices()  # the test session's backend has started with 2 CPU devices (conftest.py)
    with pytest.warns(UserWarning, match=r"JAX started before mbrlax .*\(2 CPU device\(s\), 4 wanted"):
        assert mbrlax.configure(cpu_devices=4) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mbrlax.configure(cpu_devices=2) == 2  # what is there already: no warning
