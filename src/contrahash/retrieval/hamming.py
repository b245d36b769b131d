"""Exact Hamming-distance kernels on packed binary codes, shared by the index and the metrics.

Bit layout: :func:`pack_codes` stores bit ``j`` of a code in byte ``j // 8`` at mask
``0x80 >> (j % 8)`` (``np.packbits``' default big-endian order within a byte). Bits past ``k``
in the last byte are zero, so Hamming distances between packed rows equal those between the
original codes. A code bit is 1 for a ``+1`` (±1 codes), a ``1`` ({0,1} codes) or ``True``.

Ranking: every kernel here ranks a database by ``(Hamming distance, position)`` — ties are
broken by position (a stable order). :mod:`contrahash.retrieval.index` and :mod:`contrahash.evaluation.metrics`
both rank this way, so a search and an evaluation always agree on which items come first
(``docs/metrics.md``).

CPU kernels: distances by faiss' popcount kernel when faiss imports (numpy's
``bitwise_count`` on uint64 words otherwise), top-k by a threshold + candidate sort that never
sorts whole rows (:func:`hamming_topk`). Torch kernels (CUDA or CPU): ±1 matmul distances and a
unique ``distance * n + position`` key (:func:`torch_topk`).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from contrahash.config import MAX_BITS

__all__ = [
    "MAX_BITS",
    "PackedDatabase",
    "check_bits",
    "check_packed",
    "code_bits",
    "faiss_module",
    "faiss_orders_ties_by_position",
    "hamming_distance_rows",
    "hamming_topk",
    "is_tensor",
    "kernel_threads",
    "pack_codes",
    "packed_words",
    "require_torch",
    "rows_sorted",
    "to_numpy",
    "torch_distances",
    "torch_signed",
    "torch_topk",
    "unpack_codes",
]

# --------------------------------------------------------------------------------------
# Code conversion
# --------------------------------------------------------------------------------------


def is_tensor(array: Any) -> bool:
    """True for a torch tensor (without importing torch: a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(array, torch.Tensor)


def to_numpy(array: Any) -> np.ndarray:
    if is_tensor(array):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def code_bits(codes: Any, name: str = "codes") -> np.ndarray:
    """Codes as a bool array ``[n, k]`` (True = bit 1), checking the value set.

    Accepts ±1, {0,1} or bool values in any numeric dtype, as numpy arrays or torch tensors.
    """
    a = to_numpy(codes)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, bits]; got shape {a.shape}")
    if a.shape[1] < 1:
        raise ValueError(f"{name} must have at least one bit per code; got shape {a.shape}")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric or bool; got dtype {a.dtype}")
    is_one = a == 1
    if a.size == 0 or bool(np.all(is_one | (a == -1))) or bool(np.all(is_one | (a == 0))):
        return is_one
    sample = np.unique(a)[:6]  # error path only: the cost of a sort does not matter
    raise ValueError(
        f"{name} must hold ±1, {{0,1}} or bool values (one convention per array); "
        f"found values such as {sample.tolist()}. Binarise first, e.g. with "
        "contrahash.models.codes.sign()."
    )


def pack_codes(codes: Any) -> np.ndarray:
    """Pack ±1 / {0,1} / bool codes ``[n, k]`` into ``uint8 [n, ceil(k/8)]`` (big-endian bits).

    >>> pack_codes(np.array([[1, -1, -1, 1, 1, 1, -1, -1, 1]]))
    array([[156, 128]], dtype=uint8)
    """
    return np.packbits(code_bits(codes), axis=1)


