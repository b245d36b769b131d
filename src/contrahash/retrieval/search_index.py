"""The declared interface of a binary-code index: :class:`SearchIndex`.

Every index backend implements it — :class:`contrahash.retrieval.index.HammingIndex`
(in-process: faiss, numpy or torch) and :class:`contrahash.retrieval.milvus.MilvusIndex`
(a Milvus Lite file or server) — and the collection code (:mod:`contrahash.retrieval.collection`)
holds its indexes as ``SearchIndex`` only, so a third backend is a new file plus one row of
:data:`contrahash.retrieval.backends.INDEX_BACKENDS` (see docs/architecture.md,
"Adding an index backend: the checklist"). ``tests/test_search_index.py`` runs every backend
through the same cases.

The contract, on every backend:

* codes are ``bits``-bit: ±1, {0, 1} or bool ``[n, bits]``, or packed ``uint8 [n, ceil(bits/8)]``
  with ``packed=True`` (big-endian bits within a byte, zero padding bits: any ``bits`` >= 1);
* :meth:`~SearchIndex.search` is exact (an approximate backend option says so where it is
  chosen), distances are exact Hamming distances, and the ranking is faiss's
  ``IndexBinaryFlat`` order: ``(distance, insertion position)``. A backend that cannot see
  insertion order ranks by ``(distance, id)``, the same order whenever ids ascend with
  insertion — which is how a collection adds them;
* slots past the index size hold id ``-1`` and distance ``PAD_DISTANCE`` (int32 max);
* :meth:`~SearchIndex.range_search` returns every item within the radius, in the same order;
* ``len(index)`` is the exact number of items held, right after any write of this process;
* :meth:`~SearchIndex.close` is idempotent and releases what the index holds outside the
  process (nothing, in-process).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["SearchIndex"]


@runtime_checkable
class SearchIndex(Protocol):
    """Exact Hamming k-NN and range search over ``bits``-bit codes (see the module docstring)."""

    #: code length in bits
    bits: int

    def __len__(self) -> int:
        """How many items the index holds (exact)."""
        ...

    def add(self, codes: Any, ids: Any = None, *, packed: bool = False) -> None:
        """Append ``codes`` under ``ids`` (int64 >= 0; default: consecutive after the count)."""
        ...

    def search(self, queries: Any, k: int, *, packed: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(distances int32 [q, k], ids int64 [q, k])`` of each query's ``k`` nearest."""
        ...

    def range_search(self, queries: Any, radius: int, *, packed: bool = False
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, ``(distances int32 [m], ids int64 [m])`` of every item within
        ``radius`` (inclusive), ranked like :meth:`search`."""
        ...

    def remove(self, ids: Any) -> int:
        """Drop the items with these ids (unknown ids are ignored); how many were held."""
        ...

    def close(self) -> None:
        """Release outside resources (connections, an embedded server); idempotent."""
        ...
