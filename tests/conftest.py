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
