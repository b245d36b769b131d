"""Settings of the search service (limits, token, micro-batching)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Limits and tuning of one running service.

    ``max_upload_bytes`` caps an uploaded image; a request body may exceed it by at most
    ``multipart_overhead_bytes`` (boundaries, part headers, form fields) before the server
    stops reading and answers 413. ``token``, when set, is required as
    ``Authorization: Bearer TOKEN`` by every ``/api`` route. Concurrent image queries are
    encoded together: the batcher waits at most ``batch_window_ms`` for more requests after
    the first one, or until ``batch_max_size`` images are waiting. ``reload_interval_s`` > 0
    makes the service call ``collection.reload()`` that often (0: only ``POST /api/reload``).
    ``encode_threads`` set: the encoder thread runs on that many OpenMP threads and the
    service's other threads (image decoding, reloads) on one — see
    :func:`contrahash.runtime.use_threads_in_this_thread`; None leaves thread counts alone.
    ``warm_up``: decode and encode one generated image at start-up, before serving.
    ``max_rank``: the deepest result a page may reach (``offset + k``). ``header_timeout_s``:
    a connection whose request line and headers have not all arrived this long after it
    opened (or after its previous response) is closed (``contrahash serve`` installs the
    guard: :mod:`contrahash.serve.connections`). ``duplicates_per_page``: groups per page of
    ``/api/duplicates`` unless the request says.
    """

    max_upload_bytes: int = 10 * MIB
    multipart_overhead_bytes: int = 64 * 1024
    max_k: int = 1000
    default_k: int = 24
    token: str | None = None
    batch_window_ms: float = 3.0
    batch_max_size: int = 16
    decode_threads: int = 2
    search_in_thread: bool = False
    reload_interval_s: float = 0.0
    encode_threads: int | None = None
    warm_up: bool = False
    max_rank: int = 10_000
    header_timeout_s: float = 10.0
    duplicates_per_page: int = 20

    def __post_init__(self) -> None:
        checks = {
            "max_upload_bytes": self.max_upload_bytes > 0,
            "multipart_overhead_bytes": self.multipart_overhead_bytes >= 0,
            "max_k": self.max_k >= 1,
            "default_k": 1 <= self.default_k <= self.max_k,
            "batch_window_ms": self.batch_window_ms >= 0,
            "batch_max_size": self.batch_max_size >= 1,
            "decode_threads": self.decode_threads >= 1,
            "reload_interval_s": self.reload_interval_s >= 0,
            "encode_threads": self.encode_threads is None or self.encode_threads >= 1,
            "max_rank": self.max_rank >= self.max_k,
            "header_timeout_s": self.header_timeout_s > 0,
            "duplicates_per_page": self.duplicates_per_page >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ServeSettings.{name}: invalid value {getattr(self, name)!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("ServeSettings.token: must not be empty (use None for no token)")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body read before answering 413."""
        return self.max_upload_bytes + self.multipart_overhead_bytes
