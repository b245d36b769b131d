"""Micro-batching: concurrent requests share one call of a batch function.

:class:`MicroBatcher` collects items submitted from the event loop, for at most ``window_s``
after the first one or until ``max_batch`` are waiting, then runs ``fn(items)`` once in a
worker thread and hands each caller its own result. One batch runs at a time, so while a batch
is being encoded the next requests queue up and form the next batch: under load the batches
grow by themselves, and a lone request waits at most ``window_s``.

If a batch call fails, its items are retried one by one so that a single bad item only fails
its own request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatchResult(Generic[R]):
    """One item's result plus how it was computed."""

    value: R
    batch_size: int
    compute_ms: float  # duration of the batch call that produced it


class MicroBatcher(Generic[T, R]):
    """Run ``fn`` on batches of submitted items in one worker thread.

    ``fn`` receives a list of items and must return a sequence of results of the same length,
    in the same order. :meth:`submit` must be called from one event loop (the first call binds
    the batcher to it).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 16,
                 window_s: float = 0.003, name: str = "batcher",
                 initializer: Callable[[], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self._fn = fn
        self.max_batch = max_batch
        self.window_s = window_s
        self._name = name
        self._initializer = initializer  # run once in the worker thread before its first batch
        self._pending: list[tuple[T, asyncio.Future[BatchResult[R]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # guards start/stop only
        #: sizes of the batches run so far (for tests and diagnostics)
        self.batch_sizes: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        with self._lock:
            old = self._loop
            if (old is not None and old is not loop and not old.is_closed()
                    and self._task is not None and not self._task.done()):
                raise RuntimeError(f"{self._name}: already running on another event loop")
            if old is not loop:
                self._pending.clear()  # futures of a finished loop can never be resolved
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._full = asyncio.Event()
            if self._pending:
                self._wakeup.set()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._name,
                                                    initializer=self._initializer)
            self._task = loop.create_task(self._run(), name=self._name)

    async def aclose(self) -> None:
        """Stop the batching task; waiting callers get ``RuntimeError``."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(RuntimeError(f"{self._name} stopped"))
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------ submit

    async def submit(self, item: T) -> BatchResult[R]:
        """Queue ``item`` and wait for its result (raises what ``fn`` raised for it)."""
        self._ensure_started()
        assert self._loop is not None and self._wakeup is not None and self._full is not None
        fut: asyncio.Future[BatchResult[R]] = self._loop.create_future()
        self._pending.append((item, fut))
        self._wakeup.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await fut

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        assert self._wakeup is not None and self._full is not None
        while True:
            await self._wakeup.wait()
            if len(self._pending) < self.max_batch and self.window_s > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), self.window_s)
                except TimeoutError:
                    pass
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if len(self._pending) < self.max_batch:
                self._full.clear()
            if not self._pending:
                self._wakeup.clear()
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[T, asyncio.Future[BatchResult[R]]]]) -> None:
        assert self._loop is not None
        items = [item for item, _ in batch]
        self.batch_sizes.append(len(items))
        try:
            values, ms = await self._loop.run_in_executor(self._executor, self._call, items)
        except Exception as exc:  # noqa: BLE001 - isolate the failing item(s) below
            if len(batch) == 1:
                _set(batch[0][1], exc=exc)
                return
            for item, fut in batch:  # one by one: only the bad items fail
                try:
                    values, ms = await self._loop.run_in_executor(self._executor, self._call,
                                                                  [item])
                    _set(fut, BatchResult(values[0], 1, ms))
                except Exception as one_exc:  # noqa: BLE001
                    _set(fut, exc=one_exc)
            return
        for (_, fut), value in zip(batch, values, strict=True):
            _set(fut, BatchResult(value, len(items), ms))

    def _call(self, items: list[T]) -> tuple[Sequence[R], float]:
        start = time.perf_counter()
        values = self._fn(items)
        if len(values) != len(items):
            raise RuntimeError(f"{self._name}: batch function returned {len(values)} results "
                               f"for {len(items)} items")
        return values, (time.perf_counter() - start) * 1000.0


def _set(fut: asyncio.Future, value: object = None, exc: BaseException | None = None) -> None:
    if fut.done():  # the caller went away (cancelled)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)
