"""Runs that survive misuse: SIGTERM / SIGINT checkpoint at the next safe point and resume with no lost or
duplicated metrics rows (mid-epoch counters exact); one writer per run directory (a second one refused
with the owner's pid, a dead owner's lock taken over); corrupt config.json / metrics.csv / checkpoint
give clear errors (a checkpoint falls back to the previous one); a full disk while checkpointing keeps
the previous checkpoint."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest

import mbrlax
from mbrlax.cli import main
from mbrlax.config import preset
from mbrlax.run import RunStopped, read_metrics
from mbrlax.run.checkpoint import CKPT_NAME, PREV_NAME, _read_npz, checkpoint_dir
from mbrlax.run.lock import LOCK_NAME
from mbrlax.run.progress import ProgressBar

from test_dyna import TINY, TINY_FLAGS

SAC_FLAGS = ["--algo", "sac", *TINY_FLAGS]


def tiny(out, algo="sac", **kw):
    return preset("InvertedPendulum-v5", algo, **{**TINY, "out": str(out), **kw})


def saved_meta(run_dir) -> dict:
    """The counters of the run's current checkpoint."""
    return _read_npz(checkpoint_dir(run_dir) / CKPT_NAME)[1]["meta"]


# --------------------------------------------------------------------------- signals


def test_sigterm_checkpoints_at_the_next_step_and_resume_continues(tmp_path, capsys):
    out = tmp_path / "run"
    script = Path(sys.executable).parent / "mbrlax"  # the console script, as a scheduler would start it
    proc = subprocess.Popen([str(script), "train", *SAC_FLAGS, "--total-steps", "500", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.csv").exists() and len(read_metrics(out).get("env_steps", [])) >= 1):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = re.search(r"mbrlax train: stopped by SIGTERM at env step (\d+) of 500; checkpoint saved in .*"
                        rf"continue with `mbrlax resume {out}`", err)
    assert stopped and "SIGTERM received: checkpointing at the next safe point" in err, err
    step = int(stopped.group(1))
    assert 100 <= step < 500 and saved_meta(out)["env_steps"] == step
    assert (out / LOCK_NAME).read_text() == ""  # released
    before = (out / "metrics.csv").read_text().splitlines()

    main(["resume", str(out)])
    after = (out / "metrics.csv").read_text().splitlines()
    np.testing.assert_array_equal(read_metrics(out)["env_steps"], [100, 200, 300, 400, 500])  # none lost or twice
    assert after[: len(before)] == before  # the rows before the stop are untouched
    assert f"resuming {out} at env step {step}" in capsys.readouterr().out


def test_sigint_mid_epoch_checkpoints_exact_counters(tmp_path, monkeypatch):
    """Ctrl-C at env step 150 (mid-epoch, after the model round and rollout of step 100): the checkpoint holds
    the counters of step 150 and the latest row values, so the resumed rows keep an uninterrupted run's
    bookkeeping (the rollout made before the stop is reported in the next row, once)."""
    update = ProgressBar.update

    def ctrl_c_at_150(self, advance=0, **fields):
        update(self, advance, **fields)
        if advance and self.done == 150:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ProgressBar, "update", ctrl_c_at_150)
    handler = signal.getsignal(signal.SIGINT)
    cfg = tiny(tmp_path / "run", algo="mbpo", total_steps=200)
    with pytest.raises(RunStopped, match=r"stopped by SIGINT at env step 150 of 200") as e:
        mbrlax.train(cfg)
    assert e.value.signum == signal.SIGINT
    meta = saved_meta(cfg.out)
    assert (meta["env_steps"], meta["agent_updates"], meta["epochs_done"]) == (150, (150 - 100) * 2, 1)
    assert meta["model_transitions"] == meta["last"]["rollout/model_transitions"] > 0  # the rollout at step 100
    assert meta["wall_time"] > read_metrics(cfg.out)["time/wall"][0]
    assert len(meta["episode"]["actions"]) > 0  # stopped mid-episode
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    run = mbrlax.resume(cfg.out)
    m = read_metrics(cfg.out)
    np.testing.assert_array_equal(m["env_steps"], [100, 200])
    np.testing.assert_array_equal(m["agent/updates"], [0, 200])
    after = saved_meta(cfg.out)
    counters = (after["agent_updates"], after["epochs_done"], after["model_transitions"])
    assert counters == (200, 2, meta["model_transitions"])
    assert m["rollout/transitions"][1] == m["rollout/model_transitions"][1] == meta["model_transitions"]
    assert np.all(np.diff(m["time/wall"]) > 0)
    assert meta["times"]["agent_update"] > 0  # the phase times continue from the checkpoint's
    assert m["time/agent_update"][1] == after["times"]["agent_update"] > meta["times"]["agent_update"]
    assert int(run.state.real.size) == 200

    # Exact: the resumed run (its episode replayed, evaluations seeded by env step) is the uninterrupted one.
    monkeypatch.setattr(ProgressBar, "update", update)
    straight = mbrlax.train(replace(cfg, out=str(tmp_path / "straight")))
    s = read_metrics(straight.run_dir)
    for col in m:
        if not col.startswith("time/"):
            np.testing.assert_array_equal(m[col], s[col], err_msg=col)
    jax.tree.map(np.testing.assert_array_equal, run.state, straight.state)


