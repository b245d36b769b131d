"""Shared state, parameter checks and small helpers of the route handlers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import HTTPException, Request

from contrahash.runtime import use_threads_in_this_thread
from contrahash.serve.batching import MicroBatcher
from contrahash.serve.models import ItemResponse
from contrahash.serve.settings import ServeSettings
from contrahash.serve.types import Collection, Item


@dataclass
class ServeState:
    """Everything a request handler needs; one per app (``app.state.serve``)."""

    collection: Collection
    settings: ServeSettings
    batcher: MicroBatcher[Any, dict[int, np.ndarray]]  # prepared queries → their codes
    decode_pool: ThreadPoolExecutor
    reload_lock: threading.Lock = field(default_factory=threading.Lock)
    #: bumped by every reload that changed the collection: the key of :meth:`derived`'s cache
    generation: int = 0
    _derived: dict[Any, asyncio.Future] = field(default_factory=dict)
    #: at most this many derived values are kept (e.g. groups at several radii)
    max_derived: int = 8

    def reload(self) -> bool:
        """``collection.reload()``, one at a time (blocking: call it from a worker thread)."""
        if self.settings.encode_threads is not None:  # an anyio thread: keep it off big teams
            use_threads_in_this_thread(1)
        with self.reload_lock:
            changed = bool(self.collection.reload())
            if changed:
                self.generation += 1
            return changed

    async def derived(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (blocking, run in a worker thread) once per collection snapshot and
        ``key``: duplicate groups and the album list are computed on the first request after a
        reload and shared by every request, concurrent ones included, until the next one."""
        generation = self.generation
        full_key = (generation, key)
        future = self._derived.get(full_key)
        if future is None:
            for old in [k for k in self._derived if k[0] != generation]:
                del self._derived[old]
            while len(self._derived) >= self.max_derived:  # the oldest first: a bounded cache
                del self._derived[next(iter(self._derived))]
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(None, self._run_single_threaded, compute)
            self._derived[full_key] = future
        try:
            return await asyncio.shield(future)
        except Exception:
            if self._derived.get(full_key) is future:  # a failure is not cached
                del self._derived[full_key]
            raise

    def _run_single_threaded(self, compute: Callable[[], Any]) -> Any:
        if self.settings.encode_threads is not None:
            use_threads_in_this_thread(1)
        return compute()


def get_state(request: Request) -> ServeState:
    """The app's :class:`ServeState` (a plain call, not a FastAPI dependency: each dependency
    costs tens of microseconds per request)."""
    return request.app.state.serve


def resolve_k(state: ServeState, k: int | None) -> int:
    """``k`` or the default; 422 outside ``1..max_k``."""
    if k is None:
        return state.settings.default_k
    if not 1 <= k <= state.settings.max_k:
        raise HTTPException(422, f"k must be between 1 and {state.settings.max_k}; got {k}")
    return k


def resolve_bits(state: ServeState, bits: int | None) -> int:
    """``bits`` or the collection's default; 422 for a code length the collection lacks."""
    available = list(state.collection.bits)
    if bits is None:
        return int(state.collection.default_bits)
    if bits not in available:
        raise HTTPException(422, f"bits must be one of {available}; got {bits}")
    return bits


def thumbnail_url(request: Request, item_id: int) -> str:
    """URL of an item's thumbnail, relative to the server root (honours ``root_path``)."""
    return f"{request.scope.get('root_path', '')}/api/items/{item_id}/thumbnail"


def original_url(request: Request, item_id: int) -> str:
    """URL of an item's original file (served by id only)."""
    return f"{request.scope.get('root_path', '')}/api/items/{item_id}/original"


def item_fields(request: Request, item: Item) -> dict[str, Any]:
    """The public fields of an item (never its filesystem path)."""
    return {"id": int(item.id), "name": str(item.name),
            "labels": [str(x) for x in item.labels],
            "album": None if item.album is None else str(item.album),
            "width": None if item.width is None else int(item.width),
            "height": None if item.height is None else int(item.height),
            "thumbnail_url": thumbnail_url(request, int(item.id)),
            "original_url": original_url(request, int(item.id))}


def item_response(request: Request, item: Item) -> ItemResponse:
    """The public view of an item (no filesystem path)."""
    return ItemResponse(**item_fields(request, item))


def request_start(request: Request) -> float:
    """``perf_counter()`` when the request's first message arrived (set by the middleware)."""
    return getattr(request.state, "t0", None) or time.perf_counter()