def unpack_codes(packed: Any, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``int8`` ±1 codes ``[n, bits]``.

    >>> unpack_codes(np.array([[156, 128]], dtype=np.uint8), 9)
    array([[ 1, -1, -1,  1,  1,  1, -1, -1,  1]], dtype=int8)
    """
    p = check_packed(packed, bits)
    return np.where(np.unpackbits(p, axis=1, count=bits).astype(bool), 1, -1).astype(np.int8)


def check_packed(packed: Any, bits: int, name: str = "packed codes") -> np.ndarray:
    """Validate a packed ``uint8 [n, ceil(bits/8)]`` array (zero padding bits included)."""
    bits = check_bits(bits)
    p = to_numpy(packed)
    nbytes = (bits + 7) // 8
    if p.dtype != np.uint8 or p.ndim != 2 or p.shape[1] != nbytes:
        raise ValueError(
            f"{name} must be uint8 [n, {nbytes}] for {bits}-bit codes; "
            f"got {p.dtype} {tuple(p.shape)}"
        )
    spare = 8 * nbytes - bits
    if spare and p.shape[0] and np.any(p[:, -1] & np.uint8((1 << spare) - 1)):
        raise ValueError(
            f"{name}: the {spare} padding bit(s) after bit {bits} must be zero "
            "(pack with contrahash.retrieval.index.pack_codes, or check --bits)"
        )
    return np.ascontiguousarray(p)


def check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise ValueError(f"bits must be an integer; got {bits!r}")
    bits = int(bits)
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}; got {bits}")
    return bits


def packed_words(packed: np.ndarray) -> np.ndarray:
    """Packed bytes ``[n, B]`` as native ``uint64`` words ``[W, n]`` (zero-padded, transposed).

    Word-major layout keeps each word's column contiguous for the XOR/popcount kernels.
    """
    n, nbytes = packed.shape
    n_words = max(1, (nbytes + 7) // 8)
    buf = np.zeros((n, n_words * 8), dtype=np.uint8)
    buf[:, :nbytes] = packed
    return np.ascontiguousarray(buf.view(np.uint64).T)


# --------------------------------------------------------------------------------------
# Exact Hamming kernels (numpy): distances and stable top-k
# --------------------------------------------------------------------------------------


def _dist_dtype(bits: int) -> type:
    return np.uint8 if bits <= 255 else np.uint16


def kernel_threads() -> int:
    """Threads the CPU kernels split query blocks over (the CPUs this process may use, <= 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class PackedDatabase:
    """Packed codes prepared for the distance kernels (built once per database).

    ``rows``: bytes zero-padded to whole 64-bit words, ``[n, 8W]`` (faiss' layout);
    ``words``: the same bits as native uint64, word-major ``[W, n]`` (numpy's layout).
    """

    def __init__(self, packed: np.ndarray, bits: int) -> None:
        self.bits = bits
        self.n = packed.shape[0]
        n_words = max(1, (packed.shape[1] + 7) // 8)
        rows = np.zeros((self.n, n_words * 8), dtype=np.uint8)
        rows[:, : packed.shape[1]] = packed
        self.rows = rows
        self.words = np.ascontiguousarray(rows.view(np.uint64).T)

    def query_rows(self, packed_queries: np.ndarray) -> np.ndarray:
        """Queries padded like :attr:`rows`."""
        out = np.zeros((packed_queries.shape[0], self.rows.shape[1]), dtype=np.uint8)
        out[:, : packed_queries.shape[1]] = packed_queries
        return out


def _faiss_hammings_ok() -> bool:
    return faiss_module() is not None and hasattr(faiss_module(), "hammings")


class _DistanceBuffer:
    """Reusable per-thread buffers: distances of up to ``rows`` queries to the whole database.

    With faiss, its C popcount kernel fills an int32 matrix; otherwise numpy XORs native
    uint64 words and popcounts them (``np.bitwise_count``) into uint8/uint16.
    """

    def __init__(self, db: PackedDatabase, rows: int, use_faiss: bool) -> None:
        self.db = db
        self.n = db.n
        self.rows = rows
        self.use_faiss = use_faiss
        self.dist = np.empty((rows, self.n), dtype=_dist_dtype(db.bits))
        if use_faiss:
            self.raw = np.empty((rows, self.n), dtype=np.int32)
        else:
            self.sub = max(1, min(rows, (1 << 16) // max(1, self.n)))  # XOR scratch in cache
            self.xor = np.empty((self.sub, self.n), dtype=np.uint64)
            self.count = np.empty((self.sub, self.n), dtype=np.uint8)

    def compute(self, q_rows: np.ndarray) -> np.ndarray:
        """Distances ``[c, n]`` for padded query rows ``[c, 8W]`` (c <= rows): a buffer view."""
        c = q_rows.shape[0]
        if self.use_faiss:
            faiss = faiss_module()
            q_rows = np.ascontiguousarray(q_rows)
            faiss.hammings(faiss.swig_ptr(q_rows), faiss.swig_ptr(self.db.rows), c, self.n,
                           self.db.rows.shape[1], faiss.swig_ptr(self.raw))
            # narrow to uint8/uint16: halves the work of every later pass over the matrix
            np.copyto(self.dist[:c], self.raw[:c], casting="unsafe")
            return self.dist[:c]
        q_words = q_rows.view(np.uint64)
        for a in range(0, c, self.sub):
            b = min(c, a + self.sub)
            x = self.xor[: b - a]
            out = self.dist[a:b]
            for w in range(self.db.words.shape[0]):
                np.bitwise_xor(q_words[a:b, w, None], self.db.words[w][None, :], out=x)
                if w == 0:
                    np.bitwise_count(x, out=out, casting="unsafe")
                else:
                    cnt = self.count[: b - a]
                    np.bitwise_count(x, out=cnt)
                    np.add(out, cnt, out=out, casting="unsafe")
        return self.dist[:c]


def _sample_thresholds(dist: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Per-row estimate of the k-th smallest distance, from a column sample's histogram."""
    c, n = dist.shape
    step = max(1, n // 512)
    sample = dist[:, ::step]
    offsets = (np.arange(c, dtype=np.intp) * (bits + 1))[:, None]
    hist = np.bincount((sample + offsets).ravel(), minlength=c * (bits + 1)).reshape(c, bits + 1)
    estimate = np.cumsum(hist, axis=1) * (n / sample.shape[1])
    return np.argmax(estimate >= k - 1e-9, axis=1).astype(np.int64)


def _select_topk(dist: np.ndarray, bits: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-k of each row of ``dist`` by (distance, column), without a full sort.

    A per-row threshold ``t`` with at least ``k`` items at distance <= t selects candidates
    (as a packed bit mask, so extraction touches few bytes); sorting the candidates' combined
    key (row, distance, column) yields each row's first k in exact stable order. Thresholds
    start at the sample estimate of the k-th distance and rise, row by row, until the ball
    holds k items.
    """
    c, n = dist.shape
    thresholds = _sample_thresholds(dist, bits, k)
    mask = np.empty(dist.shape, dtype=bool)
    bytes_per_row = -(-n // 8)
    row_stride = -(-bytes_per_row // 8) * 8  # whole uint64 words per row, for the counts
    packed = np.zeros((c, row_stride), dtype=np.uint8)
    np.less_equal(dist, thresholds.astype(dist.dtype)[:, None], out=mask)
    packed[:, :bytes_per_row] = np.packbits(mask, axis=1)  # bits past n are zero
    counts = np.bitwise_count(packed.view(np.uint64)).sum(axis=1, dtype=np.int64)
    short = np.flatnonzero(counts < k)
    step = 1
    while len(short):
        thresholds[short] = np.minimum(thresholds[short] + step, bits)
        sub = dist[short] <= thresholds[short].astype(dist.dtype)[:, None]
        packed[short, :bytes_per_row] = np.packbits(sub, axis=1)
        counts[short] = np.bitwise_count(packed[short].view(np.uint64)).sum(axis=1,
                                                                          dtype=np.int64)
        short = short[counts[short] < k]
        step *= 2
    flat = packed.reshape(-1)
    nz_bytes = np.flatnonzero(flat != 0)
    hits = np.flatnonzero(np.unpackbits(flat[nz_bytes]).view(bool))
    byte_row = nz_bytes // row_stride
    byte_col = (nz_bytes - byte_row * row_stride) * 8
    col_bits = max(1, int(n - 1).bit_length())
    dist_bits = max(1, int(bits).bit_length())
    row_bits = max(1, int(c - 1).bit_length())
    # per non-zero byte: its flat position in `dist` and its key prefix (row, column)
    byte_pos = byte_row * n + byte_col
    byte_key = (byte_row << (dist_bits + col_bits)) | byte_col
    which, bit = hits >> 3, hits & 7
    dv = dist.reshape(-1)[byte_pos[which] + bit].astype(np.int64)
    key = byte_key[which] + bit + (dv << col_bits)
    if row_bits + dist_bits + col_bits <= 32:
        key = key.astype(np.uint32)  # a narrower key sorts about twice as fast
    key.sort()
    starts = np.zeros(c, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    chosen = key[starts[:, None] + np.arange(k)].astype(np.int64)
    positions = chosen & ((1 << col_bits) - 1)
    distances = (chosen >> col_bits) & ((1 << dist_bits) - 1)
    return distances, positions


def _sort_topk(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-k by a full stable sort of each row (radix sort for 8/16-bit distances)."""
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1).astype(np.int64), order.astype(np.int64)


def _topk_rows(q_rows: np.ndarray, db: PackedDatabase, k: int, method: str, rows: int,
               use_faiss: bool, worker: bool, offset: int, on_chunk: Any) -> None:
    if worker and use_faiss:
        faiss_module().omp_set_num_threads(1)  # this thread only: the pool provides the parallelism
    nq = q_rows.shape[0]
    if nq == 0:
        return
    buf = _DistanceBuffer(db, max(1, min(rows, nq)), use_faiss)
    use_sort = method == "sort" or (method == "auto" and 16 * k >= db.n)
    for s in range(0, nq, buf.rows):
        e = min(nq, s + buf.rows)
        dist = buf.compute(q_rows[s:e])
        found = _sort_topk(dist, k) if use_sort else _select_topk(dist, db.bits, k)
        on_chunk(slice(offset + s, offset + e), *found)


def hamming_topk(
    q_packed: np.ndarray,
    db: PackedDatabase,
    k: int,
    *,
    threads: int | None = None,
    method: str = "auto",
    use_faiss: bool | None = None,
    on_chunk: Any = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact stable top-k by (Hamming distance, database position) on CPU.

    ``q_packed``: packed queries ``uint8 [q, B]``; ``db``: a :class:`PackedDatabase`;
    ``1 <= k <= n``. Returns ``(distances int64 [q, k], positions int64 [q, k])``, or, when
    ``on_chunk`` is given, calls ``on_chunk(rows: slice, distances, positions)`` for each block
    of queries instead (from the worker threads; nothing of size q x k is kept).
    ``method``: ``"select"`` (threshold + candidate sort), ``"sort"`` (full stable sort of each
    row) or ``"auto"`` (select unless k is a large fraction of n). ``use_faiss``: compute the
    distances with faiss' popcount kernel (default: when faiss imports). Query blocks run on
    ``threads`` threads (numpy and faiss release the GIL in these kernels).
    """
    nq = q_packed.shape[0]
    if not 1 <= k <= db.n:
        raise ValueError(f"k must be in 1..{db.n}; got {k}")
    if use_faiss is None:
        use_faiss = _faiss_hammings_ok()
    result = None
    if on_chunk is None:
        result = (np.empty((nq, k), dtype=np.int64), np.empty((nq, k), dtype=np.int64))

        def on_chunk(rows: slice, distances: np.ndarray, positions: np.ndarray) -> None:
            result[0][rows], result[1][rows] = distances, positions

    q_rows = db.query_rows(q_packed)
    rows = max(1, min(64, (1 << 21) // max(1, db.n)))
    threads = kernel_threads() if threads is None else max(1, threads)
    n_blocks = min(threads, -(-nq // rows))
    if n_blocks <= 1:
        _topk_rows(q_rows, db, k, method, rows, use_faiss, False, 0, on_chunk)
        return result
    bounds = np.linspace(0, nq, n_blocks + 1).astype(int)
    with ThreadPoolExecutor(n_blocks) as pool:
        list(pool.map(
            lambda i: _topk_rows(q_rows[bounds[i]:bounds[i + 1]], db, k, method, rows,
                                 use_faiss, True, int(bounds[i]), on_chunk),
            range(n_blocks),
        ))
    return result


def hamming_distance_rows(
    q_packed: np.ndarray, db: PackedDatabase, rows: int | None = None,
    use_faiss: bool | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, distances [c, n])`` blocks of the full query × database distance matrix."""
    nq = q_packed.shape[0]
    if use_faiss is None:
        use_faiss = _faiss_hammings_ok()
    rows = rows or max(1, min(256, (1 << 22) // max(1, db.n)))
    buf = _DistanceBuffer(db, max(1, min(rows, nq)), use_faiss)
    q_rows = db.query_rows(q_packed)
    for s in range(0, nq, buf.rows):
        e = min(nq, s + buf.rows)
        yield s, buf.compute(q_rows[s:e])


# --------------------------------------------------------------------------------------
# Torch kernels (CUDA or CPU): same ranking via a unique integer key
# --------------------------------------------------------------------------------------


def require_torch() -> Any:
    try:
        import torch  # noqa: PLC0415 - imported on demand: numpy/faiss paths never need it
    except ImportError:  # pragma: no cover
        raise ImportError("the torch backend needs PyTorch installed") from None
    return torch


def torch_signed(bits_bool: np.ndarray | Any, device: Any) -> Any:
    """±1 matrix on ``device`` for matmul distances (fp16 on CUDA, fp32 elsewhere; exact)."""
    t = require_torch()
    dev = t.device(device)
    dtype = t.float16 if dev.type == "cuda" and bits_bool.shape[1] <= 2048 else t.float32
    if isinstance(bits_bool, t.Tensor):
        b = bits_bool.to(dev)
    else:
        b = t.from_numpy(np.ascontiguousarray(bits_bool)).to(dev)
    return b.to(dtype) * 2 - 1


def torch_distances(q_signed: Any, db_signed: Any, dtype: Any = None) -> Any:
    """Exact integer Hamming distances ``[q, n]`` from ±1 matrices: (k − q·b) / 2.

    The dot products are integers held exactly (fp16 up to 2048 bits, fp32 beyond), so the
    conversion is exact. ``dtype``: int64 by default.
    """
    t = require_torch()
    bits = q_signed.shape[1]
    dot = (q_signed @ db_signed.T).to(t.int32)
    return ((bits - dot) >> 1).to(dtype or t.int64)


def torch_topk(
    q_signed: Any, db_signed: Any, k: int, *, max_elements: int | None = None
) -> tuple[Any, Any]:
    """Stable top-k on torch: rank by the unique key ``distance * n + position``.

    Returns ``(distances int64 [q, k], positions int64 [q, k])`` on the tensors' device. The key
    is int32 when it fits (half the memory traffic of int64 on the GPU).
    """
    t = require_torch()
    nq, n = q_signed.shape[0], db_signed.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}; got {k}")
    key_dtype = t.int32 if (q_signed.shape[1] + 1) * n < 2**31 else t.int64
    budget = max_elements or (1 << 26 if q_signed.device.type == "cuda" else 1 << 23)
    rows = max(1, budget // n)
    arange = t.arange(n, device=q_signed.device, dtype=key_dtype)
    out_d, out_p = [], []
    for s in range(0, nq, rows):
        key = torch_distances(q_signed[s : s + rows], db_signed, key_dtype) * n + arange
        if k == n:
            vals = t.sort(key, dim=1).values
        else:
            vals = t.topk(key, k, dim=1, largest=False, sorted=True).values
        out_d.append((vals // n).to(t.int64))
        out_p.append((vals % n).to(t.int64))
    if not out_d:
        empty = t.empty((0, k), dtype=t.int64, device=q_signed.device)
        return empty, empty.clone()
    return t.cat(out_d), t.cat(out_p)


# --------------------------------------------------------------------------------------
# faiss (optional)
# --------------------------------------------------------------------------------------


@functools.cache
def faiss_module() -> Any | None:
    try:
        import faiss  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError:
        return None
    return faiss


@functools.cache
def faiss_orders_ties_by_position() -> bool:
    """True when faiss' exact binary k-NN returns the smallest (distance, position) pairs.

    Checked once per process on tie-heavy data (4..16-bit codes, k below and above the tie
    groups, single and batched queries) against the numpy kernel.
    """
    faiss = faiss_module()
    if faiss is None:
        return False
    rng = np.random.default_rng(12345)
    for bits, n, nq, k in ((8, 3000, 1, 700), (16, 5000, 7, 1000), (8, 500, 40, 37),
                           (16, 4000, 3, 1)):
        packed = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
        packed &= rng.integers(0, 256, (1, bits // 8), dtype=np.uint8)  # fewer distinct codes
        queries = packed[rng.integers(0, n, nq)]
        index = faiss.IndexBinaryFlat(bits)
        index.add(packed)
        d_f, i_f = index.search(queries, k)
        d_n, i_n = hamming_topk(queries, PackedDatabase(packed, bits), k, threads=1,
                                use_faiss=False)
        if not (np.array_equal(i_f, i_n) and np.array_equal(d_f, d_n)):
            return False
    return True


def rows_sorted(distances: np.ndarray, positions: np.ndarray) -> bool:
    if distances.shape[1] < 2:
        return True
    d0, d1 = distances[:, :-1], distances[:, 1:]
    ok = (d1 > d0) | ((d1 == d0) & ((positions[:, 1:] > positions[:, :-1]) | (positions[:, 1:] < 0)))
    return bool(ok.all())