def test_dam_stops_between_rounds_and_resumes(tmp_path, monkeypatch):
    from mbrlax.algos.mpc import DAM

    train = DAM.train

    def sigterm_in_round_1(self, state, round_):
        if round_ == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return train(self, state, round_)

    monkeypatch.setattr(DAM, "train", sigterm_in_round_1)
    cfg = preset("IcyRoad-v0", "dam", out=str(tmp_path / "run"), progress=False, eval_episodes=1)
    small = dict(rounds=2, init_episodes=2, episodes_per_round=1, num_sequences=20, cem_elites=5, num_particles=2)
    cfg = replace(cfg, model=replace(cfg.model, max_epochs=5), dam=replace(cfg.dam, **small))
    with pytest.raises(RunStopped, match="stopped by SIGTERM at round 1 of 2"):
        mbrlax.train(cfg)  # round 1 is finished and saved first
    assert saved_meta(cfg.out)["round"] == 2
    monkeypatch.setattr(DAM, "train", train)
    mbrlax.resume(cfg.out)
    m = read_metrics(cfg.out)
    np.testing.assert_array_equal(m["round"], [0, 1, 2])
    np.testing.assert_array_equal(m["env_steps"], [10, 15, 20])


# --------------------------------------------------------------------------- lock

HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
with lock.run_lock(sys.argv[2]), lock.run_lock(sys.argv[3]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_writer_refused_and_a_dead_owners_lock_taken_over(stopped_run, tmp_path, capsys):
    run_dir, empty = tmp_path / "run", tmp_path / "empty"
    shutil.copytree(stopped_run, run_dir)
    empty.mkdir()
    lock_py = Path(mbrlax.__file__).parent / "run" / "lock.py"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_py), str(run_dir), str(empty)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        for argv in (["resume", str(run_dir)], ["train", *SAC_FLAGS, "--out", str(empty)]):
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 2
            assert f"is being written by process {holder.pid}" in capsys.readouterr().err
        assert not (empty / "config.json").exists()  # the refused train wrote nothing
    finally:
        holder.kill()  # kill -9: the lock file still names it
        holder.wait()
    assert (run_dir / LOCK_NAME).read_text().split()[0] == str(holder.pid)
    main(["resume", str(run_dir)])
    took_over = f"taking over the lock of {run_dir} left by process {holder.pid} (no longer running)"
    assert took_over in capsys.readouterr().err
    np.testing.assert_array_equal(read_metrics(run_dir)["env_steps"], [100, 200, 300])


# --------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 200 of 300 (checkpoints at 100 and 200)."""
    cfg = tiny(tmp_path_factory.mktemp("stopped") / "run", total_steps=300)
    mbrlax.train(cfg, stop_at=200)
    return Path(cfg.out)


def cut(path: Path, keep) -> None:
    path.write_bytes(keep(path.read_bytes()))


