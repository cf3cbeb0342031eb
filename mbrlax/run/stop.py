"""Stopping a run cleanly on SIGTERM (how cluster schedulers stop jobs) or SIGINT (Ctrl-C).

    with StopSignals() as stop:
        while ...:
            ...                                   # one unit of work (an env step, a DAM round)
            if stop.requested:
                stop.checkpoint_and_raise(run_dir, state, meta, "env step 1234")  # or raise_stopped, if saved

The first signal only sets `requested`; the loop checkpoints at its next safe point and
raises RunStopped, which the CLI turns into a message and exit status 128 + signal. A
second signal acts as if no handler were installed (SIGINT: KeyboardInterrupt; SIGTERM:
the process ends at once, the last checkpoint is kept). Handlers are only installed in
the main thread (Python delivers signals there); elsewhere the block runs unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from mbrlax.run.checkpoint import checkpoint_dir, save_checkpoint

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _handler(previous):
    """A handler `signal.signal` takes back (None: one installed outside Python, treated as the default)."""
    return signal.SIG_DFL if previous is None else previous


class RunStopped(Exception):
    """The run stopped on a signal after saving a checkpoint; `resume` continues it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Context manager turning the first SIGTERM/SIGINT into `requested` (see the module doc)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second signal: what it would have done without us
            signal.signal(signum, _handler(self._previous[signum]))
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\nmbrlax: {signal.Signals(signum).name} received: checkpointing at the next safe point, then "
              "stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, _handler(handler))
        self._previous = {}

    def checkpoint_and_raise(self, run_dir: Path, state: Any, meta: dict, where: str) -> None:
        """Save `state` and `meta` as the run's checkpoint and raise RunStopped."""
        save_checkpoint(run_dir, state, meta)
        self.raise_stopped(run_dir, where)

    def raise_stopped(self, run_dir: Path, where: str) -> None:
        """Raise RunStopped (the checkpoint of this point is saved already)."""
        name = signal.Signals(self.signum).name
        raise RunStopped(f"stopped by {name} at {where}; checkpoint saved in {checkpoint_dir(run_dir)}; "
                         f"continue with `mbrlax resume {run_dir}`", self.signum)
