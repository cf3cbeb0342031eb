"""Run infrastructure: checkpoints, metrics logging and progress display."""

from mbrlax.run.checkpoint import (CheckpointError, has_checkpoint, load_checkpoint,
                                   save_checkpoint)
from mbrlax.run.metrics import MetricsLogger, read_metrics
from mbrlax.run.progress import ProgressBar

__all__ = [
    "CheckpointError",
    "MetricsLogger",
    "ProgressBar",
    "has_checkpoint",
    "load_checkpoint",
    "read_metrics",
    "save_checkpoint",
]
