"""Near-duplicate photos: a perceptual code made for the purpose, an exact radius join, groups.

Three pieces, each usable alone:

- :func:`perceptual_code` — a ``PERCEPTUAL_BITS``-bit code of an image's *appearance*
  (not its meaning, which the collection's semantic codes capture): the signs, against their
  median, of the 64 lowest-frequency DCT coefficients (DC excluded) of the grey image at
  32×32, averaged over four centred crops (100, 90, 80 and 70 % of each side). A plain pHash
  (one 32×32 DCT of the whole image) moves by 10–20 bits under a 90 % centre crop, because a
  crop rescales every frequency; averaging the coefficients over nested crops makes the code
  change little when the picture is cropped or re-framed a little, while resizing,
  re-compression and brightness changes barely move it at all. ``docs/duplicates.md`` has
  the measurement that chose it against pHash and larger codes.
- :func:`radius_pairs` — every pair of codes within Hamming distance ``r``, exactly. Identical
  codes are collapsed first (exact copies cost nothing). The unique codes are then joined by
  a partition filter that is exact (generalised pigeonhole): the bits are cut into ``m``
  parts, part ``k`` gets a threshold ``t_k`` with ``sum(t_k + 1) = r + 1``, so any pair
  within ``r`` differs by at most ``t_k`` bits on some part. Per part the codes are bucketed
  by the part's bits (≤ 16), each bucket is compared with the later buckets at most ``t_k``
  flips away — a few blocks of candidates, verified on all bits by faiss'
  ``match_hamming_thres`` (popcount, GIL released, on worker threads) — and a pair is kept
  only by the first part that makes it a candidate. A plain pigeonhole (``r + 1`` exact
  substrings of ~5 bits) would not filter at near-duplicate radii; uneven thresholds over
  4–7 parts of 9–16 bits make the candidates about 1/9 to 1/60 of all pairs. The split is
  chosen by a cost model evaluated on the codes' own bucket counts (candidate pairs, rows
  gathered, buckets), and when no split beats it — few codes, large radii — every pair is
  scanned instead. ``docs/duplicates.md`` measures both.
- :func:`duplicate_groups` — connected components of the "within radius" graph, largest
  first, each group's members by id with their distance to the group's first member and
  whether their file is byte-identical to another member's (same ``sha256``).

:func:`find_duplicates` runs the three on a collection (its stored perceptual codes, or its
semantic codes of one length when asked).
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_RADIUS",
    "PERCEPTUAL_BITS",
    "DuplicateMember",
    "duplicate_groups",
    "find_duplicates",
    "hamming_to",
    "perceptual_code",
    "radius_pairs",
]

#: bits of :func:`perceptual_code`
PERCEPTUAL_BITS = 64
#: the radius (on perceptual codes) below which two photos are called duplicates; chosen by
#: measurement on edited copies (``docs/duplicates.md``). Distances between perceptual codes
#: are always even (each code has exactly 32 ones), so 12 and 13 group the same.
DEFAULT_RADIUS = 12

_GRID = 32  # the grey image is resized to _GRID × _GRID before the DCT
_SCALES = (1.0, 0.9, 0.8, 0.7)  # centred crops averaged (fraction of each side)
_LARGEST_SIDE = 512  # larger inputs are first reduced (box filter) to about this size


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (``C @ x`` is the DCT of a length-``n`` signal)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


@functools.cache
def _low_frequencies(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the ``count`` lowest frequencies (by ``u + v``, then ``u``),
    the DC term excluded: the coefficients a small rescale or crop moves least."""
    order = sorted(((u, v) for u in range(n) for v in range(n) if (u, v) != (0, 0)),
                   key=lambda p: (p[0] + p[1], p[0]))[:count]
    rows, cols = zip(*order, strict=True)
    return np.array(rows), np.array(cols)


