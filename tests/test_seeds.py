"""Several seeds in one process (`mbrlax train --seeds`, mbrlax/seeds.py): each seed of a vmapped run matches the
single-seed run of that seed over its first model training and agent updates, early stopping ends per seed, and
the seed directories are ordinary runs, resumed together or alone."""

import shutil
from dataclasses import replace

import jax
import numpy as np
import pytest

import mbrlax
from mbrlax.algos import dyna as dyna_mod
from mbrlax.api import load_config
from mbrlax.cli import main
from mbrlax.config import ConfigError, preset
from mbrlax.run.checkpoint import CheckpointError
from mbrlax.run.metrics import read_metrics

from test_dyna import TINY, TINY_FLAGS

ENV = "InvertedPendulum-v5"


def _leaves(tree) -> list[np.ndarray]:
    as_array = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    return [np.asarray(as_array(x)) for x in jax.tree.leaves(tree)]


def test_each_vmapped_seed_matches_its_single_seed_run(tmp_path):
    # patience 1: early stopping ends seed 2's first training after 3 epochs and seed 1's at max_epochs (checked)
    cfg = preset(ENV, "mbpo", **{**TINY, "model": replace(TINY["model"], patience=1, max_epochs=40)})
    stop = cfg.init_steps + 1  # the first model training, the first rollouts, the first G agent updates
    single = [mbrlax.train(replace(cfg, seed=s, out=str(tmp_path / f"single_{s}")), stop_at=stop) for s in (1, 2)]
    dyna_mod.TRACE_COUNTS.clear()
    multi = mbrlax.train_seeds(replace(cfg, out=str(tmp_path / "multi")), "1,2", stop_at=stop)
    assert [r.run_dir for r in multi] == [tmp_path / "multi" / "seed_1", tmp_path / "multi" / "seed_2"]
    for one, many in zip(single, multi):
        assert many.config == replace(one.config, out=str(many.run_dir))
        for part in ("real", "model", "imagined", "agent"):
            for a, b in zip(_leaves(getattr(one.state, part)), _leaves(getattr(many.state, part)), strict=True):
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=part)
        m1, m2 = one.metrics, many.metrics
        np.testing.assert_array_equal(m2["env_steps"], m1["env_steps"])
        np.testing.assert_array_equal(m2["model/epochs"], m1["model/epochs"])
        for col in ("model/train_loss", "model/holdout_mse", "sac/q_loss", "sac/pi_loss", "rollout/transitions"):
            np.testing.assert_allclose(m2[col], m1[col], rtol=1e-4, atol=1e-5, err_msg=col)
    epochs = [int(r.metrics["model/epochs"][-1]) for r in multi]
    assert epochs[1] < epochs[0] == 40, epochs  # seed 2 stopped first and stayed frozen while seed 1 trained
    assert all(dyna_mod.TRACE_COUNTS[k] == 1 for k in ("agent_step", "rollout", "act")), dict(dyna_mod.TRACE_COUNTS)


def test_seed_directories_resume_together_or_alone(tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "multi"
    main(["train", *TINY_FLAGS, "--seeds", "0-1", "--out", str(ref)])  # uninterrupted, through the CLI
    assert "seed_0" in capsys.readouterr().out
    cfg = replace(load_config(ref / "seed_0"), out=str(out))  # the CLI's config
    mbrlax.train_seeds(cfg, [0, 1], stop_at=200)
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)  # for the second part
    main(["resume", str(out)])  # both seeds, vmapped again
    runs = mbrlax.resume(out, stop_at=400)  # (finished: nothing to do) the Runs of both seeds
    for s, run in zip((0, 1), runs, strict=True):
        want, got = read_metrics(ref / f"seed_{s}"), read_metrics(out / f"seed_{s}")
        np.testing.assert_array_equal(got["env_steps"], [100, 200, 300, 400])  # no gap, no duplicate
        assert int(run.state.real.size) == 400 and run.config.seed == s  # every real transition kept
        for col in ("eval_return", "model/train_loss", "sac/q_loss"):  # the same run up to the stop
            np.testing.assert_array_equal(got[col][:2], want[col][:2], err_msg=col)

    # A seed directory is an ordinary run: resumed alone, then the seeds no longer resume together.
    run = mbrlax.resume(alone / "seed_1", stop_at=300)
    np.testing.assert_array_equal(run.metrics["env_steps"], [100, 200, 300])
    with pytest.raises(CheckpointError, match="different env steps"):
        mbrlax.resume(alone)
    assert np.isfinite(mbrlax.load(alone / "seed_1").evaluate(episodes=1)[0])


def test_bad_seeds_are_refused(tmp_path):
    cfg = preset(ENV, "mbpo", **TINY, out=str(tmp_path / "x"))
    for seeds, message in (("1,1", "appears twice"), ("3-1", "range"), ("a", "expected seeds")):
        with pytest.raises(ConfigError, match=message):
            mbrlax.train_seeds(cfg, seeds)
    with pytest.raises(ConfigError, match="algo=dam"):
        mbrlax.train_seeds(preset("IcyRoad-v0", "dam", out=str(tmp_path / "d")), "0,1")
    with pytest.raises(ConfigError, match=r"seed=-1: must be >= 0"):
        mbrlax.train(replace(cfg, seed=-1))
    assert not (tmp_path / "x").exists()
