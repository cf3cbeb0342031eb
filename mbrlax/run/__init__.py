"""Run infrastructure: checkpoints, metrics logging, progress display, the run-directory lock and
stopping on signals."""

from mbrlax.run.checkpoint import (CheckpointError, has_checkpoint, load_checkpoint,
                                   save_checkpoint)
from mbrlax.run.lock import RunLockedError, run_lock
from mbrlax.run.metrics import MetricsError, MetricsLogger, read_metrics
from mbrlax.run.progress import ProgressBar
from mbrlax.run.stop import RunStopped, StopSignals

__all__ = [
    "CheckpointError",
    "MetricsError",
    "MetricsLogger",
    "ProgressBar",
    "RunLockedError",
    "RunStopped",
    "StopSignals",
    "has_checkpoint",
    "load_checkpoint",
    "read_metrics",
    "run_lock",
    "save_checkpoint",
]
