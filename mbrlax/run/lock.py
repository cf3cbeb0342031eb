"""One writer per run directory: ``with run_lock(run_dir): ...`` around train/resume.

The lock is an OS lock (``flock``) on ``run_dir/run.lock``, which holds the owner's pid,
host and start time. The OS drops the lock when its process dies, however it dies, so a
lock left by a killed process is recognised (the file names a pid but nobody holds it)
and taken over with a note. The file is emptied, never deleted, on release (deleting a
lock file lets two processes lock different files of the same name). POSIX only: where
there is no ``flock`` (Windows) runs are not locked.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


def _read_owner(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode(errors="replace").strip()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner_pid(owner: str) -> int | None:
    try:
        return int(owner.split()[0])
    except (IndexError, ValueError):
        return None


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the block; RunLockedError if another live process holds it."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None:
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            pid = _owner_pid(owner)
            who = f"process {pid}" if pid is not None else "another process"
            raise RunLockedError(
                f"{run_dir} is being written by {who} ({path}: {owner or 'no details'}); two processes "
                f"must not write one run: wait for it to finish, or stop it first (kill {pid or 'PID'}: "
                "it checkpoints and exits) and then resume"
            ) from None
        previous = _read_owner(fd)
        pid = _owner_pid(previous)
        if previous and pid != os.getpid():
            state = "no longer running" if pid is None or not _pid_alive(pid) else "no longer holding it"
            print(f"mbrlax: taking over the lock of {run_dir} left by process {pid} ({state})", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