def perceptual_code(image: Any) -> np.ndarray:
    """The packed ``uint8 [PERCEPTUAL_BITS // 8]`` perceptual code of a PIL image.

    ``image`` should already be EXIF-transposed (the collection decodes it so); any mode is
    accepted (it is converted to grey). Bit order is ``np.packbits``' (as :mod:`hamming`).
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"perceptual_code needs a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"perceptual_code: empty image {image.width}×{image.height}")
    grey = image.convert("L")
    factor = max(grey.width, grey.height) // _LARGEST_SIDE
    if factor >= 2:  # cheap box reduction first: resampling 4,000 px to 32 with Lanczos is slow
        grey = grey.reduce(factor)
    dct = _dct_matrix(_GRID)
    rows, cols = _low_frequencies(_GRID, PERCEPTUAL_BITS)
    total = np.zeros(PERCEPTUAL_BITS)
    w, h = grey.size
    for scale in _SCALES:
        cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        crop = grey.resize((_GRID, _GRID), Image.Resampling.LANCZOS,
                           box=(left, top, left + cw, top + ch))
        pixels = np.asarray(crop, dtype=np.float64)
        total += (dct @ pixels @ dct.T)[rows, cols]
    bits = total > np.median(total)
    return np.packbits(bits)


# ----------------------------------------------------------------------------- the join


def hamming_to(codes: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Hamming distances ``int [n]`` from each packed row of ``codes`` to one packed ``code``."""
    return np.bitwise_count(np.bitwise_xor(codes, code[None, :])).sum(axis=1, dtype=np.int64)


def radius_pairs(codes: np.ndarray, radius: int, block: int = 8192,
                 threads: int | None = None, method: str = "auto"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``codes`` (packed ``uint8 [n, B/8]``, any ``B``) within
    Hamming distance ``radius``, exactly: ``(i, j, distance)`` as ``int64`` arrays, sorted by
    ``(i, j)``.

    ``method``: ``"auto"`` (the partition filter where the cost model expects it to be faster
    than the scan), ``"partition"`` or ``"scan"`` (every pair, rows in blocks of ``block``);
    all three give the same pairs. ``threads``: worker threads (default: the process' thread
    policy, :mod:`contrahash.runtime`)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"radius_pairs: codes must be 2-D packed bytes, got shape {codes.shape}")
    if radius < 0:
        raise ValueError(f"radius must be ≥ 0, got {radius}")
    n, nbytes = codes.shape
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    # identical codes collapse to one row; their pairs come back at distance 0
    unique, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    ui, uj, _ = _unique_pairs(unique, radius, block, threads, method)
    sizes = np.bincount(inverse, minlength=len(unique))
    parts_i, parts_j = [first[ui[(sizes[ui] == 1) & (sizes[uj] == 1)]]], []
    parts_j.append(first[uj[(sizes[ui] == 1) & (sizes[uj] == 1)]])
    if (sizes > 1).any():
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])

        def members(u: int) -> np.ndarray:
            return order[starts[u]:starts[u + 1]]

        for u in np.flatnonzero(sizes > 1):  # pairs inside one class of identical codes
            a, b = np.triu_indices(sizes[u], 1)
            parts_i.append(members(u)[a])
            parts_j.append(members(u)[b])
        for p in np.flatnonzero((sizes[ui] > 1) | (sizes[uj] > 1)):  # every member × every member
            ma, mb = members(ui[p]), members(uj[p])
            parts_i.append(np.repeat(ma, len(mb)))
            parts_j.append(np.tile(mb, len(ma)))
    i = np.concatenate(parts_i).astype(np.int64)
    j = np.concatenate(parts_j).astype(np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    return lo, hi, _distances(codes, lo, hi)


def _distances(codes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), dtype=np.int64)
    step = 1 << 20
    for s in range(0, len(i), step):
        x = np.bitwise_xor(codes[i[s:s + step]], codes[j[s:s + step]])
        out[s:s + step] = np.bitwise_count(x).sum(axis=1, dtype=np.int64)
    return out


