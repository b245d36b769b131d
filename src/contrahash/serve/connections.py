"""A deadline for a request's head: connections that never finish sending one are closed.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but only once a
first response has been sent, and it cancels that timer as soon as any byte arrives: a client
that connects and sends nothing (or half a request line, or headers one byte a minute) holds
its connection — a file descriptor and a protocol object — forever. A thousand of them
exhaust the process's descriptors. uvicorn has no setting for this (h11 bounds the head's
*size*, not its *time*), so :class:`HeadTimeoutH11Protocol` adds the timer: armed when the
connection opens and again after each response, disarmed when h11 has parsed a complete
request head; when it fires the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeadTimeoutH11Protocol", "head_timeout_protocol"]

log = logging.getLogger(__name__)


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline of ``head_timeout_s`` seconds for each request's
    line and headers (set on a subclass by :func:`head_timeout_protocol`)."""

    head_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._cycle_at_arm = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._cycle_at_arm:  # a complete request head was parsed
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already start a pipelined request's cycle
        cycle = self.cycle
        if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
            self._arm_head_timer()  # the next request on this connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not self._cycle_at_arm or self.transport.is_closing():
            return
        log.debug("closing %s: no complete request head within %.1f s", self.client,
                  self.head_timeout_s)
        self.transport.close()


def head_timeout_protocol(seconds: float) -> type[Any]:
    """A :class:`HeadTimeoutH11Protocol` subclass with this deadline, to pass as uvicorn's
    ``http=`` (a class: uvicorn instantiates one per connection)."""
    if seconds <= 0:
        raise ValueError(f"head timeout must be > 0 seconds, got {seconds}")
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,),
                {"head_timeout_s": float(seconds)})