def garble_row(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[1] = ",".join(lines[1].split(",")[:3])
    path.write_text("\n".join(lines) + "\n")


CORRUPTIONS = {
    "config cut": ("config.json", lambda p: cut(p, lambda b: b[: len(b) // 2]),
                   r"config.json is corrupt or not an mbrlax config \(JSONDecodeError"),
    "config field": ("config.json", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "horizon": 5})),
                     r"not an mbrlax config \(TypeError: .*'horizon'"),
    "metrics bytes": ("metrics.csv", lambda p: cut(p, lambda b: b[:40] + b"\0\xff" + b[40:]),
                      r"metrics.csv is corrupt, not a CSV file of metrics .*mv .*metrics.csv.bad"),
    "metrics header": ("metrics.csv", lambda p: p.write_text(p.read_text().replace("env_steps", "env_stepz", 1)),
                       r"its header has no 'env_steps' column"),
    "metrics row": ("metrics.csv", garble_row, r"metrics.csv is corrupt: line 2 has 3 cells for \d+ columns"),
    "metrics cut": ("metrics.csv", lambda p: p.write_text("\n".join(p.read_text().splitlines()[:2]) + "\n"),
                    r"incomplete: its rows end at env_steps=100, but rows up to 200 were logged"),
    "both checkpoints": ("checkpoints", lambda p: [cut(p / n, lambda b: b[:1000]) for n in (CKPT_NAME, PREV_NAME)],
                         r"ckpt.npz is corrupt or truncated .* previous checkpoint .* is unreadable too"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_files_give_a_clear_error(stopped_run, tmp_path, capsys, case):
    name, corrupt, expected = CORRUPTIONS[case]
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_run, run_dir)
    corrupt(run_dir / name)
    metrics = (run_dir / "metrics.csv").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["resume", str(run_dir)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(expected, err) and "Traceback" not in err, err
    assert (run_dir / "metrics.csv").read_bytes() == metrics  # nothing rewritten


def test_fixes_the_errors_suggest_work(stopped_run, tmp_path):
    # metrics.csv moved aside: a new one starts at the checkpoint.
    run_dir = tmp_path / "aside"
    shutil.copytree(stopped_run, run_dir)
    (run_dir / "metrics.csv").rename(run_dir / "metrics.csv.bad")
    mbrlax.resume(run_dir)
    np.testing.assert_array_equal(read_metrics(run_dir)["env_steps"], [300])
    # A truncated checkpoint: back to the previous one (step 100), rows after it redone once.
    run_dir = tmp_path / "fallback"
    shutil.copytree(stopped_run, run_dir)
    cut(checkpoint_dir(run_dir) / CKPT_NAME, lambda b: b[: len(b) // 2])
    with pytest.warns(UserWarning, match="falling back to previous checkpoint"):
        mbrlax.resume(run_dir)
    np.testing.assert_array_equal(read_metrics(run_dir)["env_steps"], [100, 200, 300])


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(stopped_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    saved = {n: (checkpoint_dir(out) / n).read_bytes() for n in (CKPT_NAME, PREV_NAME)}
    real_savez = np.savez

    def savez_on_a_full_disk(file, **arrays):  # the disk fills up half-way through the checkpoint
        file.write(b"PK\x03\x04" + bytes(1000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    with pytest.raises(SystemExit) as e:
        main(["resume", str(out)])  # runs to step 300, where it checkpoints
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"could not write a checkpoint in .*checkpoints: No space left on device \(the disk is full\); "
                     r"the previous checkpoint .*ckpt.npz is intact; free space and continue with `mbrlax resume", err)
    assert {n: (checkpoint_dir(out) / n).read_bytes() for n in (CKPT_NAME, PREV_NAME)} == saved  # untouched
    assert sorted(p.name for p in checkpoint_dir(out).iterdir()) == [CKPT_NAME, PREV_NAME]  # no partial file
    monkeypatch.setattr(np, "savez", real_savez)
    main(["resume", str(out)])  # from step 200 again: the row of step 300 is written once
    np.testing.assert_array_equal(read_metrics(out)["env_steps"], [100, 200, 300])
    assert saved_meta(out)["env_steps"] == 300
