"""Tests of mbrlax.run (checkpoints, metrics, progress) and mbrlax.plot."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from mbrlax.plot import _group_curve, _run_curve, group_runs, plot_runs
from mbrlax.run import (CheckpointError, MetricsLogger, ProgressBar, has_checkpoint,
                        load_checkpoint, read_metrics, save_checkpoint)
from mbrlax.run.checkpoint import CKPT_NAME, PREV_NAME, checkpoint_dir


# --------------------------------------------------------------------------- checkpoints


@struct.dataclass
class Inner:
    weights: jax.Array
    counts: jax.Array


@struct.dataclass
class State:
    inner: Inner
    key: jax.Array
    raw_key: jax.Array
    buffers: dict
    half: jax.Array


def make_state(seed: int = 0, n: int = 4) -> State:
    """A nested state with several dtypes, a typed key, a raw key and a dict."""
    rng = np.random.default_rng(seed)
    return State(
        inner=Inner(weights=jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
                    counts=jnp.asarray(rng.integers(0, 100, size=(n,)), jnp.int32)),
        key=jax.random.split(jax.random.key(seed), 2),
        raw_key=jax.random.PRNGKey(seed + 1),
        buffers={"obs": jnp.asarray(rng.normal(size=(n, 2)), jnp.float16),
                 "done": jnp.asarray(rng.integers(0, 2, size=(n,)), bool),
                 "step": jnp.asarray(seed, jnp.uint8)},
        half=jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16),
    )


def assert_same_state(a: State, b: State) -> None:
    """Same structure and bit-identical leaves (typed keys compared by key data)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert jnp.issubdtype(b.key.dtype, jax.dtypes.prng_key)
    a, b = (s.replace(key=jax.random.key_data(s.key)) for s in (a, b))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert isinstance(y, jax.Array)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_checkpoint_round_trip(tmp_path):
    state, meta = make_state(1), {"env_steps": 1234, "eval_rows": 5, "note": "x"}
    assert not has_checkpoint(tmp_path)
    path = save_checkpoint(tmp_path, state, meta)
    assert path == tmp_path / "checkpoints" / CKPT_NAME and has_checkpoint(tmp_path)
    restored, restored_meta = load_checkpoint(tmp_path, make_state(0))
    assert restored_meta == meta
    assert_same_state(state, restored)
    # the restored key is usable as a typed key
    jax.random.normal(restored.key[0], (2,))


def test_checkpoint_shape_mismatch_names_leaf(tmp_path):
    save_checkpoint(tmp_path, make_state(0, n=4), {})
    with pytest.raises(CheckpointError, match=r"inner\.weights.*different config"):
        load_checkpoint(tmp_path, make_state(0, n=5))


def test_checkpoint_dtype_and_structure_mismatch(tmp_path):
    save_checkpoint(tmp_path, {"a": jnp.zeros(3, jnp.float32)}, {})
    with pytest.raises(CheckpointError, match=r"\['a'\].*expected .*int32.*found .*float32"):
        load_checkpoint(tmp_path, {"a": jnp.zeros(3, jnp.int32)})
    with pytest.raises(CheckpointError, match=r"\['b'\]"):
        load_checkpoint(tmp_path, {"a": jnp.zeros(3, jnp.float32), "b": jnp.zeros(1)})
    with pytest.raises(CheckpointError, match=r"\['a'\].*does not exist in the target"):
        load_checkpoint(tmp_path, {})


def test_checkpoint_typed_vs_raw_key_mismatch(tmp_path):
    save_checkpoint(tmp_path, {"k": jax.random.key(0)}, {})
    with pytest.raises(CheckpointError, match=r"\['k'\].*found .*key<threefry2x32>"):
        load_checkpoint(tmp_path, {"k": jax.random.PRNGKey(0)})


def test_checkpoint_missing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path, make_state())


def test_checkpoint_save_twice_keeps_prev(tmp_path):
    save_checkpoint(tmp_path, make_state(1), {"env_steps": 1})
    save_checkpoint(tmp_path, make_state(2), {"env_steps": 2})
    ckpt_dir = checkpoint_dir(tmp_path)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == sorted([CKPT_NAME, PREV_NAME])
    _, meta = load_checkpoint(tmp_path, make_state())
    assert meta == {"env_steps": 2}


