"""How long a one-command build will take, said before its long phases and kept updated.

A build's time goes to three kinds of work whose amounts are known before it starts: backbone
forwards (augmented training views, the images' own features, evaluation views, and
encoding anything not cached), training steps of the hashing head, and the per-file pass of
the collection (hash, thumbnail, perceptual code). :class:`TimeEstimate` wraps the progress
callback: it measures the speed of each kind from the phases as they run (the first
backbone batches give the forward speed, which dominates on a CPU), uses a prior for kinds
not yet seen, and reports ``elapsed + what is left / its speed``. The first estimate is said
once the forward speed has been measured on a few batches; a new one whenever a phase ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contrahash.progress import ProgressCallback, ProgressEvent

__all__ = ["FORWARD_PHASES", "TimeEstimate", "Work", "format_seconds"]

#: progress phases whose units are backbone forwards of one image each
FORWARD_PHASES = frozenset({
    "augmented views of the training images", "features of the evaluated images",
    "evaluation views", "encoding", "block inputs of the training views",
    "block inputs of the evaluated images", "feature extraction"})
TRAIN_PHASES = frozenset({"training"})
SCAN_PHASES = frozenset({"thumbnails and content hashes"})
#: images a forward phase must have done (and seconds it must have run) before its speed is
#: trusted: the first batch pays for warm-up (allocations, kernel selection, an engine's
#: compilation)
MIN_IMAGES, MIN_SECONDS = 192, 2.0
#: seconds between two updates said after phases of one name (training epochs)
REPORT_EVERY = 30.0


def format_seconds(seconds: float) -> str:
    """``3 min 05 s`` / ``42 s``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass
class Work:
    """Amounts of each kind of work, and prior speeds (units per second) for kinds not yet
    measured: speeds measured together on the 2-core CPU (docs/photos.md), scaled by the
    backbone speed measured now (a slower or busier machine is slower at everything)."""

    forwards: int
    train_images: int
    scan_items: int
    reload_seconds: float = 0.0
    prior: dict[str, float] = field(default_factory=lambda: {
        "forwards": 150.0, "train": 1100.0, "scan": 150.0})


class TimeEstimate:
    """A progress callback (wrapping ``callback``) that says estimates through ``say``."""

    def __init__(self, work: Work, say: Callable[[str], None],
                 callback: ProgressCallback | None = None) -> None:
        self.work = work
        self.say = say
        self.callback = callback
        self.start = time.perf_counter()
        self.done = {"forwards": 0, "train": 0, "scan": 0}
        self.rate: dict[str, float] = {}
        self.busy = {"forwards": 0.0, "train": 0.0, "scan": 0.0}
        self._last: dict[str, tuple[int, float]] = {}
        self._said_after = ""
        self._said_at = 0.0
        self.first: float | None = None  # the first estimate of the total, seconds
        self.history: list[tuple[float, float]] = []  # (elapsed, estimated total)

    def _kind(self, phase: str) -> str | None:
        if phase in FORWARD_PHASES:
            return "forwards"
        if phase in TRAIN_PHASES:
            return "train"
        if phase in SCAN_PHASES:
            return "scan"
        return None

    def __call__(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)
        kind = self._kind(event.phase)
        if kind is not None:  # phases of one name run one after another (epochs)
            last = self._last.get(event.phase, (0, 0.0))
            if event.done < last[0]:
                last = (0, 0.0)
            self.done[kind] += event.done - last[0]
            self.busy[kind] += event.seconds - last[1]
            self._last[event.phase] = (0, 0.0) if event.finished else (event.done,
                                                                       event.seconds)
            self._measure(kind)
            if (kind == "forwards" and event.finished and kind not in self.rate
                    and self.done[kind] > 0 and self.busy[kind] > 0):
                # a first backbone phase too short to pass the thresholds: its speed is the
                # best there is (a small folder), and the estimate must still come first
                self.rate[kind] = self.done[kind] / self.busy[kind]
        if self.first is None and "forwards" in self.rate:
            self._report(first=True)
        elif event.finished and self.first is not None and kind is not None and (
                event.phase != self._said_after or
                time.perf_counter() - self._said_at >= REPORT_EVERY):
            self._said_after = event.phase  # one line per phase (epochs: every REPORT_EVERY s)
            self._report(first=False)

    def _measure(self, kind: str) -> None:
        """A kind's speed: its units done over the seconds its phases ran (all of them: a
        training epoch on cached features lasts a fraction of a second)."""
        if self.busy[kind] < (MIN_SECONDS if kind == "forwards" else 0.5):
            return
        if kind == "forwards" and self.done[kind] < MIN_IMAGES:
            return
        if self.done[kind] > 0:
            self.rate[kind] = self.done[kind] / self.busy[kind]

    def remaining(self) -> float:
        """Seconds still to go, from the speeds measured so far (priors elsewhere)."""
        w = self.work
        left = 0.0
        forwards = self.rate.get("forwards")
        for kind, total in (("forwards", w.forwards), ("train", w.train_images),
                            ("scan", w.scan_items)):
            rate = self.rate.get(kind)
            if rate is None:  # not measured yet: as fast, relative to the backbone, as here
                rate = w.prior[kind] * (forwards / w.prior["forwards"] if forwards else 1.0)
            left += max(0, total - self.done[kind]) / rate
        if self.done["scan"] == 0:
            left += w.reload_seconds
        return left

    def _report(self, first: bool) -> None:
        self._said_at = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        left = self.remaining()
        total = elapsed + left
        self.history.append((elapsed, total))
        if first:
            self.first = total
            speed = self.rate["forwards"]
            self.say(f"estimated total time {format_seconds(total)} ({format_seconds(left)} "
                     f"left; the backbone runs at {speed:,.0f} images/s here)")
        elif left > 1:
            self.say(f"estimate: {format_seconds(left)} left, "
                     f"{format_seconds(total)} in all")
