"""Metrics logging to ``metrics.csv`` (durable, resumable) and TensorBoard."""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

METRICS_NAME = "metrics.csv"
STEP_KEY = "env_steps"


class MetricsError(ValueError):
    """metrics.csv is unreadable, corrupt or incomplete, or cannot be written."""


def _move_aside(path: Path) -> str:
    return (f"move it aside (mv {path} {path}.bad) and resume again: a new {path.name} starts at the "
            "checkpoint, the old rows stay in the .bad file")


def _metrics_path(path_or_run_dir: str | Path) -> Path:
    """``metrics.csv`` inside a run directory, or the given file path itself."""
    path = Path(path_or_run_dir)
    return path / METRICS_NAME if path.is_dir() else path


def _as_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a numeric scalar."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _format_cell(value: Any) -> str:
    """CSV text of one value: exact ints, shortest round-tripping floats, else ``str``."""
    if value is None:
        return ""
    if _as_float(value) is None or np.ndim(value) != 0:
        return str(value)
    scalar = np.asarray(value)[()]
    return str(int(scalar)) if scalar.dtype.kind in "biu" else str(scalar)


def _parse_cell(text: str) -> float:
    """Float value of a CSV cell (nan when empty or non-numeric)."""
    try:
        return float(text) if text else math.nan
    except ValueError:
        return math.nan


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a CSV file (an empty file has an empty header)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise MetricsError(f"{path} is corrupt, not a CSV file of metrics ({type(e).__name__}: {e})") from e
    return (rows[0], rows[1:]) if rows else ([], [])


def read_metrics(path_or_run_dir: str | Path) -> dict[str, np.ndarray]:
    """Read ``metrics.csv`` (or a run dir holding one) as float columns.

    Empty or non-numeric cells become nan.  Raises FileNotFoundError if missing.
    """
    path = _metrics_path(path_or_run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    header, rows = _read_rows(path)
    table = [[_parse_cell(cell) for cell in row[:len(header)]]
             + [math.nan] * (len(header) - len(row)) for row in rows]
    columns = np.asarray(table, dtype=float).reshape(len(rows), len(header))
    return {name: columns[:, i] for i, name in enumerate(header)}


def _truncate_after(path: Path, resume_step: int, complete_to: int | None = None) -> list[str]:
    """Atomically drop rows with ``env_steps > resume_step`` (and a partial last row, as a kill leaves).

    Returns the existing header (empty if the file has none). Raises MetricsError for a file that is
    corrupt (no ``env_steps`` column, a malformed row before the last) or, with ``complete_to``,
    whose rows end before that step (rows the checkpoint implies are missing).
    """
    try:
        header, rows = _read_rows(path)
    except MetricsError as e:
        raise MetricsError(f"{e}; {_move_aside(path)}") from None
    if not header:
        return []
    if STEP_KEY not in header:
        raise MetricsError(f"{path} is corrupt: its header has no {STEP_KEY!r} column (it starts "
                           f"{','.join(header)[:80]!r}); {_move_aside(path)}")
    step_col = header.index(STEP_KEY)
    whole = [len(row) == len(header) and not math.isnan(_parse_cell(row[step_col])) for row in rows]
    bad = [i for i, ok in enumerate(whole[:-1]) if not ok]
    if bad:
        raise MetricsError(f"{path} is corrupt: line {bad[0] + 2} has {len(rows[bad[0]])} cells for "
                           f"{len(header)} columns or no {STEP_KEY}; {_move_aside(path)}")
    kept = [row for row, ok in zip(rows, whole) if ok and _parse_cell(row[step_col]) <= resume_step]
    last = _parse_cell(kept[-1][step_col]) if kept else 0
    if complete_to is not None and last < complete_to:
        raise MetricsError(f"{path} is incomplete: its rows end at {STEP_KEY}={last:g}, but rows up to {complete_to} "
                           f"were logged before the last checkpoint (was the file cut?); {_move_aside(path)}")
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", suffix=".csv", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        csv.writer(f).writerows([header, *kept])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return header


class MetricsLogger:
    """Append metric rows to ``run_dir/metrics.csv`` and TensorBoard (``run_dir/tb``).

    The CSV header comes from the first row's keys (in insertion order).  Every
    row must contain ``env_steps`` (the TensorBoard global step) and only keys
    from the header; missing keys are written empty.  Each row is flushed and
    fsync'ed.  With ``resume_step``, rows logged after that step (i.e. after
    the last checkpoint) are dropped from an existing file and logging
    continues with its header; without it, an existing file is overwritten.
    ``complete_to``: on resume, the step the kept rows must reach (MetricsError if
    the file is corrupt or misses rows; a missing file starts anew).
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None,
                 tensorboard: bool = True, complete_to: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_NAME
        self.header: list[str] = []
        if resume_step is not None and self.path.is_file():
            self.header = _truncate_after(self.path, resume_step, complete_to)
        self._file = open(self.path, "a" if self.header else "w", newline="")
        self._writer = csv.writer(self._file)
        self._tb = self._make_tb_writer(resume_step) if tensorboard else None

    def _make_tb_writer(self, resume_step: int | None):
        """TensorBoard writer; on resume, events after ``resume_step`` are purged."""
        from tensorboardX import SummaryWriter

        purge_step = None if resume_step is None else resume_step + 1
        return SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def _check_row(self, row: dict[str, Any]) -> None:
        """Validate a row against the required step key and the header."""
        if STEP_KEY not in row:
            raise ValueError(f"metrics row must contain {STEP_KEY!r}, got keys {list(row)}")
        unknown = [key for key in row if self.header and key not in self.header]
        if unknown:
            raise ValueError(
                f"metrics key {unknown[0]!r} is not in the CSV header {self.header}")

    def _write_csv(self, row: dict[str, Any]) -> None:
        """Append one row (writing the header first if needed), flush and fsync."""
        try:
            if not self.header:
                self._writer.writerow(list(row))
            self._writer.writerow([_format_cell(row.get(key)) for key in self.header or row])
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise MetricsError(f"could not write {self.path}: {e.strerror or e}; the run stops here: free space "
                               f"and continue with `mbrlax resume {self.run_dir}`") from e
        self.header = self.header or list(row)

    def _write_tb(self, row: dict[str, Any]) -> None:
        """Write each numeric value of the row (nan means missing) as a TensorBoard scalar."""
        step = int(row[STEP_KEY])
        for key, value in row.items():
            number = _as_float(value)
            if key != STEP_KEY and number is not None and not math.isnan(number):
                self._tb.add_scalar(key, number, global_step=step)

    def log(self, row: dict[str, Any]) -> None:
        """Log one row of metrics (must contain ``env_steps``)."""
        self._check_row(row)
        self._write_csv(row)
        if self._tb is not None:
            self._write_tb(row)

    def close(self) -> None:
        """Flush and close the CSV file and the TensorBoard writer."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