def truncate(path) -> None:
    """Keep only the first half of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_checkpoint_killed_during_rotation_uses_prev(tmp_path):
    """A kill between rotating ckpt -> prev and moving the new file in leaves only prev."""
    save_checkpoint(tmp_path, make_state(1), {"env_steps": 1})
    save_checkpoint(tmp_path, make_state(2), {"env_steps": 2})
    (checkpoint_dir(tmp_path) / CKPT_NAME).unlink()
    assert has_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="missing"):
        _, meta = load_checkpoint(tmp_path, make_state())
    assert meta == {"env_steps": 1}


def test_checkpoint_truncated_without_prev(tmp_path):
    save_checkpoint(tmp_path, make_state(), {})
    truncate(checkpoint_dir(tmp_path) / CKPT_NAME)
    with pytest.raises(CheckpointError, match=CKPT_NAME):
        load_checkpoint(tmp_path, make_state())


def test_checkpoint_truncated_falls_back_to_prev(tmp_path):
    old = make_state(1)
    save_checkpoint(tmp_path, old, {"env_steps": 1})
    save_checkpoint(tmp_path, make_state(2), {"env_steps": 2})
    truncate(checkpoint_dir(tmp_path) / CKPT_NAME)
    with pytest.warns(UserWarning, match="falling back"):
        restored, meta = load_checkpoint(tmp_path, make_state())
    assert meta == {"env_steps": 1}
    assert_same_state(old, restored)


def test_checkpoint_both_corrupt(tmp_path):
    save_checkpoint(tmp_path, make_state(), {})
    save_checkpoint(tmp_path, make_state(), {})
    for name in (CKPT_NAME, PREV_NAME):
        truncate(checkpoint_dir(tmp_path) / name)
    with pytest.raises(CheckpointError, match="unreadable too"):
        load_checkpoint(tmp_path, make_state())


# --------------------------------------------------------------------------- metrics


def test_metrics_round_trip(tmp_path):
    rows = [{"env_steps": 100 * i, "losses/q": 0.5 / (i + 1), "eval_return": float(i)}
            for i in range(5)]
    with MetricsLogger(tmp_path) as logger:
        for row in rows:
            logger.log(row)
        logger.log({"env_steps": 600, "losses/q": jnp.float32(0.1)})  # no eval_return
    metrics = read_metrics(tmp_path)
    assert list(metrics) == ["env_steps", "losses/q", "eval_return"]
    for key in rows[0]:
        np.testing.assert_array_equal(metrics[key][:5], [row[key] for row in rows])
    assert metrics["env_steps"][5] == 600 and math.isnan(metrics["eval_return"][5])
    assert (tmp_path / "metrics.csv").read_text().splitlines()[-1] == "600,0.1,"
    assert list((tmp_path / "tb").iterdir()), "tensorboard events written"


def test_metrics_unknown_key_and_missing_step(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log({"env_steps": 1, "a": 1.0})
    with pytest.raises(ValueError, match="'b'"):
        logger.log({"env_steps": 2, "a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="env_steps"):
        logger.log({"a": 1.0})
    logger.close()
    assert read_metrics(tmp_path / "metrics.csv")["env_steps"].tolist() == [1.0]


def test_metrics_resume_truncates_and_appends(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (100, 200, 300, 400):
        logger.log({"env_steps": step, "r": step / 10})
    logger.close()
    # crashed after a checkpoint at step 200: rows 300, 400 are redone on resume
    logger = MetricsLogger(tmp_path, resume_step=200, tensorboard=False)
    assert read_metrics(tmp_path)["env_steps"].tolist() == [100, 200]
    for step in (300, 400, 500):
        logger.log({"r": -1.0, "env_steps": step})  # key order of the header is kept
    logger.close()
    metrics = read_metrics(tmp_path)
    assert list(metrics) == ["env_steps", "r"]
    assert metrics["env_steps"].tolist() == [100, 200, 300, 400, 500]
    assert metrics["r"].tolist() == [10, 20, -1, -1, -1]


def test_metrics_resume_without_file_starts_new(tmp_path):
    with MetricsLogger(tmp_path, resume_step=50, tensorboard=False) as logger:
        logger.log({"env_steps": 60, "r": 1})
    assert read_metrics(tmp_path)["env_steps"].tolist() == [60]


# --------------------------------------------------------------------------- plot


def write_run(run_dir, config: dict, steps, returns) -> None:
    """A fake run with config.json and metrics.csv (train rows without returns)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step, ret in zip(steps, returns):
            logger.log({"env_steps": step, "eval_return": ret})
            logger.log({"env_steps": step + 1})


@pytest.fixture
def fake_runs(tmp_path):
    base = {"algo": "mbpo", "env": "Hopper-v5", "model": {"ensemble": 7}, "out": "x"}
    other = {**base, "model": {"ensemble": 5}}
    runs = [tmp_path / "a0", tmp_path / "a1", tmp_path / "b0"]
    write_run(runs[0], {**base, "seed": 0, "run_dir": "r0"}, [0, 100, 200], [1, 2, 3])
    write_run(runs[1], {**base, "seed": 1, "run_dir": "r1"}, [0, 150, 250], [2, 3, 5])
    write_run(runs[2], {**other, "seed": 0}, [0, 100], [0, 1])
    return runs


