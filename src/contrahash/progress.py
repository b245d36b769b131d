"""Progress of long phases, reported by the library and shown by whoever called it.

The library never draws anything: each long phase (data loading, feature extraction,
neighbour mining, training epochs, encoding, evaluation) reports :class:`ProgressEvent` s to a
callback. The command line turns them into a live bar on a terminal and periodic plain lines
elsewhere (:mod:`contrahash.cli.progress`); library users pass their own callback or none.

>>> seen = []
>>> progress = Progress(seen.append)
>>> with progress.phase("feature extraction", total=10) as phase:
...     phase.advance(4)
...     phase.advance(6)
>>> [(e.phase, e.done, e.finished) for e in seen]
[('feature extraction', 0, False), ('feature extraction', 4, False), ('feature extraction', 10, False), ('feature extraction', 10, True)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Phase", "Progress", "ProgressCallback", "ProgressEvent", "as_progress"]


@dataclass(frozen=True)
class ProgressEvent:
    """One report of a phase: ``done`` of ``total`` units (``total`` None when unknown)
    after ``seconds``; ``finished`` on the last report; ``info`` holds extra fields such as
    the epoch or the loss."""

    phase: str
    done: int
    total: int | None
    unit: str
    seconds: float
    finished: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Units per second so far (0 before any time has passed)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[ProgressEvent], None]


class Phase:
    """A running phase; :meth:`advance` reports progress (see :meth:`Progress.phase`)."""

    def __init__(self, callback: ProgressCallback | None, name: str, total: int | None,
                 unit: str, info: dict[str, Any]) -> None:
        self._callback = callback
        self.name = name
        self.total = total
        self.unit = unit
        self.info = info
        self.done = 0
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds since the phase started."""
        return time.perf_counter() - self._start

    def _emit(self, finished: bool = False) -> None:
        if self._callback is not None:
            self._callback(ProgressEvent(self.name, self.done, self.total, self.unit,
                                         self.seconds, finished, dict(self.info)))

    def advance(self, n: int = 1, **info: Any) -> None:
        """``n`` more units done; ``info`` updates the extra fields (e.g. ``loss=0.41``)."""
        self.done += int(n)
        self.info.update(info)
        self._emit()


class Progress:
    """Where the library reports progress: a callback (or None to report nothing)."""

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback

    @contextmanager
    def phase(self, name: str, total: int | None = None, unit: str = "img",
              **info: Any) -> Iterator[Phase]:
        """Report a phase from start to end; the end is reported even when it fails."""
        phase = Phase(self.callback, name, total, unit, dict(info))
        phase._emit()
        try:
            yield phase
        finally:
            phase._emit(finished=True)


def as_progress(progress: Progress | ProgressCallback | None) -> Progress:
    """A :class:`Progress` from what a caller passed: one, a callback, or None."""
    return progress if isinstance(progress, Progress) else Progress(progress)
