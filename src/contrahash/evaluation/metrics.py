"""Retrieval metrics for binary codes: mAP@K, P@N, precision within a Hamming radius, PR curve.

Conventions (``docs/methods.md``, "Evaluation conventions"):

* Codes are ``[n, k]`` arrays of ±1, {0,1} or bool (numpy or torch).
* Labels are integer class ids >= 0 ``[n]`` or 0/1 multi-hot ``[n, C]`` (any int/bool
  dtype, or floats holding such values; a 2-D array is always read as multi-hot), one row per
  code; anything else (a negative id, a 2 in a multi-hot row, a length that does not match
  the codes) is a ``ValueError`` naming the array. A database item is relevant to a query
  when they share at least one label.
* The database is ranked by Hamming distance; **ties are broken by database order** (a stable
  sort), on every backend. Field code breaks ties arbitrarily, which moves mAP by points at
  short code lengths; :func:`mean_average_precision` can also report the best and worst
  mAP any tie order could give.
* mAP@K: AP = (1/R_K) Σ_r rel_r · P@r over the top K, with R_K the relevant items inside the
  top K; a query with R_K = 0 scores 0 and still counts in the mean. ``topk=None`` means
  K = database size (mAP@ALL).

Backends: numpy (packed XOR + popcount, threaded over query blocks) by default; torch when
``device`` is given or the codes are CUDA tensors. Both produce the same relevance matrices
and reduce them with the same float64 numpy code, so their results are identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from contrahash.retrieval.hamming import (
    PackedDatabase,
    code_bits,
    hamming_distance_rows,
    hamming_topk,
    is_tensor,
    packed_words,
    require_torch,
    to_numpy,
    torch_distances,
    torch_signed,
    torch_topk,
)

__all__ = [
    "MapResult",
    "bit_statistics",
    "hamming_distances",
    "mean_average_precision",
    "pr_curve",
    "pr_curve_points",
    "precision_at_n",
    "precision_at_n_curve",
    "precision_within_radius",
    "retrieval_report",
]


class MapResult(NamedTuple):
    """mAP with its tie bounds: ``best``/``worst`` are the largest/smallest mAP@K reachable by
    reordering items that share a Hamming distance (``worst <= map <= best``)."""

    map: float
    best: float
    worst: float


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def _torch_device(device: Any, *arrays: Any) -> Any:
    """The torch device to compute on, or None for the numpy backend."""
    if device is not None:
        return require_torch().device(device)
    for a in arrays:
        if is_tensor(a) and a.is_cuda:
            return a.device
    return None


def _codes_pair(query_codes: Any, db_codes: Any) -> tuple[np.ndarray, np.ndarray]:
    q = code_bits(query_codes, "query_codes")
    db = code_bits(db_codes, "db_codes")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"query_codes have {q.shape[1]} bits but db_codes have {db.shape[1]}; "
            "both must come from the same code length"
        )
    if db.shape[0] == 0:
        raise ValueError("db_codes is empty: nothing to rank")
    return q, db


class _Labels:
    """Query/database labels reduced to what relevance needs.

    ``single``: int64 class ids; ``multi``: multi-hot rows packed into uint64 words (a query
    and an item share a label iff some word has a common bit).
    """

    def __init__(self, query_labels: Any, db_labels: Any, n_query: int, n_db: int) -> None:
        ql, dl = to_numpy(query_labels), to_numpy(db_labels)
        for name, a, n, codes in (("query_labels", ql, n_query, "query_codes"),
                                  ("db_labels", dl, n_db, "db_codes")):
            _check_labels(name, a, n, codes)
        if ql.ndim != dl.ndim:
            raise ValueError(
                f"query_labels are {'class ids' if ql.ndim == 1 else 'multi-hot'} but db_labels "
                f"are {'class ids' if dl.ndim == 1 else 'multi-hot'}; use one kind for both"
            )
        if ql.ndim == 1:
            self.kind = "single"
            self.q = ql.astype(np.int64)
            self.db = dl.astype(np.int64)
        else:
            if ql.shape[1] != dl.shape[1]:
                raise ValueError(
                    f"query_labels have {ql.shape[1]} classes but db_labels have {dl.shape[1]}"
                )
            self.kind = "multi"
            self.q = _pack_rows(ql.astype(bool))
            self.db = _pack_rows(dl.astype(bool))

    # numpy --------------------------------------------------------------------------------
    def topk(self, rows: slice, positions: np.ndarray) -> np.ndarray:
        """bool [c, K]: relevance of the ranked database positions of queries ``rows``."""
        if self.kind == "single":
            return self.db[positions] == self.q[rows][:, None]
        return np.any(self.db[positions] & self.q[rows][:, None, :], axis=-1)

    def full(self, rows: slice) -> np.ndarray:
        """bool [c, n_db]: relevance of every database item to queries ``rows``."""
        if self.kind == "single":
            return self.db[None, :] == self.q[rows][:, None]
        out = np.zeros((len(self.q[rows]), len(self.db)), dtype=bool)
        for w in range(self.q.shape[1]):
            out |= (self.q[rows][:, w, None] & self.db[None, :, w]) != 0
        return out

    # torch --------------------------------------------------------------------------------
    def to_torch(self, device: Any) -> tuple[Any, Any]:
        torch = require_torch()
        q = torch.from_numpy(self.q.view(np.int64) if self.kind == "multi" else self.q)
        db = torch.from_numpy(self.db.view(np.int64) if self.kind == "multi" else self.db)
        return q.to(device), db.to(device)


def _check_labels(name: str, a: np.ndarray, n: int, codes: str) -> None:
    """Labels are class ids >= 0 ``[n]`` or 0/1 multi-hot ``[n, C]``, one row per code;
    a ``ValueError`` names the array and shows a sample of the bad values."""
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be class ids [n] or multi-hot [n, C]; got shape {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} rows but {codes} has {n} codes; give one "
                         "label (row) per code, in the same order")
    if a.dtype == np.bool_:
        return
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must be integer or bool labels; got dtype {a.dtype}")
    if a.ndim == 1:
        with np.errstate(invalid="ignore"):
            bad = ~((a >= 0) & (np.mod(a, 1) == 0)) if a.dtype.kind == "f" else a < 0
        rule = "class ids must be integers >= 0"
    else:
        bad = (a != 0) & (a != 1)
        rule = "multi-hot labels must be 0/1"
    if np.any(bad):
        values = np.unique(a[bad])  # nan sorts last
        sample = ", ".join(f"{v:g}" if a.dtype.kind == "f" else str(v) for v in values[:5])
        more = f", … ({len(values)} distinct)" if len(values) > 5 else ""
        raise ValueError(f"{name}: {rule}; found {sample}{more} in {int(np.sum(bad))} of "
                         f"{a.size} entries")


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """bool [n, C] -> uint64 [n, ceil(C/64)] (bit order irrelevant: only AND is used)."""
    return packed_words(np.packbits(bits, axis=1)).T.copy()


# --------------------------------------------------------------------------------------
# Ranking engines: relevance of the stable top K, and distance histograms
# --------------------------------------------------------------------------------------


class _Engine:
    """Ranks the database for every query; numpy or torch, same results."""

    def __init__(self, query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any,
                 device: Any = None, chunk_size: int | None = None) -> None:
        self.device = _torch_device(device, query_codes, db_codes)
        q, db = _codes_pair(query_codes, db_codes)
        self.n_query, self.n_db, self.bits = q.shape[0], db.shape[0], q.shape[1]
        self.labels = _Labels(query_labels, db_labels, self.n_query, self.n_db)
        self.chunk_size = chunk_size
        if self.device is None:
            self.q_packed = np.packbits(q, axis=1)
            self.db = PackedDatabase(np.packbits(db, axis=1), self.bits)
        else:
            self.q_signed = torch_signed(q, self.device)
            self.db_signed = torch_signed(db, self.device)
            self.q_lab, self.db_lab = self.labels.to_torch(self.device)

    def cutoff(self, topk: int | None) -> int:
        if topk is None:
            return self.n_db
        if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
            raise ValueError(f"topk must be a positive integer or None (all); got {topk!r}")
        return min(int(topk), self.n_db)

    def _blocks(self, per_row: int) -> range:
        rows = self.chunk_size or max(1, (1 << 22) // max(1, per_row))
        return range(0, self.n_query, max(1, int(rows)))

    def topk_relevance(self, k: int) -> np.ndarray:
        """bool [n_query, k]: relevance in stable ranked order (distance, database position)."""
        out = np.empty((self.n_query, k), dtype=bool)
        step = self._blocks(k).step
        for s in self._blocks(k):
            rows = slice(s, min(self.n_query, s + step))
            if self.device is None:

                def relevance(block: slice, _: np.ndarray, pos: np.ndarray,
                              offset: int = rows.start) -> None:
                    at = slice(block.start + offset, block.stop + offset)
                    out[at] = self.labels.topk(at, pos)

                hamming_topk(self.q_packed[rows], self.db, k, on_chunk=relevance)
            else:
                _, pos = torch_topk(self.q_signed[rows], self.db_signed, k)
                out[rows] = self._torch_topk_relevance(rows, pos).cpu().numpy()
        return out

    def _torch_topk_relevance(self, rows: slice, pos: Any) -> Any:
        if self.labels.kind == "single":
            return self.db_lab[pos] == self.q_lab[rows][:, None]
        return ((self.db_lab[pos] & self.q_lab[rows][:, None, :]) != 0).any(-1)

    def histograms(self) -> tuple[np.ndarray, np.ndarray]:
        """int64 [n_query, bits+1] counts of all / relevant database items per distance."""
        width = self.bits + 1
        n_all = np.zeros((self.n_query, width), dtype=np.int64)
        n_rel = np.zeros((self.n_query, width), dtype=np.int64)
        if self.device is None:
            rows = self.chunk_size or max(1, min(256, (1 << 22) // self.n_db))
            for s, dist in hamming_distance_rows(self.q_packed, self.db, rows):
                c = dist.shape[0]
                flat = (dist + (np.arange(c, dtype=np.intp) * width)[:, None]).ravel()
                rel = self.labels.full(slice(s, s + c)).ravel()
                n_all[s : s + c] = np.bincount(flat, minlength=c * width).reshape(c, width)
                n_rel[s : s + c] = np.bincount(flat[rel], minlength=c * width).reshape(c, width)
            return n_all, n_rel
        torch = require_torch()
        rows = self.chunk_size or max(1, (1 << 24) // self.n_db)
        for s in range(0, self.n_query, rows):
            sl = slice(s, min(self.n_query, s + rows))
            dist = torch_distances(self.q_signed[sl], self.db_signed)
            if self.labels.kind == "single":
                rel = self.db_lab[None, :] == self.q_lab[sl][:, None]
            else:
                rel = ((self.db_lab[None, :, :] & self.q_lab[sl][:, None, :]) != 0).any(-1)
            zeros = torch.zeros((dist.shape[0], width), dtype=torch.int64, device=self.device)
            n_all[sl] = zeros.scatter_add(1, dist, torch.ones_like(dist)).cpu().numpy()
            n_rel[sl] = zeros.scatter_add(1, dist, rel.to(torch.int64)).cpu().numpy()
        return n_all, n_rel


# --------------------------------------------------------------------------------------
# Reductions (numpy, float64; shared by both backends)
# --------------------------------------------------------------------------------------


def _average_precision(rel: np.ndarray) -> np.ndarray:
    """float64 [q]: AP of each row of a ranked relevance matrix (0 for rows without hits)."""
    nq, k = rel.shape
    hits = np.cumsum(rel, axis=1, dtype=np.int32)  # relevant items up to each position
    precision = hits / np.arange(1, k + 1)  # P@r, float64
    total = np.einsum("ij,ij->i", precision, rel)  # sum of P@r over relevant positions
    n_hits = hits[:, -1] if k else np.zeros(nq, dtype=np.int32)
    return np.divide(total, n_hits, out=np.zeros(nq), where=n_hits > 0)


def _harmonic(n: int) -> np.ndarray:
    """H[0..n] with H[0] = 0."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def _tie_bounds(n_all: np.ndarray, n_rel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query best and worst AP@k over every order of items sharing a distance.

    Groups entirely inside the top k contribute most (least) when their relevant items come
    first (last). In the group straddling the cut-off, ``j`` of its relevant items make it
    into the top k, for j between the forced minimum and the possible maximum; each j gives a
    closed form through harmonic numbers, and the bound is the max (min) over j. With
    H(n) = Σ_{i<=n} 1/i, r relevant items at positions c+1..c+r after R earlier hits add
    Σ (R+i)/(c+i) = r + (R - c)(H(c+r) - H(c)).
    """
    n_db = int(n_all[0].sum())
    h = _harmonic(n_db)
    c_before = np.cumsum(n_all, axis=1) - n_all  # items at smaller distance
    r_before = np.cumsum(n_rel, axis=1) - n_rel
    # the straddling group: first distance whose cumulative count reaches k
    cut = np.argmax(c_before + n_all >= k, axis=1)
    rows = np.arange(len(n_all))
    full = np.arange(n_all.shape[1])[None, :] < cut[:, None]

    def group_sum(offset: np.ndarray) -> np.ndarray:
        return np.where(full, n_rel + (r_before - offset) * (h[offset + n_rel] - h[offset]), 0.0)

    best_full = group_sum(c_before).sum(axis=1)
    worst_full = group_sum(c_before + n_all - n_rel).sum(axis=1)
    cs, rs = c_before[rows, cut], r_before[rows, cut]
    ns, rg = n_all[rows, cut], n_rel[rows, cut]
    m = k - cs  # slots of the top k the straddling group fills
    j_lo = np.maximum(0, m - (ns - rg))
    j_hi = np.minimum(rg, m)
    span = int((j_hi - j_lo).max()) + 1
    j = j_lo[:, None] + np.arange(span)[None, :]
    valid = j <= j_hi[:, None]
    j = np.minimum(j, j_hi[:, None])
    cs2, rs2, m2 = cs[:, None], rs[:, None], m[:, None]
    best_part = j + (rs2 - cs2) * (h[cs2 + j] - h[cs2])
    worst_part = j + (rs2 - (cs2 + m2 - j)) * (h[cs2 + m2] - h[cs2 + m2 - j])
    denom = rs2 + j
    with np.errstate(invalid="ignore", divide="ignore"):
        ap_best = np.where(denom > 0, (best_full[:, None] + best_part) / denom, 0.0)
        ap_worst = np.where(denom > 0, (worst_full[:, None] + worst_part) / denom, 0.0)
    best = np.where(valid, ap_best, -np.inf).max(axis=1)
    worst = np.where(valid, ap_worst, np.inf).min(axis=1)
    return best, worst


def _ball_precision_recall(n_all: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    ball = np.cumsum(n_all, axis=1)
    hits = np.cumsum(n_rel, axis=1)
    relevant = hits[:, -1]
    nonempty = ball > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        q_prec = np.where(nonempty, hits / ball, 0.0)
        q_rec = np.where(relevant[:, None] > 0, hits / relevant[:, None], 0.0)
    n_nonempty = nonempty.sum(axis=0)
    has_rel = relevant > 0
    precision = np.divide(q_prec.sum(axis=0), n_nonempty, out=np.zeros(ball.shape[1]),
                          where=n_nonempty > 0)
    recall = q_rec[has_rel].mean(axis=0) if has_rel.any() else np.zeros(ball.shape[1])
    return {
        "radius": np.arange(ball.shape[1]),
        "precision": precision,
        "recall": recall,
        "coverage": n_nonempty / len(ball),
        "ball_precision_per_query": q_prec,
    }


# --------------------------------------------------------------------------------------
# Public metrics
# --------------------------------------------------------------------------------------


def hamming_distances(query_codes: Any, db_codes: Any) -> np.ndarray:
    """Full Hamming distance matrix ``int32 [n_query, n_db]`` (packed XOR + popcount).

    >>> hamming_distances(np.array([[1, 1, -1]]), np.array([[1, 1, -1], [-1, -1, 1]]))
    array([[0, 3]], dtype=int32)
    """
    q, db = _codes_pair(query_codes, db_codes)
    database = PackedDatabase(np.packbits(db, axis=1), q.shape[1])
    out = np.empty((q.shape[0], db.shape[0]), dtype=np.int32)
    for s, dist in hamming_distance_rows(np.packbits(q, axis=1), database):
        out[s : s + dist.shape[0]] = dist
    return out


def mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | None = None,
    *,
    device: Any = None,
    chunk_size: int | None = None,
    return_bounds: bool = False,
) -> float | MapResult:
    """mAP@topk with ties broken by database order (``topk=None``: the whole database).

    ``device``: None runs on numpy (or on the tensors' GPU when the codes are CUDA tensors);
    a torch device (``"cuda"``, ``"cpu"``) runs the torch kernels there. ``chunk_size``:
    queries per block (memory bound). ``return_bounds=True`` returns a :class:`MapResult`
    with the best and worst mAP any tie order could give.

    >>> codes = np.array([[1, 1], [1, -1], [-1, -1]])
    >>> mean_average_precision(codes[:1], codes, [0], [0, 1, 0], topk=None)
    0.8333333333333333
    """
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    k = engine.cutoff(topk)
    ap = _average_precision(engine.topk_relevance(k)) if engine.n_query else np.zeros(0)
    value = float(ap.mean()) if len(ap) else 0.0
    if not return_bounds:
        return value
    if not engine.n_query:
        return MapResult(0.0, 0.0, 0.0)
    best, worst = _tie_bounds(*engine.histograms(), k)
    return MapResult(value, float(best.mean()), float(worst.mean()))


def precision_at_n_curve(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any, max_n: int | None = None,
    *, device: Any = None, chunk_size: int | None = None,
) -> np.ndarray:
    """float64 [N]: mean precision of the first n results for n = 1..N (stable tie order).

    ``max_n`` defaults to 1000 and is capped at the database size.
    """
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    k = engine.cutoff(1000 if max_n is None else max_n)
    return _precision_curve(engine.topk_relevance(k))


def _precision_curve(rel: np.ndarray) -> np.ndarray:
    if not len(rel):
        return np.zeros(rel.shape[1])
    return np.cumsum(rel.mean(axis=0, dtype=np.float64)) / np.arange(1, rel.shape[1] + 1)


def precision_at_n(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any,
    ns: tuple[int, ...] = (100, 500, 1000), *, device: Any = None, chunk_size: int | None = None,
) -> dict[int, float]:
    """Mean precision of the first n results for each n in ``ns`` (stable tie order).

    An n larger than the database is read as the whole database (precision of the full list).
    """
    ns = _check_ns(ns)
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    curve = _precision_curve(engine.topk_relevance(engine.cutoff(max(ns))))
    return {n: float(curve[min(n, len(curve)) - 1]) for n in ns}


def _check_ns(ns: Any) -> tuple[int, ...]:
    ns = tuple(int(n) for n in ns)
    if not ns or min(ns) < 1:
        raise ValueError(f"ns must be positive integers; got {ns}")
    return ns


def pr_curve(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any,
    *, device: Any = None, chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Precision and recall of the Hamming ball of radius r = 0..k, averaged over queries.

    * precision[r]: mean over the queries whose ball is non-empty of (relevant in ball / ball
      size); queries with an empty ball are left out at that radius (their precision is
      undefined, not 0), and ``coverage[r]`` says which fraction of queries had a non-empty
      ball. When no query has one, precision[r] is 0.
    * recall[r]: mean over the queries with at least one relevant database item of (relevant
      in ball / relevant in database); queries with none are left out at every radius.

    Returns arrays ``radius``, ``precision``, ``recall``, ``coverage`` (length k + 1). To draw
    the curve use :func:`pr_curve_points`, which leaves out the radii where nothing relevant
    was retrieved (recall 0).
    """
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    out = _ball_precision_recall(*engine.histograms())
    out.pop("ball_precision_per_query")
    return out


def pr_curve_points(curve: Mapping[str, Sequence[float]]) -> tuple[list[float], list[float]]:
    """The ``(recall, precision)`` points of a :func:`pr_curve` (or a report's ``pr_curve``)
    worth drawing: radii where some query retrieved a relevant item.

    At the small radii of long codes no query's ball holds anything, and :func:`pr_curve`
    reports precision 0 and recall 0 there (and ``coverage`` 0); drawn, those points make the
    curve drop to (0, 0) along the precision axis. Recall 0 means no relevant item was
    retrieved by any query, so precision is 0 or undefined there: such radii are left out, as
    are radii with ``coverage`` 0 when the curve records it.
    """
    recall = [float(x) for x in curve.get("recall", [])]
    precision = [float(x) for x in curve.get("precision", [])]
    if len(recall) != len(precision):
        raise ValueError(f"pr curve: {len(recall)} recall values but {len(precision)} "
                         "precision values")
    coverage = curve.get("coverage")
    covered = ([float(c) > 0 for c in coverage] if coverage is not None
               and len(coverage) == len(recall) else [True] * len(recall))
    keep = [i for i, r in enumerate(recall) if r > 0 and covered[i]]
    return [recall[i] for i in keep], [precision[i] for i in keep]


def precision_within_radius(
    query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any, radius: int = 2,
    *, device: Any = None, chunk_size: int | None = None,
) -> float:
    """Mean precision inside the Hamming ball of ``radius`` (P@r2 for radius 2).

    Follows the field's convention: a query whose ball is empty scores 0 and counts in the mean.
    """
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer; got {radius!r}")
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    per_query = _ball_precision_recall(*engine.histograms())["ball_precision_per_query"]
    return float(per_query[:, min(int(radius), engine.bits)].mean()) if engine.n_query else 0.0


def retrieval_report(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | None,
    ns: tuple[int, ...] = (100, 500, 1000),
    *,
    device: Any = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Every retrieval number for one code length, JSON-serialisable (floats, ints, lists).

    Keys: ``map`` (mAP@topk, stable ties), ``map_best`` / ``map_worst`` (tie bounds), ``topk``
    (the cut-off used), ``precision_at_n`` ({"100": ...}), ``precision_curve`` ({"n": [...],
    "precision": [...]}, n = 1..max(ns)), ``precision_radius_2`` (P@r2, empty ball = 0),
    ``pr_curve`` ({"radius", "precision", "recall", "coverage"}, see :func:`pr_curve`),
    ``n_query``, ``n_database``, ``bits``.
    """
    ns = _check_ns(ns)
    engine = _Engine(query_codes, db_codes, query_labels, db_labels, device, chunk_size)
    k_map = engine.cutoff(topk)
    k_all = max(k_map, engine.cutoff(max(ns)))
    rel = engine.topk_relevance(k_all) if engine.n_query else np.zeros((0, k_all), bool)
    ap = _average_precision(rel[:, :k_map])
    curve = _precision_curve(rel)
    n_all, n_rel = engine.histograms()
    ball = _ball_precision_recall(n_all, n_rel)
    if engine.n_query:
        best, worst = _tie_bounds(n_all, n_rel, k_map)
    else:
        best = worst = np.zeros(0)
    n_curve = min(max(ns), engine.n_db)

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if len(a) else 0.0

    return {
        "map": mean(ap),
        "map_best": mean(best),
        "map_worst": mean(worst),
        "topk": k_map,
        "precision_at_n": {str(n): float(curve[min(n, len(curve)) - 1]) for n in ns},
        "precision_curve": {"n": list(range(1, n_curve + 1)),
                            "precision": curve[:n_curve].tolist()},
        "precision_radius_2": mean(ball["ball_precision_per_query"][:, min(2, engine.bits)]),
        "pr_curve": {key: ball[key].tolist()
                     for key in ("radius", "precision", "recall", "coverage")},
        "n_query": engine.n_query,
        "n_database": engine.n_db,
        "bits": engine.bits,
    }


def bit_statistics(codes: Any) -> dict[str, Any]:
    """Balance and independence of the bits of a code set, JSON-serialisable.

    Keys: ``bits``, ``n``, ``ones_fraction`` (per bit), ``mean_abs_balance`` (mean |p − 0.5|),
    ``bit_entropy`` (per bit, in bits), ``mean_bit_entropy``, ``correlation`` (k × k Pearson
    matrix of the bits; 0 where a bit is constant), ``mean_abs_correlation`` (off-diagonal),
    ``unique_codes`` (distinct codes).
    """
    b = code_bits(codes, "codes")
    n, k = b.shape
    x = b.astype(np.float64)
    p = x.mean(axis=0) if n else np.zeros(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log2(p), 0.0)
                    + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    centred = x - p
    std = np.sqrt((centred**2).mean(axis=0)) if n else np.zeros(k)
    cov = centred.T @ centred / max(n, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(np.outer(std, std) > 0, cov / np.outer(std, std), 0.0)
    np.fill_diagonal(corr, np.where(std > 0, 1.0, 0.0))
    off = corr[~np.eye(k, dtype=bool)]
    unique = len(np.unique(np.packbits(b, axis=1), axis=0)) if n else 0
    return {
        "bits": k,
        "n": n,
        "ones_fraction": p.tolist(),
        "mean_abs_balance": float(np.abs(p - 0.5).mean()),
        "bit_entropy": entropy.tolist(),
        "mean_bit_entropy": float(entropy.mean()),
        "correlation": corr.tolist(),
        "mean_abs_correlation": float(np.abs(off).mean()) if off.size else 0.0,
        "unique_codes": int(unique),
    }