def test_group_runs(fake_runs):
    groups = group_runs(fake_runs)
    assert sorted(len(runs) for runs in groups.values()) == [1, 2]
    assert groups["mbpo Hopper-v5 model.ensemble=7 (2 seeds)"] == fake_runs[:2]
    assert groups["mbpo Hopper-v5 model.ensemble=5 (1 seed)"] == fake_runs[2:]


def test_group_labels_name_what_differs_within_an_algo_and_env(tmp_path):
    base = {"env": "Hopper-v5", "sac": {"updates_per_step": 20}, "memr": {"alpha": 0.6}}
    configs = [{**base, "algo": "mbpo"}, {**base, "algo": "memr", "sac": {"updates_per_step": 5}},
               {**base, "algo": "memr", "sac": {"updates_per_step": 5}, "memr": {"alpha": 0.0}},
               {**base, "algo": "mbpo", "memr": {"alpha": 0.0}}]  # a setting mbpo ignores still tells groups apart
    for i, config in enumerate(configs):
        write_run(tmp_path / str(i), config, [0], [1])
    assert list(group_runs([tmp_path / str(i) for i in range(4)])) == [
        "mbpo Hopper-v5 memr.alpha=0.6 (1 seed)", "memr Hopper-v5 memr.alpha=0.6 (1 seed)",
        "memr Hopper-v5 memr.alpha=0.0 (1 seed)", "mbpo Hopper-v5 memr.alpha=0.0 (1 seed)"]


def test_plot_runs(fake_runs, tmp_path):
    out = plot_runs(fake_runs, tmp_path / "plots" / "curve.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_group_curve_mean_se_and_runs_that_stop_early(fake_runs):
    grid, mean, se, n = _group_curve([_run_curve(run, "env_steps", "eval_return") for run in fake_runs[:2]])
    np.testing.assert_array_equal(grid, [0, 100, 150, 200, 250])  # on to the longer run's end
    a0 = np.array([1, 2, 2.5, 3])  # each run interpolated inside its own range; a0 stops at 200
    a1 = np.array([2, 2 + 100 / 150, 3, 4, 5])
    pairs = np.stack([a0, a1[:4]])
    np.testing.assert_array_equal(n, [2, 2, 2, 2, 1])
    np.testing.assert_allclose(mean, [*pairs.mean(axis=0), 5])
    np.testing.assert_allclose(se, [*(pairs.std(axis=0, ddof=1) / np.sqrt(2)), 0])


def test_plot_errors(fake_runs, tmp_path):
    with pytest.raises(ValueError, match="missing_col"):
        plot_runs(fake_runs, tmp_path / "p.png", y="missing_col")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no metrics.csv"):
        plot_runs([empty], tmp_path / "p.png")
    with pytest.raises(ValueError, match="no run directories given"):
        plot_runs([], tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_plot_cli_says_what_is_wrong_without_a_traceback(tmp_path, capsys):
    from mbrlax.cli import main

    not_a_run = tmp_path / "table.csv"
    not_a_run.write_text("t,x\n")
    with pytest.raises(SystemExit) as stop:
        main(["plot", str(not_a_run), "-o", str(tmp_path / "p.png")])
    assert stop.value.code == 2
    assert f"mbrlax plot: run {not_a_run} has no config.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["plot", "-o", str(tmp_path / "p.png")])
    assert stop.value.code == 2
    assert "mbrlax plot: no run directories given" in capsys.readouterr().err
    assert "RUN_DIR [RUN_DIR ...]" in _help(main, "plot") and "RUN_DIR DEST" in _help(main, "pack")


def _help(main, command: str) -> str:
    """`mbrlax COMMAND --help` as printed."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([command, "--help"])
    return out.getvalue()


# --------------------------------------------------------------------------- progress


def test_progress_plain_status(capsys):
    with ProgressBar(1000, initial=100, enabled=False, interval=0.0) as bar:
        bar.update(50, eval_return=12.345)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # one per update (interval 0) and one at exit
    assert "150/1000 steps" in lines[-1] and "steps/s" in lines[-1]
    assert "eta" in lines[-1] and "eval_return=12.35" in lines[-1]


def test_progress_other_unit(capsys):
    with ProgressBar(11, enabled=False, unit="rounds") as bar:
        bar.update(3)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "3/11 rounds" in line and "rounds/s" in line and "steps" not in line


def test_progress_plain_rate_limited(capsys):
    with ProgressBar(10, description="warmup", enabled=False) as bar:
        for _ in range(5):
            bar.update(1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("warmup: 5/10 steps")
