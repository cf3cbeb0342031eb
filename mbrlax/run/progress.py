"""Training progress display: a rich bar on terminals, plain status lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text


def _fmt_fields(fields: dict[str, Any]) -> str:
    """``key=value`` text of the extra fields (floats with 2 decimals)."""
    return " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in fields.items())


def _fmt_duration(seconds: float) -> str:
    """``1h02m03s`` style duration (``?`` when unknown)."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _fmt_rate(rate: float | None, unit: str) -> str:
    """``1,234 steps/s``; two decimals for slow units such as DAM rounds."""
    if rate is None:
        return f"-- {unit}/s"
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.2f} {unit}/s"


class _RateColumn(ProgressColumn):
    """Units (env steps, rounds) per second."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(_fmt_rate(task.speed, self.unit))


class ProgressBar:
    """Context manager showing units (env steps by default) done/total, rate, ETA and eval return.

    On a terminal (and ``enabled``) this is a rich progress bar; otherwise a plain
    status line is printed at most every ``interval`` seconds, and once at exit.
    ``update(advance, **fields)`` advances by ``advance`` steps and records extra
    fields such as ``eval_return=...``.
    """

    def __init__(self, total: int, initial: int = 0, description: str = "train",
                 enabled: bool = True, interval: float = 10.0, unit: str = "steps"):
        self.total, self.done, self.initial, self.unit = total, initial, initial, unit
        self.description, self.interval, self.fields = description, interval, {}
        self._rich = enabled and sys.stdout.isatty()
        self._start = self._last_print = time.monotonic()

    def __enter__(self) -> ProgressBar:
        if self._rich:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                _RateColumn(self.unit), TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
            self._progress.start()
            self._task = self._progress.add_task(
                self.description, total=self.total, completed=self.initial, status="")
        return self

    def update(self, advance: int = 0, **fields: Any) -> None:
        """Advance by ``advance`` units and update the displayed fields."""
        self.done += advance
        self.fields.update(fields)
        if self._rich:
            self._progress.update(self._task, advance=advance, status=_fmt_fields(self.fields))
        elif time.monotonic() - self._last_print >= self.interval:
            self._print_status()

    def status_line(self) -> str:
        """Plain one-line status: done/total, rate, ETA and extra fields."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.done - self.initial) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"{self.description}: {self.done}/{self.total} {self.unit} | {_fmt_rate(rate, self.unit)}"
                f" | eta {_fmt_duration(eta)}")
        return f"{line} | {_fmt_fields(self.fields)}" if self.fields else line

    def _print_status(self) -> None:
        print(self.status_line(), flush=True)
        self._last_print = time.monotonic()

    def __exit__(self, *exc) -> None:
        if self._rich:
            self._progress.stop()
        else:
            self._print_status()
