"""Showing the library's progress events: a live bar on a terminal, plain lines elsewhere.

On a terminal each phase gets a rich progress bar with its rate; in CI, logs or ``nohup`` a
line is printed every ``CONTRAHASH_PROGRESS_SECONDS`` (default 10) while a phase runs and
one when it ends (phases under a second print nothing) — so a long phase is never silent and
a short one costs one line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any

import typer

from contrahash.progress import ProgressCallback, ProgressEvent

__all__ = ["ProgressOption", "progress_display"]

#: the ``--progress/--no-progress`` option of every command with long phases (one declaration,
#: so its name, default and help read the same in every ``--help``)
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress",
                                              help="show progress of long phases (stderr)")]


def progress_display(enabled: bool = True, stream: Any = None) -> ProgressCallback | None:
    """A callback that shows progress on ``stream`` (stderr): None when disabled."""
    if not enabled:
        return None
    stream = stream or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return _RichBars(stream)
    return _PlainLines(stream, float(os.environ.get("CONTRAHASH_PROGRESS_SECONDS", "10")))


def _describe(event: ProgressEvent) -> str:
    info = event.info
    name = event.phase
    if "epoch" in info and "epochs" in info:
        name += f" (epoch {info['epoch']}/{info['epochs']})"
    if event.total:
        done = f"{event.done:,}/{event.total:,} {event.unit} ({100 * event.done / event.total:.0f}%)"
    else:
        done = f"{event.done:,} {event.unit}"
    rate = f", {event.rate:,.0f} {event.unit}/s" if event.done and event.seconds > 0.5 else ""
    loss = f", loss {info['loss']:.4f}" if isinstance(info.get("loss"), float) else ""
    return f"{name}: {done}{rate}{loss}"


def _eta(event: ProgressEvent) -> str:
    if not event.total or not event.done or event.finished:
        return ""
    left = (event.total - event.done) / max(event.rate, 1e-9)
    return f", about {left / 60:.1f} min left" if left >= 60 else f", about {left:.0f} s left"


class _PlainLines:
    """A line every ``interval`` seconds while a phase runs, and one at its end."""

    def __init__(self, stream: Any, interval: float) -> None:
        self.stream = stream
        self.interval = interval
        self.last: dict[str, float] = {}

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        key = event.phase
        if event.finished:
            self.last.pop(key, None)
            if event.seconds >= 1.0:
                self._print(f"{_describe(event)} — done in {event.seconds:.1f} s")
            return
        if key not in self.last:
            self.last[key] = now
            return
        if now - self.last[key] >= self.interval:
            self.last[key] = now
            self._print(_describe(event) + _eta(event))

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class _RichBars:
    """A transient rich progress bar per running phase."""

    def __init__(self, stream: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), console=Console(file=stream),
                                 transient=True)
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __call__(self, event: ProgressEvent) -> None:
        key = event.phase
        if event.finished:
            task = self.tasks.pop(key, None)
            if task is not None:
                self.progress.remove_task(task)
            if event.seconds >= 1.0:
                self.progress.console.print(f"{_describe(event)} — done in {event.seconds:.1f} s",
                                            highlight=False)
            if not self.tasks and self.started:
                self.progress.stop()
                self.started = False
            return
        if not self.started:
            self.progress.start()
            self.started = True
        description = _describe(event).split(":")[0]
        rate = f"{event.rate:,.0f} {event.unit}/s" if event.done and event.seconds > 0.5 else ""
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=event.total, rate=rate)
        self.progress.update(self.tasks[key], completed=event.done, total=event.total,
                             description=description, rate=rate)
