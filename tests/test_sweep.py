"""`mbrlax sweep` on a local Ray with this machine's cores: a 2x2 grid through the CLI with a setting that fails at
runtime (run dirs, summary.csv, curves, the failures reported, the others finished), kill -9 of the sweep driver
and the same command again (skip finished, resume the rest), and bad input refused before Ray starts. Tiny SAC runs
on InvertedPendulum-v5 (the file takes about 2-4 minutes on 2 cores)."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from mbrlax import sweep
from mbrlax.api import load_config
from mbrlax.cli import main
from mbrlax.config import preset
from mbrlax.run.checkpoint import has_checkpoint
from mbrlax.run.metrics import read_metrics

TINY = dict(init_steps=50, steps_per_epoch=50, eval_episodes=1, progress=False)  # TINY_SET's settings
TINY_SET = ["--set", "init_steps=50", "--set", "steps_per_epoch=50", "--set", "eval_episodes=1",
            "--set", "progress=false", "--set", "sac.hidden_size=32", "--set", "sac.batch_size=64"]
TINY_TOML = """algo = "sac"
env = "InvertedPendulum-v5"
seeds = "0"

[set]
init_steps = 50
steps_per_epoch = 50
eval_episodes = 1
progress = false
total_steps = [60, 150]

[set.sac]
hidden_size = 32
batch_size = 64
"""
ENV = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the in-process sweeps (run_sweep uses an initialized Ray and leaves it running)."""
    with sweep.ray_session(None, len(os.sched_getaffinity(0))) as ray:  # shut down at the end
        yield ray


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the sweep gets as far as starting Ray."""
    def refuse(*args, **kwargs):
        raise AssertionError("the sweep started Ray")

    monkeypatch.setattr(sweep, "ray_session", refuse)


def stop_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a sweep started in its own session (its Ray's processes)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- bad input: before Ray starts


@pytest.mark.parametrize("flags, message", [
    (["--algo", "sac,nope"], "invalid --algo 'nope': must be one of mbpo, sac"),
    (["--env", "NoSuchEnv-v0"], "Unknown environment id 'NoSuchEnv-v0'"),
    (["--set", "sac.updates_per_stp=1,2"], "Did you mean: sac.updates_per_step?"),
    (["--set", "sac.updates_per_step=1,ten"], "invalid --set sac.updates_per_step='ten': expected an integer"),
    (["--set", "sac.updates_per_step"], "expected KEY=V1,V2"),
    (["--set", "seed=1,2"], "seed is set with --seeds"),
    (["--seeds", "0-"], "invalid --seeds '0-'"),
    (["--seeds", "0,1,1"], "a seed appears twice"),
    (["--set", "init_steps=100,300"], "invalid init_steps=300: must be smaller than total_steps=200"),
    (["--cpus-per-trial", "1", "--trials-per-node", "999"], "needs 999 cores"),
])
def test_bad_input_is_refused_before_ray_starts(tmp_path, capsys, no_ray, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--algo", "sac", "--total-steps", "200", "--set", "init_steps=100",
              "--out", str(tmp_path / "sw"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "mbrlax sweep: error:" in err and message in err, err
    assert not (tmp_path / "sw" / "sweep.json").exists()


def test_missing_out_bad_toml_and_another_grid_are_refused(tmp_path, capsys, no_ray):
    def error(*flags) -> str:
        with pytest.raises(SystemExit) as e:
            main(["sweep", *flags])
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "needs --out DIR" in error("--algo", "sac")
    (tmp_path / "bad.toml").write_text('algo = "sac"\nseed = 3\n')
    assert "unknown key 'seed'" in error("--config", str(tmp_path / "bad.toml"))
    out = tmp_path / "sw"
    grid = sweep.make_grid("sac", ENV, "0-1", {"total_steps": 1000})
    sweep.claim_dir(out, grid, grid.trials())
    err = error("--algo", "sac", "--seeds", "0-2", "--total-steps", "1000", "--out", str(out))
    assert "holds a sweep with another grid (seeds: [0, 1] there, [0, 1, 2] now)" in err, err


# --------------------------------------------------------------------------- a grid through the CLI


def test_grid_gives_run_dirs_summary_and_curves_and_reports_its_failing_trials(tmp_path, local_ray, capsys):
    """2 seeds x sac.target_entropy=-1,nan: nan fails at runtime (SAC's first update gives NaN, NonFiniteError
    at env step 50, after the first eval row); the other trials finish."""
    out = tmp_path / "sw"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--algo", "sac", "--env", ENV, "--seeds", "0-1", "--set", "sac.target_entropy=-1,nan",
              "--total-steps", "100", *TINY_SET, "--steps", "50,100", "--mean-between", "50,100", "--out", str(out)])
    assert e.value.code == 1
    captured = capsys.readouterr()
    assert f"wrote {out / 'summary.csv'}" in captured.out
    runs = {}
    for entropy, done in (("-1.0", True), ("nan", False)):
        for seed in (0, 1):
            d = out / f"sac__{ENV}__sac.target_entropy={entropy}__s{seed}"
            want = preset(ENV, "sac", **TINY, total_steps=100, seed=seed, out=str(d))
            want = replace(want, sac=replace(want.sac, hidden_size=32, batch_size=64, target_entropy=float(entropy)))
            assert load_config(d).to_json() == want.to_json()  # JSON: nan == nan
            assert has_checkpoint(d)
            np.testing.assert_array_equal(read_metrics(d)["env_steps"], [50, 100] if done else [50])
            if done:
                assert json.loads((d / "sweep_done.json").read_text())["jax_devices"] == 1  # pinned to one core
            else:
                assert not (d / "sweep_done.json").exists() and "Traceback" in (d / "error.txt").read_text()
                assert f"{d.name} failed: mbrlax.algos.dyna.NonFiniteError: SAC update produced NaN" in captured.err
            runs.setdefault(entropy, []).append(read_metrics(d))
    assert "NonFiniteError" in captured.out  # the table's note

    rows = {r["setting"]: r for r in _csv(out / "summary.csv")}
    assert set(rows) == {f"sac__{ENV}__sac.target_entropy={entropy}" for entropy in runs}
    for entropy, metrics in runs.items():
        row = rows[f"sac__{ENV}__sac.target_entropy={entropy}"]
        assert (row["algo"], row["env"], row["sac.target_entropy"], row["seeds"]) == ("sac", ENV, entropy, "2")
        for step in (50, 100):
            evals = [m["eval_return"][m["env_steps"] == step][0] for m in metrics if step in m["env_steps"]]
            _check_mean_se(row, f"eval_{step}", evals)
        _check_mean_se(row, "window_mean", [m["eval_return"].mean() for m in metrics if 100 in m["env_steps"]])
    assert (out / f"curves_{ENV}.png").stat().st_size > 0

    # --summary DIR rewrites them on its own, with other steps
    main(["sweep", "--summary", str(out), "--steps", "100"])
    assert "eval_50" not in _csv(out / "summary.csv")[0] and "eval_100" in _csv(out / "summary.csv")[0]


def test_env_registered_in_the_calling_process_works_in_its_trials(tmp_path, local_ray):
    """`envs.register` with local lambdas, then a sweep: the trial processes get the env by value and train on it
    (its rewards are the env's + 1000, so the evaluation shows which env the trial ran)."""
    import gymnasium

    from mbrlax import envs

    def make():
        env = gymnasium.wrappers.TransformReward(gymnasium.make(ENV), lambda r: r + 1000.0)
        return gymnasium.wrappers.TimeLimit(env, max_episode_steps=30)

    envs.register("ShiftedPendulum-v0", make, termination_fn=lambda obs, act, next_obs: abs(next_obs[:, 1]) > 0.2)
    out = tmp_path / "sw"
    result = sweep.run_sweep(out, algo="sac", env="ShiftedPendulum-v0", seeds=0,
                             overrides={**TINY, "total_steps": 100}, live=False)
    assert result.failed == [], result.errors
    m = read_metrics(out / "sac__ShiftedPendulum-v0__s0")
    assert m["eval_return"][-1] >= 1000.0
    assert (out / "registered_envs.pkl").is_file()


def _csv(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_mean_se(row: dict, key: str, values: list[float]) -> None:
    """The row's mean, standard error and count of `key` are those of `values` (nan, nan, 0 for none)."""
    assert row[f"{key}_n"] == str(len(values))
    mean = np.mean(values) if values else np.nan
    se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
    np.testing.assert_allclose([float(row[key]), float(row[f"{key}_se"])], [mean, se])


# --------------------------------------------------------------------------- kill -9 and the same command again


def test_killed_sweep_continues_with_the_same_command(tmp_path, local_ray):
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    out = tmp_path / "sw"
    # One trial at a time: the short one is done before the long one starts.
    flags = ["--config", str(tmp_path / "tiny.toml"), "--trials-per-node", "1", "--out", str(out)]
    short, long = out / f"sac__{ENV}__total_steps=60__s0", out / f"sac__{ENV}__total_steps=150__s0"
    first = subprocess.Popen([sys.executable, "-m", "mbrlax.cli", "sweep", *flags], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not has_checkpoint(long):
            assert first.poll() is None, first.stderr.read().decode()
            assert time.time() < deadline, "the long trial saved no checkpoint within 4 minutes"
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGKILL)
        _kill_9_writer(long)  # as a reboot would: the trial process goes too
        first.wait()
        assert (short / "sweep_done.json").exists() and not (long / "sweep_done.json").exists()
        finished = (short / "metrics.csv").read_bytes(), (short / "trial.log").read_text()

        main(["sweep", *flags])  # the same command again (here, on the test's Ray)
    finally:
        stop_group(first)
    assert ((short / "metrics.csv").read_bytes(), (short / "trial.log").read_text()) == finished  # skipped
    assert "mbrlax: resuming" in (long / "trial.log").read_text()
    np.testing.assert_array_equal(read_metrics(short)["env_steps"], [50, 60])
    np.testing.assert_array_equal(read_metrics(long)["env_steps"], [50, 100, 150])
    assert json.loads((out / "sweep.json").read_text())["grid"]["set"]["total_steps"] == [60, 150]


def _kill_9_writer(run_dir) -> None:
    """SIGKILL the process that holds the run's lock (its pid is the first word of run.lock)."""
    owner = (run_dir / "run.lock").read_text().split()
    try:
        os.kill(int(owner[0]), signal.SIGKILL)
    except (IndexError, ProcessLookupError):  # it had just released the lock
        pass


def test_trial_waits_for_the_lock_of_a_process_still_writing_its_run(tmp_path, monkeypatch):
    """A process of a killed sweep may still write a run for a moment: the new trial waits for its lock."""
    import threading

    import mbrlax
    from mbrlax.run import RunLockedError, run_lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setattr(mbrlax, "train", lambda cfg: ("trained", time.monotonic()))
    held, release = threading.Event(), threading.Event()

    def writer():
        with run_lock(run_dir):
            held.set()
            release.wait()

    thread = threading.Thread(target=writer)
    thread.start()
    held.wait()
    cfg = preset(ENV, "sac", **TINY, total_steps=100)
    try:
        with pytest.raises(RunLockedError):
            sweep.run_trial(run_dir, cfg, lock_wait_s=0.5)
        threading.Timer(1.5, release.set).start()
        start = time.monotonic()
        result, at = sweep.run_trial(run_dir, cfg, lock_wait_s=30)
    finally:
        release.set()
        thread.join()
    assert result == "trained" and at - start >= 1.0