def _unique_pairs(codes: np.ndarray, radius: int, block: int = 8192,
                  threads: int | None = None, method: str = "auto"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of distinct rows of ``codes`` within ``radius``, in no particular order:
    by the partition filter when its estimated cost is lower (or ``method="partition"``, if
    any split filters), else by the scan of every pair (``method="scan"``: rows in blocks of
    ``block`` against all later rows). ``threads`` workers (default: the process' thread
    policy) share the work."""
    if method not in ("auto", "scan", "partition"):
        raise ValueError(f"method must be 'auto', 'scan' or 'partition', got {method!r}")
    n, nbytes = codes.shape
    bits = nbytes * 8
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or radius <= 0:  # distinct rows: none at distance 0
        return empty, empty, empty
    # faiss' matcher compares whole 64-bit words: zero-pad each row (the distances are the same)
    padded = np.zeros((n, -(-nbytes // 8) * 8), dtype=np.uint8)
    padded[:, :nbytes] = codes
    threads = _join_threads() if threads is None else max(1, int(threads))
    plan = (_partition_plan(codes, radius, threads, force=method == "partition")
            if radius < bits and method != "scan" else None)
    if plan is None:
        tasks = [functools.partial(_scan_task, padded, radius, s, min(block, n - s))
                 for s in range(0, n, block)]
    else:
        tasks = [task for p in range(len(plan.parts)) for task in _partition_tasks(padded, plan, p)]
    results = _run_tasks(tasks, threads)
    return tuple(np.concatenate([r[k] for r in results] or [empty]) for k in range(3))


def _join_threads() -> int:
    from contrahash.runtime import default_threads, policy_threads

    return policy_threads() or default_threads()


def _run_tasks(tasks: list, threads: int) -> list:
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(tasks)), thread_name_prefix="radius-join") as pool:
        return list(pool.map(lambda task: task(), tasks))


# The filter. Cut the bits into parts P_1..P_m and give part k a threshold t_k (or leave it
# out, t_k = -1) with sum(t_k + 1) = r + 1. Two codes within r differ by d_k bits on part k,
# sum(d_k) <= r, so some part has d_k <= t_k (otherwise sum(d_k) >= sum(t_k + 1) = r + 1).
# The candidates of part k are the pairs whose keys (the part's bits, <= _KEY_BITS of them)
# differ by at most t_k bits: bucket the codes by key and compare each bucket with the buckets
# at most t_k flips away; a candidate is then verified on all bits. A pair is reported by the
# first part that makes it a candidate, so none is reported twice.

_PLAN_WORTH = 5e7  # a scan estimated shorter than this (ns) is not worth planning a filter
_KEY_BITS = 16  # widest part (its buckets are a table of 2**_KEY_BITS counts)
# cost model, in nanoseconds: a verified pair; a gathered candidate row; a bucket (the Python
# work around its faiss call); a (bucket, flip) enumerated
_COST_PAIR, _COST_GATHER, _COST_BUCKET, _COST_FLIP = 0.35, 4.0, 8000.0, 3.0


@dataclass(frozen=True)
class _Plan:
    #: (first bit, end bit, threshold) of each part used, in the order they are tried
    parts: tuple[tuple[int, int, int], ...]
    keys: tuple[np.ndarray, ...]  # each part's key per code (int64)
    radius: int


@functools.cache
def _ball(width: int, t: int) -> np.ndarray:
    """Every ``width``-bit mask of at most ``t`` ones (``int64``), ``0`` first."""
    from itertools import combinations

    masks = [sum(1 << b for b in c) for k in range(t + 1) for c in combinations(range(width), k)]
    return np.array(masks, dtype=np.int64)


def _ball_size(width: int, t: int) -> int:
    from math import comb

    return sum(comb(width, k) for k in range(min(t, width) + 1))


def _part_key(codes: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bits ``lo..hi-1`` (``np.packbits`` order) of each packed row, as an ``int64``."""
    first, last = lo // 8, (hi - 1) // 8
    value = np.zeros(len(codes), dtype=np.int64)
    for byte in range(first, last + 1):
        value = (value << 8) | codes[:, byte]
    return (value >> (8 * (last + 1) - hi)) & ((1 << (hi - lo)) - 1)


def _split(bits: int, m: int, radius: int) -> tuple[tuple[int, int, int], ...]:
    """``m`` parts of near-equal width with the ``radius + 1`` units of threshold spread evenly
    over them (a part given no unit is left out)."""
    widths = [bits // m + (k < bits % m) for k in range(m)]
    units = [(radius + 1) // m + (k < (radius + 1) % m) for k in range(m)]
    edges = np.concatenate([[0], np.cumsum(widths)])
    return tuple((int(edges[k]), int(edges[k + 1]), units[k] - 1) for k in range(m) if units[k])


def _xor_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``c[f] = sum_x a[x] * b[x ^ f]`` for tables of length ``2**w``, by Walsh-Hadamard
    transforms (exact in float64 while the sums stay below 2**53)."""
    def wht(v: np.ndarray) -> np.ndarray:
        v, size, h = v.astype(np.float64), len(v), 1
        while h < size:
            v = v.reshape(-1, 2, h)
            v = np.concatenate([v[:, :1] + v[:, 1:], v[:, :1] - v[:, 1:]], axis=1)
            h *= 2
        return v.reshape(-1)

    return wht(wht(a) * wht(b)) / len(a)


def _part_cost(width: int, t: int, sizes: np.ndarray, threads: int) -> float:
    """Estimated wall time (ns) of one part whose buckets hold ``sizes`` codes: the candidate
    pairs, the rows gathered and the flips enumerated are shared by the threads; the Python
    work per bucket holds the GIL."""
    n, ball = int(sizes.sum()), _ball(width, t)
    pairs = (_xor_correlation(sizes, sizes)[ball].sum() - n) / 2
    gathered = _xor_correlation((sizes > 0).astype(np.float64), sizes)[ball].sum() / 2
    nonempty = np.count_nonzero(sizes)
    shared = _COST_PAIR * pairs + _COST_GATHER * gathered + _COST_FLIP * nonempty * len(ball)
    return shared / threads + _COST_BUCKET * nonempty


def _partition_plan(codes: np.ndarray, radius: int, threads: int = 1, force: bool = False
                    ) -> _Plan | None:
    """The split of least estimated cost on these codes, if it beats scanning every pair
    (``force``: any split that filters at all)."""
    n, bits = len(codes), codes.shape[1] * 8
    best, best_cost = None, np.inf if force else _COST_PAIR * n * (n - 1) / 2 / threads
    if best_cost < _PLAN_WORTH:
        return None
    fewest = -(-bits // _KEY_BITS)
    keys: dict[tuple[int, int], np.ndarray] = {}
    for m in range(fewest, min(bits, radius + 1, 2 * fewest + 2) + 1):
        parts = _split(bits, m, radius)
        if sum(_ball_size(hi - lo, t) / 2 ** (hi - lo) for lo, hi, t in parts) >= 0.5:
            continue  # no filter: at least half of all pairs would be candidates
        cost = 0.0
        for lo, hi, t in parts:
            if (lo, hi) not in keys:
                keys[lo, hi] = _part_key(codes, lo, hi)
            sizes = np.bincount(keys[lo, hi], minlength=1 << (hi - lo))
            cost += _part_cost(hi - lo, t, sizes, threads)
        if cost < best_cost:
            best, best_cost = parts, cost
    if best is None:
        return None
    return _Plan(best, tuple(keys[lo, hi] for lo, hi, _ in best), radius)


_buffers = threading.local()


class _Matches:
    """Runs faiss' ``match_hamming_thres`` (every pair of two blocks within the radius, GIL
    released) on blocks of any size, through one reusable buffer per thread."""

    CAPACITY = 1 << 20  # pairs a buffer holds (faiss writes up to rows × rows of them)
    TILE = 8192  # most rows of ``d`` per call (a tile of 64 KiB of 64-bit codes stays in cache)

    def __init__(self, radius: int, nbytes: int) -> None:
        if getattr(_buffers, "pairs", None) is None:
            _buffers.pairs = np.empty(2 * self.CAPACITY, dtype=np.int64)
            _buffers.dist = np.empty(self.CAPACITY, dtype=np.int32)
        self.pairs, self.dist = _buffers.pairs, _buffers.dist
        self.radius, self.nbytes = radius, nbytes
        self.fill, self.calls, self.out = 0, [], []

    def match(self, q: np.ndarray, qbase: int, d: np.ndarray, dbase: int) -> None:
        """Queue the pairs (``qbase`` + row of ``q``, ``dbase`` + row of ``d``) within the radius."""
        import faiss

        cap = self.CAPACITY
        dstep = max(1, min(len(d), self.TILE))
        qstep = max(1, cap // dstep)
        for d0 in range(0, len(d), dstep):
            dd = d[d0:d0 + dstep]
            for q0 in range(0, len(q), qstep):
                qq = q[q0:q0 + qstep]
                if self.fill + len(qq) * len(dd) > cap:
                    self.flush()
                f = self.fill
                found = faiss.match_hamming_thres(
                    faiss.swig_ptr(qq), faiss.swig_ptr(dd), len(qq), len(dd), self.radius,
                    self.nbytes, faiss.swig_ptr(self.pairs[2 * f:]), faiss.swig_ptr(self.dist[f:]))
                if found:
                    self.calls.append((found, qbase + q0, dbase + d0))
                    self.fill += found

    def flush(self) -> None:
        if self.fill:
            counts, qb, db = (np.array(c, dtype=np.int64) for c in zip(*self.calls, strict=True))
            ij = self.pairs[:2 * self.fill].reshape(-1, 2)
            self.out.append((np.repeat(qb, counts) + ij[:, 0], np.repeat(db, counts) + ij[:, 1],
                             self.dist[:self.fill].astype(np.int64)))
        self.fill, self.calls = 0, []

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.flush()
        if not self.out:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return tuple(np.concatenate([o[k] for o in self.out]) for k in range(3))


def _scan_task(padded: np.ndarray, radius: int, start: int, rows: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``start .. start + rows - 1`` against themselves and every later row."""
    matches = _Matches(radius, padded.shape[1])
    matches.match(padded[start:start + rows], start, padded[start:], start)
    i, j, d = matches.result()
    keep = j > i
    return i[keep], j[keep], d[keep]


def _partition_tasks(padded: np.ndarray, plan: _Plan, p: int) -> list:
    """The work of part ``p``: slabs of its non-empty buckets."""
    lo, hi, t = plan.parts[p]
    key = plan.keys[p]
    order = np.argsort(key, kind="stable")
    sizes = np.bincount(key, minlength=1 << (hi - lo))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonempty = np.flatnonzero(sizes)
    ball = _ball(hi - lo, t)
    # slabs of about _SLAB gathered rows (uniform estimate), at least one bucket each
    per_bucket = max(1.0, len(ball) / 2 * len(key) / len(nonempty))
    slab = max(1, int(_SLAB / per_bucket))
    state = (padded[order], order, starts, sizes, ball, plan, p)
    return [functools.partial(_partition_task, state, nonempty[s:s + slab])
            for s in range(0, len(nonempty), slab)]


_SLAB = 1 << 19


def _partition_task(state: tuple, buckets: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bucket of ``buckets`` against itself and the later buckets within its threshold."""
    ordered, order, starts, sizes, ball, plan, p = state
    near = buckets[:, None] ^ ball[None, :]  # the bucket itself first
    lengths = np.where(near >= buckets[:, None], sizes[near], 0)
    flat = lengths.reshape(-1)
    used = flat > 0
    run_len, run_start = flat[used], starts[near.reshape(-1)[used]]
    total = int(run_len.sum())
    # the sorted positions of every bucket's candidates, bucket after bucket
    shift = np.repeat(run_start - (np.cumsum(run_len) - run_len), run_len)
    candidates = shift + np.arange(total, dtype=np.int64)
    gathered = ordered[candidates]
    ends = np.cumsum(lengths.sum(axis=1))
    matches = _Matches(plan.radius, ordered.shape[1])
    begin = 0
    for b, end in zip(buckets.tolist(), ends.tolist(), strict=True):
        s = int(starts[b])
        matches.match(ordered[s:s + int(sizes[b])], s, gathered[begin:end], begin)
        begin = end
    qpos, local, d = matches.result()
    dpos = candidates[local]
    keep = dpos > qpos
    a, b, d = order[qpos[keep]], order[dpos[keep]], d[keep]
    for q in range(p):  # reported by an earlier part: drop
        (_, _, tq), kq = plan.parts[q], plan.keys[q]
        first = np.bitwise_count(kq[a] ^ kq[b]) > tq
        a, b, d = a[first], b[first], d[first]
    return np.minimum(a, b), np.maximum(a, b), d


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class DuplicateMember:
    """One item of a duplicate group: its id, its Hamming distance to the group's first item,
    and whether its file is byte-identical to another member's (``exact``)."""

    id: int
    distance: int
    exact: bool = False


def duplicate_groups(ids: np.ndarray, codes: np.ndarray, radius: int,
                     sha256: list[str | None] | None = None, method: str = "auto"
                     ) -> list[list[DuplicateMember]]:
    """Connected components (size ≥ 2) of "within ``radius``" over ``codes`` (packed rows,
    one per id), largest first (then by first id); members in id order, the first being the
    group's reference for ``distance``. ``sha256`` (one per id, or ``None``) marks exact
    copies; ``method`` is :func:`radius_pairs`' (the groups do not depend on it)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.uint8)
    if len(ids) != len(codes):
        raise ValueError(f"{len(ids)} ids but {len(codes)} codes")
    order = np.argsort(ids, kind="stable")
    ids, codes = ids[order], codes[order]
    hashes = None if sha256 is None else [sha256[k] for k in order]
    i, j, _ = radius_pairs(codes, radius, method=method)
    n = len(ids)
    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    in_groups = np.flatnonzero(sizes[labels] >= 2)  # positions, ascending (= id order)
    by_label: dict[int, list[int]] = {}
    for pos in in_groups:
        by_label.setdefault(int(labels[pos]), []).append(int(pos))
    groups = []
    for positions in by_label.values():
        pos = np.array(positions)
        dist = hamming_to(codes[pos], codes[pos[0]])
        counts: dict[str, int] = {}
        if hashes is not None:
            for p in positions:
                if hashes[p]:
                    counts[hashes[p]] = counts.get(hashes[p], 0) + 1
        groups.append([
            DuplicateMember(int(ids[p]), int(d),
                            bool(hashes is not None and hashes[p] and counts[hashes[p]] > 1))
            for p, d in zip(positions, dist, strict=True)])
    groups.sort(key=lambda g: (-len(g), g[0].id))
    return groups


def find_duplicates(collection: Any, radius: int = DEFAULT_RADIUS, bits: int | None = None
                    ) -> tuple[int, list[list[DuplicateMember]]]:
    """Duplicate groups of a collection's live items: ``(bits, groups)``.

    ``bits=None`` (or ``PERCEPTUAL_BITS`` when the collection has no semantic code of that
    length) uses the perceptual codes stored with the collection; another length uses the
    semantic codes of that length (similar photos, not duplicates). Exact copies are marked
    from the items' ``sha256``.
    """
    if radius < 0:
        raise ValueError(f"--radius must be ≥ 0, got {radius}")
    if bits is None or (bits == PERCEPTUAL_BITS and bits not in collection.bits):
        ids, codes = collection.perceptual_codes()
        bits = PERCEPTUAL_BITS
        if len(ids) and np.asarray(codes).shape[1] != PERCEPTUAL_BITS // 8:
            raise ValueError("this collection holds no perceptual codes (built before "
                             "near-duplicate search existed): `contrahash index sync DIR` "
                             "or a rebuild adds them")
    else:
        if bits not in collection.bits:
            raise ValueError(f"--bits {bits}: the collection has codes of "
                             f"{', '.join(map(str, collection.bits))} bits")
        ids = np.asarray(collection.live_ids(), dtype=np.int64)
        codes = np.asarray(collection.codes_of(ids.tolist(), bits))
        if codes.dtype != np.uint8 or codes.shape[1] != bits // 8:  # ±1 codes: pack them
            codes = np.packbits(np.asarray(codes) > 0, axis=1)
    if radius > bits:
        raise ValueError(f"--radius {radius} is larger than the code length ({bits} bits)")
    ids = np.asarray(ids, dtype=np.int64)
    hashes = [collection.item(int(i)).sha256 for i in ids] if len(ids) else []
    return bits, duplicate_groups(ids, np.asarray(codes, dtype=np.uint8), radius, hashes)
