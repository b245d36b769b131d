"""An exact Hamming-distance index over binary codes, and its file format.

Codes are packed as :mod:`contrahash.retrieval.hamming` describes (bit ``j`` in byte ``j // 8``,
big-endian within a byte, zero padding bits).

Ranking
-------
Every search is exact and ranks the database by ``(Hamming distance, insertion position)``:
ties are broken by the order in which items were added, on every backend. This is the same
ranking as :mod:`contrahash.evaluation.metrics` uses (stable sort), so an index search and an evaluation
always agree on which items come first. faiss' ``IndexBinaryFlat`` heap keeps the smallest
``(distance, position)`` pairs; that behaviour is checked once per process on tie-heavy data
(:func:`contrahash.retrieval.hamming.faiss_orders_ties_by_position`) and the exact numpy kernel takes
over if a faiss build ever disagrees.

File format (one format for every backend, little-endian)
---------------------------------------------------------
=======  =======  ================================================
offset   size     field
=======  =======  ================================================
0        6        magic ``b"CHIDX\\0"``
6        2        format version (uint16, currently 1)
8        4        bits per code (uint32)
12       4        bytes per packed code (uint32, ``ceil(bits / 8)``)
16       8        number of codes (uint64)
24       8        reserved (zero)
32       n*B      packed codes, row-major
...      n*8      ids (int64)
end-32   32       sha256 of everything before it
=======  =======  ================================================

Writes go to a temporary file in the target directory, then ``os.replace``: a crash never
leaves a half-written index behind. Any mismatch on load raises :class:`IndexFormatError`
naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.io import atomic_write
from contrahash.retrieval.hamming import (
    MAX_BITS,
    PackedDatabase,
    check_bits,
    check_packed,
    code_bits,
    faiss_module,
    faiss_orders_ties_by_position,
    hamming_distance_rows,
    hamming_topk,
    pack_codes,
    require_torch,
    rows_sorted,
    to_numpy,
    torch_distances,
    torch_signed,
    torch_topk,
    unpack_codes,
)

__all__ = [
    "HammingIndex",
    "IndexFormatError",
    "pack_codes",
    "unpack_codes",
]

MAGIC = b"CHIDX\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<6sHIIQQ")  # magic, version, bits, code bytes, count, reserved
_DIGEST_BYTES = 32
#: Distance reported for padding slots when fewer than ``k`` items exist (faiss' convention).
PAD_DISTANCE = np.iinfo(np.int32).max
PAD_ID = -1


class IndexFormatError(ValueError):
    """An index file (or a code array given to an index) is not what it should be."""


# --------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------

_BACKENDS = ("auto", "faiss", "numpy", "torch")
#: Range searches over at least this many codes may use faiss' multi-hash index.
_MULTIHASH_MIN_SIZE = 100_000


def codes_as_packed(codes: Any, bits: int, packed: bool, name: str, where: str = "") -> np.ndarray:
    """Codes as packed uint8 rows for an index of ``bits``-bit codes (±1/{0,1}/bool, or already
    packed with ``packed=True``); a code length mismatch names both lengths and ``where``."""
    if packed:
        return check_packed(codes, bits, name)
    bits_bool = code_bits(codes, name)
    if bits_bool.shape[1] != bits:
        raise IndexFormatError(f"{name} have {bits_bool.shape[1]} bits but the index holds "
                               f"{bits}-bit codes{where}")
    return np.packbits(bits_bool, axis=1)


def item_ids(ids: Any, n: int, start: int) -> np.ndarray:
    """int64 ids of ``n`` new items: ``ids`` checked (integers >= 0, one per item), or
    consecutive numbers from ``start``."""
    if ids is None:
        return np.arange(start, start + n, dtype=np.int64)
    raw = to_numpy(ids)
    if raw.shape != (n,) or not (np.issubdtype(raw.dtype, np.integer) or raw.size == 0):
        raise ValueError(f"ids must be an integer array of shape ({n},); got {raw.dtype} {raw.shape}")
    new_ids = raw.astype(np.int64)
    if new_ids.size and new_ids.min() < 0:
        raise ValueError("ids must be >= 0 (-1 marks empty result slots)")
    return new_ids


def search_frame(queries: Any, k: Any, packed: bool, bits: int, n: int, where: str = ""
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """What every search starts from: the packed queries, the padded ``(distances, ids)`` to
    fill, and ``min(k, n)`` for an index of ``n`` codes."""
    q = codes_as_packed(queries, bits, packed, "queries", where)
    dist, ids, k = empty_results(k, q.shape[0])
    return q, dist, ids, min(k, n)


def empty_results(k: Any, nq: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``k`` checked, and the padded ``(distances, ids)`` a search of ``nq`` queries fills
    (id -1 and distance ``PAD_DISTANCE`` in slots past the index size)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    k = int(k)
    return (np.full((nq, k), PAD_DISTANCE, dtype=np.int32), np.full((nq, k), PAD_ID, np.int64),
            k)


class HammingIndex:
    """Exact Hamming k-NN and range search over binary codes, in this process (a
    :class:`contrahash.retrieval.search_index.SearchIndex`).

    ``backend``: ``"faiss"`` (``IndexBinaryFlat``), ``"numpy"`` (packed XOR + popcount),
    ``"torch"`` (±1 matmul on ``device``, CUDA when available) or ``"auto"`` (faiss when it
    imports, else numpy). Every backend returns identical results: ranking by distance, ties
    by insertion order.

    >>> index = HammingIndex(4, backend="numpy")
    >>> index.add(np.array([[1, 1, 1, 1], [-1, 1, 1, 1], [1, 1, 1, 1]]), ids=[10, 11, 12])
    >>> index.search(np.array([[1, 1, 1, 1]]), 3)
    (array([[0, 0, 1]], dtype=int32), array([[10, 12, 11]]))
    """

    def __init__(self, bits: int, backend: str = "auto", device: Any = None) -> None:
        self.bits = check_bits(bits)
        self.code_bytes = (self.bits + 7) // 8
        self.backend = self._resolve_backend(backend)
        self.device = device
        self.source: Path | None = None  # file the index was loaded from, for messages
        self._chunks: list[np.ndarray] = []
        self._id_chunks: list[np.ndarray] = []
        self._packed = np.zeros((0, self.code_bytes), dtype=np.uint8)
        self._ids = np.zeros(0, dtype=np.int64)
        self._cache: dict[str, Any] = {}

    @staticmethod
    def _resolve_backend(backend: str) -> str:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}; got {backend!r}")
        if backend == "auto":
            return "faiss" if faiss_module() is not None else "numpy"
        if backend == "faiss" and faiss_module() is None:
            raise ImportError("backend='faiss' needs faiss (pip install faiss-cpu)")
        if backend == "torch":
            require_torch()
        return backend

    # ---- contents -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids) + sum(len(c) for c in self._id_chunks)

    def __repr__(self) -> str:
        return f"HammingIndex(bits={self.bits}, backend={self.backend!r}, ntotal={len(self)})"

    @property
    def packed_codes(self) -> np.ndarray:
        """All stored codes, packed ``uint8 [n, ceil(bits/8)]``, in insertion order."""
        self._consolidate()
        return self._packed

    @property
    def ids(self) -> np.ndarray:
        """Ids ``int64 [n]`` in insertion order."""
        self._consolidate()
        return self._ids

    def _consolidate(self) -> None:
        if self._chunks:
            self._packed = np.ascontiguousarray(np.concatenate([self._packed, *self._chunks]))
            self._ids = np.concatenate([self._ids, *self._id_chunks])
            self._chunks, self._id_chunks = [], []

    def _where(self) -> str:
        return f" (index file {self.source})" if self.source else ""

    def _as_packed(self, codes: Any, packed: bool, name: str) -> np.ndarray:
        return codes_as_packed(codes, self.bits, packed, name, self._where())

    def add(self, codes: Any, ids: Any = None, *, packed: bool = False) -> None:
        """Append codes ``[n, bits]`` (±1, {0,1} or bool; or packed uint8 with ``packed=True``).

        ``ids`` (int64, >= 0) default to consecutive numbers after the current size.
        """
        p = self._as_packed(codes, packed, "codes")
        n = p.shape[0]
        new_ids = item_ids(ids, n, len(self))
        if n == 0:
            return
        self._chunks.append(p)
        self._id_chunks.append(new_ids)
        faiss_index = self._cache.get("faiss")
        if faiss_index is not None:
            faiss_index.add(self._faiss_codes(p))
        for key in [key for key in self._cache if key != "faiss"]:
            del self._cache[key]

    def remove(self, ids: Any) -> int:
        """Drop every row whose id is in ``ids``; returns how many of the (distinct) ids the
        index held. Unknown ids are ignored; the remaining rows keep their insertion order."""
        raw = to_numpy(ids) if ids is not None else np.zeros(0, np.int64)
        if raw.ndim != 1:
            raise ValueError(f"ids must be a 1-D integer array; got shape {raw.shape}")
        wanted = np.unique(item_ids(raw, raw.shape[0], 0))
        if not len(wanted) or not len(self):
            return 0
        gone = np.isin(self.ids, wanted)
        if not gone.any():
            return 0
        held = int(len(np.unique(self._ids[gone])))
        self._packed = np.ascontiguousarray(self._packed[~gone])
        self._ids = self._ids[~gone]
        self._cache.clear()  # positions moved: every backend's state is rebuilt on demand
        return held

    def close(self) -> None:
        """Nothing to release (the codes live in this process); for :class:`SearchIndex`."""

    def __enter__(self) -> HammingIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- backend state --------------------------------------------------------------------

    def _faiss_codes(self, packed: np.ndarray) -> np.ndarray:
        # faiss needs a whole number of bytes: the zero padding bits leave distances unchanged
        return np.ascontiguousarray(packed)

    def _faiss_index(self) -> Any:
        if "faiss" not in self._cache:
            faiss = faiss_module()
            index = faiss.IndexBinaryFlat(self.code_bytes * 8)
            if len(self):
                index.add(self.packed_codes)
            self._cache["faiss"] = index
        return self._cache["faiss"]

    def _db(self) -> PackedDatabase:
        if "db" not in self._cache:
            self._cache["db"] = PackedDatabase(self.packed_codes, self.bits)
        return self._cache["db"]

    def _faiss_range_index(self, radius: int) -> Any:
        """The faiss index for a range search of ``radius``.

        Small radii on large indexes use ``IndexBinaryMultiHash``: the code is cut into
        ``n_hash > radius`` disjoint segments, so (pigeonhole) every code within the radius
        matches the query exactly on at least one segment and the search stays exact while
        touching a tiny fraction of the database (about 50x faster than the flat scan for
        radius 2 over 1M 64-bit codes). Built once, on first use, and kept.
        """
        n_hash = max(4, radius + 1)
        seg_bits = min(24, self.code_bytes * 8 // n_hash)
        if len(self) < _MULTIHASH_MIN_SIZE or seg_bits < 12:
            return self._faiss_index()
        key = f"multihash-{n_hash}-{seg_bits}"
        if key not in self._cache:
            index = faiss_module().IndexBinaryMultiHash(self.code_bytes * 8, n_hash, seg_bits)
            index.nflip = 0
            index.add(self.packed_codes)
            self._cache[key] = index
        return self._cache[key]

    def _torch_device(self) -> Any:
        t = require_torch()
        if self.device is not None:
            return t.device(self.device)
        return t.device("cuda" if t.cuda.is_available() else "cpu")

    def _torch_db(self) -> Any:
        if "torch" not in self._cache:
            bits_bool = np.unpackbits(self.packed_codes, axis=1, count=self.bits).astype(bool)
            self._cache["torch"] = torch_signed(bits_bool, self._torch_device())
        return self._cache["torch"]

    # ---- search -----------------------------------------------------------------------------

    def search(self, queries: Any, k: int, *, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query: ``(distances int32 [q, k], ids int64 [q, k])``.

        Ranked by distance, ties by insertion order. When ``k`` exceeds the index size the
        trailing slots hold id ``-1`` and distance ``PAD_DISTANCE`` (int32 max).
        """
        q, dist, ids, kk = search_frame(queries, k, packed, self.bits, len(self), self._where())
        if q.shape[0] == 0 or kk == 0:
            return dist, ids
        if self.backend == "faiss" and faiss_orders_ties_by_position():
            d, pos = self._faiss_index().search(self._faiss_codes(q), kk)
            if not rows_sorted(d, pos):  # never seen; keeps the contract if faiss changes
                order = np.lexsort((pos, d), axis=1)
                d, pos = np.take_along_axis(d, order, 1), np.take_along_axis(pos, order, 1)
        elif self.backend == "torch":
            qs = torch_signed(np.unpackbits(q, axis=1, count=self.bits).astype(bool),
                              self._torch_device())
            d_t, p_t = torch_topk(qs, self._torch_db(), kk)
            d, pos = d_t.cpu().numpy(), p_t.cpu().numpy()
        else:
            d, pos = hamming_topk(q, self._db(), kk, use_faiss=False)
        dist[:, :kk] = d
        ids[:, :kk] = self.ids[pos]
        return dist, ids

    def range_search(
        self, queries: Any, radius: int, *, packed: bool = False
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """All codes within Hamming distance ``<= radius`` of each query.

        Returns one ``(distances int32 [m], ids int64 [m])`` pair per query, ranked by distance
        then insertion order (the same order :meth:`search` uses).
        """
        if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer; got {radius!r}")
        radius = int(radius)
        q = self._as_packed(queries, packed, "queries")
        nq, n = q.shape[0], len(self)
        empty = (np.zeros(0, np.int32), np.zeros(0, np.int64))
        if n == 0:
            return [empty for _ in range(nq)]
        if self.backend == "faiss":
            index = self._faiss_range_index(radius)
            lims, d, pos = index.range_search(self._faiss_codes(q), radius + 1)  # faiss: d < r
            qi = np.repeat(np.arange(nq), np.diff(lims.astype(np.int64)))
        else:
            qi_parts, d_parts, p_parts = [], [], []
            if self.backend == "torch":
                qs = torch_signed(np.unpackbits(q, axis=1, count=self.bits).astype(bool),
                                  self._torch_device())
                db = self._torch_db()
                rows = max(1, (1 << 24) // n)
                for s in range(0, nq, rows):
                    dd = torch_distances(qs[s : s + rows], db)
                    r, c = (dd <= radius).nonzero(as_tuple=True)
                    qi_parts.append(r.cpu().numpy() + s)
                    p_parts.append(c.cpu().numpy())
                    d_parts.append(dd[r, c].cpu().numpy())
            else:
                for s, dd in hamming_distance_rows(q, self._db(), use_faiss=False):
                    r, c = np.nonzero(dd <= radius)
                    qi_parts.append(r + s)
                    p_parts.append(c)
                    d_parts.append(dd[r, c])
            qi = np.concatenate(qi_parts) if qi_parts else np.zeros(0, np.int64)
            d = np.concatenate(d_parts) if d_parts else np.zeros(0, np.int64)
            pos = np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64)
        order = np.lexsort((pos, d, qi))
        d, pos = d[order].astype(np.int32), pos[order].astype(np.int64)
        splits = np.searchsorted(qi[order], np.arange(1, nq))
        ids_all = self.ids[pos]
        return list(zip(np.split(d, splits), np.split(ids_all, splits), strict=True))

    # ---- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically (temporary file + ``os.replace``); returns the path."""
        path = Path(path)
        packed, ids = self.packed_codes, self.ids
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, self.bits, self.code_bytes, len(ids), 0)
        digest = hashlib.sha256()
        parts = [header, packed.tobytes(), ids.astype("<i8").tobytes()]
        for part in parts:
            digest.update(part)

        def write(fh: Any) -> None:
            for part in parts:
                fh.write(part)
            fh.write(digest.digest())

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "auto", device: Any = None
             ) -> HammingIndex:
        """Read an index written by :meth:`save`, checking size, header and checksum."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"index file {path} does not exist") from None
        if len(data) < _HEADER.size + _DIGEST_BYTES:
            if not data.startswith(MAGIC[: len(data)]) or len(data) < len(MAGIC):
                raise IndexFormatError(f"{path}: not a contrahash index (too short, "
                                       f"{len(data)} bytes)")
            raise IndexFormatError(f"{path}: truncated ({len(data)} bytes, smaller than the "
                                   f"{_HEADER.size + _DIGEST_BYTES}-byte header and checksum)")
        magic, version, bits, code_bytes, count, _ = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise IndexFormatError(f"{path}: not a contrahash index (magic bytes {magic!r}, "
                                   f"expected {MAGIC!r})")
        if version != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: index format version {version} is not supported "
                                   f"(this contrahash reads version {FORMAT_VERSION})")
        if not 1 <= bits <= MAX_BITS or code_bytes != (bits + 7) // 8:
            raise IndexFormatError(f"{path}: corrupted header (bits={bits}, "
                                   f"bytes per code={code_bytes})")
        expected = _HEADER.size + count * (code_bytes + 8) + _DIGEST_BYTES
        if len(data) != expected:
            what = "truncated" if len(data) < expected else "has trailing bytes"
            raise IndexFormatError(f"{path}: file {what}: {len(data)} bytes, expected "
                                   f"{expected} for {count} codes of {bits} bits")
        body = memoryview(data)[: -_DIGEST_BYTES]
        if hashlib.sha256(body).digest() != data[-_DIGEST_BYTES:]:
            raise IndexFormatError(f"{path}: checksum mismatch: the file is corrupted")
        codes_end = _HEADER.size + count * code_bytes
        packed = np.frombuffer(data, np.uint8, count * code_bytes, _HEADER.size)
        ids = np.frombuffer(data, "<i8", count, codes_end).astype(np.int64)
        index = cls(bits, backend=backend, device=device)
        index.source = path
        try:
            packed = check_packed(packed.reshape(count, code_bytes), bits)
        except ValueError as exc:
            raise IndexFormatError(f"{path}: {exc}") from None
        index._packed, index._ids = packed.copy(), ids
        return index
