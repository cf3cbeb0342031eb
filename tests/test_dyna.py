"""End-to-end behaviour of the Dyna loop, runs, resume and bad input (tiny configs)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbrlax
from mbrlax.algos import dyna as dyna_mod
from mbrlax.algos.dyna import NonFiniteError
from mbrlax.api import load_config
from mbrlax.buffers import gather
from mbrlax.cli import main
from mbrlax.config import ConfigError, ModelConfig, RolloutConfig, SACConfig, preset
from mbrlax.run.checkpoint import CheckpointError
from mbrlax.run.metrics import read_metrics
from mbrlax.usage import ModelUsage, make_usage

from conftest import check_pack_is_the_run_with_its_model_buffer_cleared, kill_9_during_training

TINY = dict(
    total_steps=400, init_steps=100, steps_per_epoch=100, eval_episodes=1, progress=False,
    model=ModelConfig(hidden_size=32, num_layers=2, weight_decays=(1e-5, 1e-5, 1e-5), train_freq=100,
                      ensemble_size=3, num_elites=2, max_epochs=5),
    sac=SACConfig(hidden_size=32, updates_per_step=2, batch_size=64),
    rollout=RolloutConfig(batch_size=200, schedule=(1, 3, 1, 3)),
)
TINY_FLAGS = [
    "--total-steps", "400", "--init-steps", "100", "--steps-per-epoch", "100", "--eval-episodes", "1",
    "--no-progress", "--model.hidden-size", "32", "--model.num-layers", "2",
    "--model.weight-decays", "1e-5", "1e-5", "1e-5", "--model.train-freq", "100",
    "--model.ensemble-size", "3", "--model.num-elites", "2", "--model.max-epochs", "5",
    "--sac.hidden-size", "32", "--sac.updates-per-step", "2", "--sac.batch-size", "64",
    "--rollout.batch-size", "200", "--rollout.schedule", "1", "3", "1", "3",
]
HOT_PATHS = ("before_updates", "agent_step", "rollout", "act", "add_real", "training_data", "before_training",
             "diagnostics")  # the loop's jitted steps: each must compile once per run


def tiny(tmp_path, algo="mbpo", **kw):
    return preset("InvertedPendulum-v5", algo, **{**TINY, "out": str(tmp_path / "run"), **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    dyna_mod.TRACE_COUNTS.clear()
    run = mbrlax.train(tiny(tmp_path_factory.mktemp("finished")))
    return run, dict(dyna_mod.TRACE_COUNTS)


def test_run_directory_contents(finished):
    run, _ = finished
    d = run.run_dir
    assert load_config(d) == run.config
    m = read_metrics(d)
    np.testing.assert_array_equal(m["env_steps"], [100, 200, 300, 400])
    for col in ("eval_return", "model/train_loss", "model/holdout_mse", "rollout/horizon", "sac/q_loss",
                "sac/alpha", "time/wall"):
        assert col in m
    assert np.all(np.isfinite(m["model/holdout_mse"][1:])) and np.isnan(m["model/holdout_mse"][0])
    # Horizon schedule (1, 3, 1, 3) over loop epochs 0, 1, 2 -> 1, 1, 2.
    np.testing.assert_array_equal(m["rollout/horizon"][1:], [1, 1, 2])
    assert np.all(m["rollout/transitions"][1:] > 0)
    assert list((d / "tb").glob("events.out.tfevents*"))
    assert (d / "checkpoints" / "ckpt.npz").exists()
    assert int(run.state.real.size) == 400


def test_each_hot_path_compiled_once(finished):
    _, traces = finished
    # Growing horizons (1 -> 2) and growing data must not re-trace the jitted steps.
    for name in HOT_PATHS:
        assert traces.get(name) == 1, (name, traces)


def test_load_gives_same_actions(finished):
    run, _ = finished
    policy = mbrlax.load(run.run_dir)
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    np.testing.assert_array_equal(policy.act(obs), run.policy.act(obs))
    lo, hi = policy.action_space.low, policy.action_space.high
    assert np.all(policy.act(obs) >= lo) and np.all(policy.act(obs) <= hi)


def test_model_buffer_is_sized_to_the_longest_horizon_the_run_reaches(finished, tmp_path):
    # Hopper's schedule (20, 150, 1, 15) after 5k exploration steps: 1 at loop epoch 25 (30k env steps),
    # 11 at epoch 120 (the 125k budget).
    assert make_usage(preset("Hopper-v5", "mbpo", total_steps=30_000)).max_horizon() == 1
    assert make_usage(preset("Hopper-v5", "mbpo")).max_horizon() == 11

    class WholeSchedule(ModelUsage):  # the previous sizing: the schedule's largest horizon, 3 here
        def max_horizon(self):
            return 3

    run, _ = finished  # horizons 1, 1, 2: arrays of depth 2
    assert run.state.imagined.capacity == 2 * 200 and make_usage(run.config).max_horizon() == 2
    cfg = tiny(tmp_path)
    mbrlax.train(cfg, usage=WholeSchedule(cfg), stop_at=250)  # the agent samples the migrated rows at 250-299
    shutil.copytree(cfg.out, tmp_path / "migrated")
    deep = mbrlax.resume(cfg.out, usage=WholeSchedule(cfg))
    assert deep.state.imagined.capacity == 3 * 200
    # A checkpoint with the deeper buffer (made before this sizing) resumes into the smaller one, the same run.
    migrated = mbrlax.resume(tmp_path / "migrated")
    assert migrated.state.imagined.capacity == 2 * 200
    m, a = read_metrics(migrated.run_dir), read_metrics(run.run_dir)
    rows = np.isin(m["env_steps"], a["env_steps"])  # (stop_at also logged a row at 250)
    for col in m:
        if not col.startswith("time/"):
            np.testing.assert_array_equal(m[col][rows], a[col], err_msg=col)
    jax.tree.map(np.testing.assert_array_equal, migrated.state, run.state)
    b = read_metrics(deep.run_dir)
    for col in ("eval_return", "model/train_loss", "sac/q_loss", "sac/pi_loss", "rollout/transitions"):
        np.testing.assert_array_equal(a[col], b[col][rows], err_msg=col)  # the same run, in a smaller buffer
    # The newest rows (all the agent samples: the last epoch's rollouts) are the same; the larger buffer
    # only keeps older ones too.
    n = int(run.state.imagined.size)
    newest = lambda buf: gather(buf, (buf.ptr - 1 - jnp.arange(n)) % buf.capacity)
    jax.tree.map(np.testing.assert_array_equal, newest(run.state.imagined), newest(deep.state.imagined))


def test_sac_baseline_runs_without_model(tmp_path):
    run = mbrlax.train(tiny(tmp_path, algo="sac", total_steps=300))
    m = read_metrics(run.run_dir)
    assert "model/train_loss" not in m and run.state.model is None
    assert np.all(np.isfinite(m["sac/q_loss"][1:]))


def test_resume_after_kill_9(tmp_path):
    out = tmp_path / "killed"
    kill_9_during_training(TINY_FLAGS + ["--total-steps", "1500"], out, rows=3)
    run = mbrlax.resume(out)
    steps = read_metrics(out)["env_steps"]
    np.testing.assert_array_equal(steps, np.arange(100, 1501, 100))  # no gap, no duplicate
    assert int(run.state.real.size) == 1500  # every real transition kept


def test_pack_resumes_as_the_run_with_its_model_buffer_cleared(tmp_path, capsys):
    cfg = tiny(tmp_path, total_steps=600)
    stopped = mbrlax.train(cfg, stop_at=300)
    packed, oracle = check_pack_is_the_run_with_its_model_buffer_cleared(Path(cfg.out), tmp_path, {})
    assert "is a packed copy" in capsys.readouterr().out
    assert int(packed.state.real.size) == 600
    m, o = read_metrics(packed.run_dir), read_metrics(oracle.run_dir)
    np.testing.assert_array_equal(m["env_steps"], np.arange(100, 601, 100))
    for col in m:
        if not col.startswith("time/"):
            np.testing.assert_array_equal(m[col], o[col], err_msg=col)
    # Clearing the model buffer changes the run (so the equality above is not trivial); a second pack keeps the note.
    run_again = mbrlax.resume(cfg.out)
    assert not np.array_equal(read_metrics(run_again.run_dir)["sac/q_loss"], m["sac/q_loss"])  # the buffer matters
    mbrlax.pack(packed.run_dir, tmp_path / "twice")
    meta = json.loads(bytes(np.load(tmp_path / "twice" / "checkpoints" / "ckpt.npz")["__checkpoint__"]))["meta"]
    assert [p["env_steps"] for p in meta["packed"]] == [300, 600]
    assert meta["packed"][0]["model_rows"] == int(stopped.state.imagined.size) > 0


def test_carry_packs_unfinished_runs_restores_them_and_drops_finished_ones(tmp_path):
    import subprocess
    import sys

    carry = [sys.executable, str(Path(__file__).parent.parent / "benchmarks" / "carry.py")]
    runs, packs, new_machine = tmp_path / "runs", tmp_path / "carry", tmp_path / "new"
    cfg = tiny(tmp_path, total_steps=200, out=str(runs / "exp" / "a"))
    mbrlax.train(cfg, stop_at=100)
    done = mbrlax.train(tiny(tmp_path, total_steps=200, out=str(runs / "b")))
    subprocess.run([*carry, "pack", str(runs), str(packs)], check=True)
    assert (packs / "exp" / "a" / "checkpoints" / "ckpt.npz").exists() and not (packs / "b").exists()
    subprocess.run([*carry, "restore", str(packs), str(new_machine)], check=True)
    resumed = mbrlax.resume(new_machine / "exp" / "a")
    np.testing.assert_array_equal(read_metrics(resumed.run_dir)["env_steps"], [100, 200])
    assert done.run_dir.exists()
    out = subprocess.run([*carry, "pack", str(new_machine), str(packs)], check=True, capture_output=True, text=True)
    assert "finished, pack removed" in out.stdout and not (packs / "exp" / "a").exists()


def test_pack_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        mbrlax.pack(tmp_path, tmp_path / "dest")
    cfg = tiny(tmp_path)
    mbrlax.train(cfg, stop_at=100)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not empty"):
        mbrlax.pack(cfg.out, tmp_path / "full")


def test_nan_in_agent_stops_with_error_and_keeps_checkpoint(tmp_path):
    cfg = tiny(tmp_path)
    mbrlax.train(cfg, stop_at=200)
    class NaNWeights(ModelUsage):
        def sample_weights(self, usage, batch, is_real):
            return jnp.full_like(batch.reward, jnp.nan), None

    with pytest.raises(NonFiniteError, match=r"SAC update .* env step 200"):
        mbrlax.resume(cfg.out, usage=NaNWeights(cfg))
    run = mbrlax.resume(cfg.out)  # the last good checkpoint is intact
    np.testing.assert_array_equal(read_metrics(cfg.out)["env_steps"], [100, 200, 300, 400])
    assert np.all(np.isfinite(np.asarray(run.state.agent.params["log_alpha"])))


def test_nan_in_model_stops_with_error(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.setattr("mbrlax.models.trainer.member_nll_loss", lambda *a: jnp.float32(jnp.nan))
    with pytest.raises(NonFiniteError, match=r"model training .* env step 100"):
        mbrlax.train(cfg)


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        mbrlax.resume(tmp_path)
    cfg = tiny(tmp_path)
    mbrlax.train(cfg, stop_at=100)
    run_dir = Path(cfg.out)
    # A config that does not match the checkpoint's shapes.
    good = (run_dir / "config.json").read_text()
    bad = json.loads(good)
    bad["sac"]["hidden_size"] = 16
    (run_dir / "config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="different config"):
        mbrlax.resume(run_dir)
    (run_dir / "config.json").write_text(good)
    # A truncated checkpoint with no previous one.
    ckpt = run_dir / "checkpoints" / "ckpt.npz"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        mbrlax.resume(run_dir)
    # A missing checkpoint never starts a fresh run silently.
    ckpt.unlink()
    with pytest.raises(CheckpointError):
        mbrlax.resume(run_dir)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--env", "Hopperr-v5"], "Hopper-v5"),
        (["--total-steps", "0"], "total_steps"),
        (["--rollout.schedule", "20", "10", "1", "15"], "rollout.schedule"),
        (["--model.num-elites", "9"], "model.num_elites"),
        (["--init-steps", "6000", "--total-steps", "5000"], "init_steps"),
        (["--sac.gamma", "1.5"], "sac.gamma"),
    ],
)
def test_bad_input_clear_error_before_work(tmp_path, capsys, flags, expected):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), *flags])
    assert e.value.code == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_unknown_algo_lists_choices(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--algo", "mbpoo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "mbpo" in err and "sac" in err


def test_out_dir_with_a_run_is_refused(finished):
    run, _ = finished
    with pytest.raises(ConfigError, match="resume"):
        mbrlax.train(replace(run.config, out=str(run.run_dir)))


def test_cli_eval_and_plot(finished, tmp_path, capsys):
    run, _ = finished
    main(["eval", str(run.run_dir), "--episodes", "2"])
    assert "eval_return" in capsys.readouterr().out
    png = tmp_path / "curves.png"
    main(["plot", str(run.run_dir), "-o", str(png)])
    assert png.stat().st_size > 1000


def test_bench_reports_per_unit_figures_for_its_window():
    """`mbrlax bench` on a short window of InvertedPendulum (the model trains at loop step 0, before it)."""
    from mbrlax.bench import BenchArgs, bench

    r = bench(BenchArgs(env="InvertedPendulum-v5", start=5, stop=30))
    assert r["window_env_steps"] == 25 and r["sac_updates"] == 25 * r["updates_per_step"]
    assert r["model_devices"] >= 1 and r["sec_per_1k_env_steps"] > 0 and r["ms_per_sac_update"] > 0
    assert r["agent_update_s"] <= r["sec_per_1k_env_steps"] * 25 / 1000 + 1e-9  # a part of the window's time
