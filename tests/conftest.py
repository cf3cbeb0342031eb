"""Two host CPU devices for the whole test session, so the tests can compare model
training split over two devices with the unsplit one (set before JAX starts);
the slow learning tests first (with `pytest -n 2` they then overlap the short ones
instead of running alone at the end); one persistent JAX compilation cache for the test
run, shared by the xdist workers and the subprocesses they start (the same tiny configs
are compiled by many tests; results are unchanged; tests/test_pmac.py alone: 163 s -> 117 s); and
`kill_9_during_training`, shared by the resume tests."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# Before JAX is imported (here and, through the environment, in subprocesses): one directory per test
# run (the xdist controller's pid), removed when the run ends.
_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
_CACHE = os.path.join(tempfile.gettempdir(), f"mbrlax-test-jit-{os.getppid() if _WORKER else os.getpid()}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import mbrlax  # noqa: E402
from mbrlax.run.metrics import read_metrics  # noqa: E402

mbrlax.configure(cpu_devices=2)


def pytest_unconfigure(config):
    if _OWN_CACHE and not _WORKER:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: otherwise in file order


def kill_9_during_training(flags: list[str], out, rows: int, column: str = "env_steps") -> None:
    """Start `mbrlax train FLAGS --out OUT` in a subprocess and kill -9 it once metrics.csv has `rows`
    rows of `column` (fails if it exits first or takes over 5 minutes)."""
    proc = subprocess.Popen([sys.executable, "-m", "mbrlax.cli", "train", *flags, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ((out / "metrics.csv").exists() and len(read_metrics(out).get(column, [])) >= rows):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, f"no {rows} metrics rows within 5 minutes"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def check_pack_is_the_run_with_its_model_buffer_cleared(run_dir, tmp_path, cleared_leaves: dict) -> tuple:
    """Pack `run_dir` (a stopped Dyna run) and check the pack against a NumPy oracle: the original checkpoint
    with the `state.imagined.data` leaves zeroed, `state.imagined.size` 0 and `cleared_leaves` (name: value)
    set, stored uncompressed. Both resume to the end with equal states; returns their Runs (packed, oracle)."""
    import jax
    import numpy as np

    from mbrlax.cli import main

    oracle = tmp_path / "oracle"
    shutil.copytree(run_dir, oracle)
    ckpt = oracle / "checkpoints" / "ckpt.npz"
    with np.load(ckpt) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert int(arrays["state.imagined.size"]) > 0  # there is something to drop
    model_rows_bytes = 0
    for name in arrays:
        if name.startswith("state.imagined.data"):
            model_rows_bytes += arrays[name].nbytes
            arrays[name] = np.zeros_like(arrays[name])
    arrays["state.imagined.size"] = np.zeros_like(arrays["state.imagined.size"])
    for name, value in cleared_leaves.items():
        assert name in arrays, name
        arrays[name] = np.full_like(arrays[name], value)
    np.savez(ckpt, **arrays)  # (its meta lacks the "packed" note: the loop does not read it)
    packed = tmp_path / "packed"
    main(["pack", str(run_dir), str(packed)])
    original_size = (run_dir / "checkpoints" / "ckpt.npz").stat().st_size
    assert (packed / "checkpoints" / "ckpt.npz").stat().st_size < original_size - 0.9 * model_rows_bytes
    assert not (packed / "checkpoints" / "ckpt.prev.npz").exists()
    packed_run, oracle_run = mbrlax.resume(packed), mbrlax.resume(oracle)
    jax.tree.map(np.testing.assert_array_equal, packed_run.state, oracle_run.state)
    return packed_run, oracle_run
