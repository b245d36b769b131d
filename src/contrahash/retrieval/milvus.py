"""A Milvus search backend for binary codes: :class:`MilvusIndex` (optional extra ``milvus``).

Install with ``pip install 'contrahash[milvus]'`` (pymilvus 2.5 and milvus-lite 2.5.1; the
3.x milvus-lite releases dropped binary vectors).

``MilvusIndex`` is a :class:`~contrahash.retrieval.search_index.SearchIndex` like ``HammingIndex``
that keeps the codes in a Milvus collection (reaching it: :mod:`~.milvus_connect`):

* ``uri="path/codes.db"``: an embedded Milvus Lite database in one local file (a server
  process that pymilvus starts and this class stops on :meth:`MilvusIndex.close`). Milvus
  Lite opens a ``.db`` file in one process at a time, and it only has the exact ``BIN_FLAT``
  index.
* ``uri="http://host:19530"``: a Milvus standalone or cluster server (``BIN_FLAT``, or the
  approximate ``BIN_IVF_FLAT`` with ``nlist`` / ``nprobe``).

Storage
-------
One collection per index: an ``INT64`` primary key ``id`` (the item id, not auto-generated)
and a ``BINARY_VECTOR`` field ``code`` searched with the ``HAMMING`` metric. The vector holds
the packed code (:func:`contrahash.retrieval.index.pack_codes`: big-endian bits within a byte). Milvus
needs a binary dimension that is a multiple of 8, so a ``bits``-bit code is stored as a
``8 * ceil(bits / 8)``-dimensional vector whose trailing padding bits are zero: zero padding
changes no Hamming distance. The true ``bits`` is recorded in the collection's description
(``contrahash bits=<bits>``), so reopening with another code length is refused even when
both lengths pad to the same dimension.

Ranking and ties
----------------
``search`` ranks by ``(Hamming distance, id)``, exactly like ``HammingIndex`` ranks by
``(distance, insertion position)`` when ids are assigned in insertion order (the default).
Milvus itself breaks ties in its own order and, at the ``k``-th distance, may return *any*
of the tied items. With ``BIN_FLAT`` the result is made identical to faiss'
``IndexBinaryFlat``:

1. each query asks Milvus for ``L = min(2k + 64, 16384)`` neighbours (16384 is Milvus'
   top-k cap). Every item closer than the ``L``-th returned distance is among them.
   If the ``L``-th distance is larger than the ``k``-th one (or fewer than ``L`` came back:
   the whole collection), the group of items at the ``k``-th distance ``D`` is complete:
   sort by ``(distance, id)`` and cut at ``k``.
2. otherwise one range search per distinct ``D`` (the queries sharing it batched together)
   fetches the whole group at distance exactly ``D`` (``D <= distance < D + 1``).
3. a group of more than 16384 items is read in id windows (a filter ``lo <= id < hi``,
   narrowed until a window returns fewer than 16384 items) until the ``k - (items closer
   than D)`` smallest ids are known.

Cost: step 1 returns about twice ``k`` hits per query; a query whose tie group straddles
``L`` costs a second scan of the collection (step 2) that returns its whole tie group; step 3
only happens for tie groups larger than 16384 items (a few range searches per such query).
On 1M random 64-bit codes no query of k = 10 or k = 1000 needs step 2; codes with few
distinct values (big tie groups) need it often (see ``benchmarks/milvus_search.py``).
Distances always equal faiss'; ids too, for ``BIN_FLAT``.
``BIN_IVF_FLAT`` is approximate: its results are sorted by ``(distance, id)`` but not
completed, and may hold fewer than ``k`` items (padding slots as below).

Limits
------
``min(k, len(index))`` must not exceed 16384 (Milvus' top-k cap). Inserts go in requests of
at most 16 MiB (Milvus refuses requests above 64 MiB by default) and searches in batches of at
most 16384 queries (Milvus' nq cap) and about a million hits per request.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from contrahash.retrieval.index import (
    codes_as_packed,
    item_ids,
    search_frame,
)
from contrahash.retrieval.milvus_connect import (
    INDEX_TYPES,
    NAME_RE,
    PK,
    VECTOR,
    MilvusError,
    MilvusNotInstalledError,
    check_backend,
    check_bits,
    check_schema,
    connect,
    create_collection,
    describe_backend,
    disconnect,
    has_search_internals,
    index_options,
    parse_uri,
    pymilvus_module,
)

__all__ = ["MilvusError", "MilvusIndex", "MilvusNotInstalledError", "check_backend",
           "describe_backend", "index_options"]

#: Milvus' cap on top-k (``limit``) and on the number of queries in one search request.
MAX_TOPK = 16384
MAX_NQ = 16384
#: Bytes of codes and ids per insert request (Milvus' default request cap is 64 MiB).
INSERT_BYTES = 16 << 20
#: Rows per insert request, whatever the code length (keeps client memory modest).
INSERT_ROWS = 250_000
#: Hits (queries x limit) per search request: about 12 MB of ids and distances.
RESULT_HITS = 1 << 20
#: Ids per ``id in [...]`` expression (lookups and deletes).
ID_CHUNK = 8192
CONSISTENCY_LEVELS = ("Session", "Strong", "Bounded", "Eventually")
# (uri, collection) -> time.monotonic() until which reads are Strong (after a change here).
_recent_changes: dict[tuple[str, str], float] = {}


class MilvusIndex:
    """Exact (``BIN_FLAT``) or approximate (``BIN_IVF_FLAT``) Hamming k-NN in Milvus.

    ``uri``: a local file path ending in ``.db`` (embedded Milvus Lite) or
    ``http://host:port`` (a Milvus server). ``bits``: code length; codes are stored as
    ``8 * ceil(bits / 8)``-dimensional binary vectors with zero padding bits (which keep every
    Hamming distance unchanged). ``collection``: the collection name; an existing one is
    reopened (its code length must equal ``bits``), a missing one is created unless
    ``create=False``. ``index_type``: ``"BIN_FLAT"`` (exact, the default) or
    ``"BIN_IVF_FLAT"`` (a Milvus server only: Milvus Lite has only ``BIN_FLAT``) with
    ``nlist`` clusters, of which a search visits ``nprobe``. ``connect_timeout``: seconds to
    wait for a network server before giving up. ``consistency`` of searches and counts:
    ``"Session"`` (default) sees every write of this process at once and other processes'
    writes within about one server time tick (200 ms by default); ``"Strong"`` sees every
    write that returned, in any process, but each request then waits for the server's next
    time tick (that latency, per request). Counts (``len``) and the id checks of :meth:`add`
    and :meth:`remove` are always Strong.

    Results rank by ``(distance, id)``; see the module docstring for how ties at the ``k``-th
    distance are resolved to match faiss' ``IndexBinaryFlat``. Close the index (or use it as
    a context manager) to stop an embedded server and free its ``.db`` file.
    """

    def __init__(
        self,
        uri: str,
        bits: int,
        collection: str = "contrahash",
        *,
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 32,
        create: bool = True,
        connect_timeout: float = 5.0,
        consistency: str = "Session",
    ) -> None:
        self.bits = check_bits(bits)
        self.code_bytes = (self.bits + 7) // 8
        self.uri = str(uri)
        self.collection = collection
        self.index_type = index_type
        self.nlist = int(nlist)
        self.nprobe = int(nprobe)
        if consistency not in CONSISTENCY_LEVELS:
            raise MilvusError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}; "
                              f"got {consistency!r}")
        self.consistency = consistency
        if not isinstance(collection, str) or not NAME_RE.match(collection):
            raise MilvusError(
                f"collection name {collection!r} is not valid for Milvus (a letter or _ "
                "first, then letters, digits or _; at most 255 characters)"
            )
        if index_type not in INDEX_TYPES:
            raise MilvusError(f"index_type must be one of {', '.join(INDEX_TYPES)}; "
                              f"got {index_type!r}")
        if self.nlist < 1 or self.nprobe < 1:
            raise MilvusError(f"nlist and nprobe must be >= 1; got {nlist}, {nprobe}")
        self._lite_path = parse_uri(self.uri)
        if self._lite_path is not None and index_type != "BIN_FLAT":
            raise MilvusError(
                f"{self._where()}: Milvus Lite (a .db uri) supports only the BIN_FLAT index, "
                f"not {index_type}; use a Milvus server (http://host:port) for {index_type}"
            )
        self._pm = pymilvus_module()
        self._alias = f"contrahash-{uuid.uuid4().hex}"
        self._coll: Any = None
        self._connected = False
        self._fast_search = has_search_internals()
        try:
            self._connect(connect_timeout)
            self._open(create)
        except BaseException:
            self.close()
            raise

    # ---- connection ------------------------------------------------------------------------


    def _where(self) -> str:
        return f"Milvus collection {self.collection!r} at {self.uri}"

    def _connect(self, timeout: float) -> None:
        connect(self._pm, self._alias, self.uri, self._lite_path, timeout)
        self._connected = True

    def close(self) -> None:
        """Disconnect; the last index on an embedded ``.db`` in this process stops its server."""
        self._coll = None
        if self._connected:
            self._connected = False
            disconnect(self._pm, self._alias, self._lite_path)


    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"ntotal={len(self)}" if self._coll is not None else "closed"
        return (f"MilvusIndex(uri={self.uri!r}, collection={self.collection!r}, "
                f"bits={self.bits}, index_type={self.index_type!r}, {state})")

    # ---- collection ------------------------------------------------------------------------

    def _open(self, create: bool) -> None:
        pm = self._pm
        if pm.utility.has_collection(self.collection, using=self._alias):
            coll = pm.Collection(self.collection, using=self._alias)
            self._check_schema(coll)
        elif not create:
            raise MilvusError(f"{self._where()} does not exist (create=True makes one)")
        else:
            coll = self._create()
        try:
            coll.load()
        except pm.MilvusException as exc:
            raise MilvusError(f"{self._where()}: cannot load the collection: "
                              f"{exc.message}") from None
        self._coll = coll

    def _create(self) -> Any:
        return create_collection(self._pm, self._alias, self.collection, self.bits,
                                 self.index_type, self.nlist, self._where())

    def _check_schema(self, coll: Any) -> None:
        nlist = check_schema(self._pm, coll, self.bits, self.index_type, self._where())
        if nlist is not None:
            self.nlist = nlist


    def _collection(self) -> Any:
        if self._coll is None:
            raise MilvusError(f"{self._where()}: the index is closed")
        return self._coll

    # ---- contents --------------------------------------------------------------------------

    def __len__(self) -> int:
        """The exact item count: a Strong read (a Session count on Milvus Lite was seen to
        lag the inserts that had just returned, under load)."""
        coll = self._collection()
        try:
            rows = self._reloading(lambda: coll.query("", output_fields=["count(*)"],
                                                      consistency_level="Strong"))
        except self._pm.MilvusException as exc:
            raise MilvusError(f"{self._where()}: cannot count the items: "
                              f"{exc.message}") from None
        return int(rows[0]["count(*)"])

    def _level(self) -> str:
        """Strong for a second after this process inserted or deleted here, else the set level:
        a Session read cannot wait for a delete (no timestamp in Milvus 2.3), and on Milvus Lite
        one right after an insert was seen, under load, to miss the rows just inserted."""
        if time.monotonic() < _recent_changes.get((self.uri, self.collection), 0.0):
            return "Strong"
        return self.consistency

    def _changed_now(self) -> None:
        _recent_changes[(self.uri, self.collection)] = time.monotonic() + 1.0

    def _reloading(self, call: Any) -> Any:
        """``call()``, once more after loading the collection again when the server says it is
        not loaded: a restarted server reloads its collections in the background, and the
        first request after the restart may come before that."""
        try:
            return call()
        except self._pm.MilvusException as exc:
            if "not loaded" not in str(exc.message).lower():
                raise
        try:
            self._collection().load()
        except self._pm.MilvusException as exc:
            raise MilvusError(f"{self._where()}: cannot load the collection again: "
                              f"{exc.message}") from None
        return call()

    def _as_packed(self, codes: Any, packed: bool, name: str) -> np.ndarray:
        return codes_as_packed(codes, self.bits, packed, name, f" ({self._where()})")

    def add(self, codes: Any, ids: Any = None, *, packed: bool = False) -> None:
        """Insert codes ``[n, bits]`` (±1, {0,1} or bool; or packed uint8 with ``packed=True``).

        ``ids`` (int64, >= 0) default to consecutive numbers after the current count (after a
        :meth:`remove`, pass them explicitly). Milvus does not enforce unique primary keys (a
        second insert of an id would add a second row, and a search could return the id
        twice), so ids repeated within ``ids`` or already in the collection are refused with
        a :class:`MilvusError` and nothing is inserted; to replace an item, :meth:`remove` it
        first. Rows go in requests of at most :data:`INSERT_BYTES` bytes / :data:`INSERT_ROWS`
        rows.
        """
        coll = self._collection()
        p = self._as_packed(codes, packed, "codes")
        n = p.shape[0]
        count = len(self)
        new_ids = item_ids(ids, n, count)
        unique, seen = np.unique(new_ids, return_counts=True)
        if len(unique) != n:
            raise MilvusError(f"{self._where()}: ids repeat within one add (e.g. "
                              f"{unique[seen > 1][:5].tolist()}); each item needs its own id")
        clash = self._ids_present(unique, limit=5) if count else unique[:0]
        if len(clash):
            raise MilvusError(
                f"{self._where()}: ids {clash.tolist()} are already in the collection (Milvus "
                "does not enforce unique ids); remove them first to replace those items")
        rows = max(1, min(INSERT_ROWS, INSERT_BYTES // (self.code_bytes + 16)))
        for s in range(0, n, rows):
            block = p[s : s + rows]
            try:
                coll.insert([new_ids[s : s + rows].tolist(), [r.tobytes() for r in block]])
            except self._pm.MilvusException as exc:
                raise MilvusError(f"{self._where()}: insert of rows {s}..{s + len(block) - 1} "
                                  f"failed: {exc.message}") from None
        self._changed_now()

    def flush(self, *, reload: bool = False, timeout: float | None = None) -> None:
        """Seal the rows inserted so far and wait until the server has indexed them.

        Not needed for correct results: a server searches rows that are not indexed yet by a
        full scan. It matters for speed with ``BIN_IVF_FLAT``: the server switches its
        searches to the new index in the background (tens of seconds on Milvus 2.3);
        ``reload=True`` releases and loads the collection so they use it at once (searches
        of other clients fail while it reloads: for a bulk build, not a serving collection).
        """
        coll = self._collection()
        pm = self._pm
        try:
            coll.flush(timeout=timeout)
            if self._lite_path is None:
                pm.utility.wait_for_index_building_complete(self.collection, timeout=timeout,
                                                            using=self._alias)
            if reload:
                coll.release(timeout=timeout)
                coll.load(timeout=timeout)
        except pm.MilvusException as exc:
            raise MilvusError(f"{self._where()}: flush failed: {exc.message}") from None

    def remove(self, ids: Any) -> int:
        """Delete the items with these ids; returns how many of them the collection held.

        Ids it does not hold are ignored. A removed id may be added again (a re-encoded item
        keeps its id: ``remove([i])`` then ``add(code, ids=[i])``); searches after the call
        no longer return the removed items.
        """
        coll = self._collection()
        raw = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
        if raw.ndim != 1:
            raise ValueError(f"ids must be a 1-D integer array; got shape {raw.shape}")
        wanted = np.unique(item_ids(raw, raw.shape[0], 0))
        if not len(wanted) or not len(self):
            return 0
        present = self._ids_present(wanted)
        for s in range(0, len(present), ID_CHUNK):
            chunk = present[s : s + ID_CHUNK]
            self._changed_now()
            try:
                coll.delete(f"{PK} in {chunk.tolist()}")
            except self._pm.MilvusException as exc:
                raise MilvusError(f"{self._where()}: delete of {len(chunk)} ids failed: "
                                  f"{exc.message}") from None
        self._changed_now()
        return len(present)

    def _ids_present(self, ids: np.ndarray, limit: int | None = None) -> np.ndarray:
        """Those of the sorted unique ``ids`` the collection holds (sorted; the first ``limit``
        found, when given). A contiguous run with a ``limit`` is one range query."""
        coll = self._collection()
        if limit is not None and int(ids[-1]) - int(ids[0]) + 1 == len(ids):
            exprs = [f"{PK} >= {int(ids[0])} and {PK} <= {int(ids[-1])}"]
        else:
            exprs = [f"{PK} in {ids[s : s + ID_CHUNK].tolist()}"
                     for s in range(0, len(ids), ID_CHUNK)]
        extra = {} if limit is None else {"limit": limit}
        found: list[int] = []
        for expr in exprs:
            try:
                rows = coll.query(expr, output_fields=[PK], consistency_level="Strong",
                                  **extra)
            except self._pm.MilvusException as exc:
                raise MilvusError(f"{self._where()}: id lookup failed: {exc.message}") from None
            found.extend(int(r[PK]) for r in rows)
            if limit is not None and len(found) >= limit:
                break
        out = np.unique(np.asarray(found, dtype=np.int64))
        return out if limit is None else out[:limit]

    # ---- search ----------------------------------------------------------------------------

    def _raw_search(self, q: np.ndarray, limit: int, params: dict[str, Any],
                    expr: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """One Milvus search per batch of queries: ``(distances int64, ids int64)`` each."""
        import grpc  # noqa: PLC0415 - a pymilvus dependency

        self._collection()
        batch = max(1, min(MAX_NQ, RESULT_HITS // limit))
        param = {"metric_type": "HAMMING", "params": params}
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for s in range(0, q.shape[0], batch):
            data = [r.tobytes() for r in q[s : s + batch]]
            try:
                hits = self._reloading(lambda data=data: self._search_batch(data, limit, param,
                                                                            expr))
            except self._pm.MilvusException as exc:
                raise MilvusError(f"{self._where()}: search failed: {exc.message}") from None
            except grpc.RpcError as exc:
                raise MilvusError(f"{self._where()}: search failed ({exc.code().name}: "
                                  f"{exc.details()}); is the server running?") from None
            out.extend(hits)
        return out

    def _search_batch(self, data: list[bytes], limit: int, param: dict[str, Any],
                      expr: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
        hits = self._search_rpc(data, limit, param, expr) if self._fast_search else None
        return hits if hits is not None else self._search_public(data, limit, param, expr)

    def _search_public(self, data: list[bytes], limit: int, param: dict[str, Any],
                       expr: str | None) -> list[tuple[np.ndarray, np.ndarray]]:
        result = self._collection().search(data, VECTOR, param, limit=limit, expr=expr,
                                           consistency_level=self._level())
        return [(np.rint(np.asarray(h.distances, dtype=np.float64)).astype(np.int64),
                 np.asarray(h.ids, dtype=np.int64)) for h in result]

    def _search_rpc(self, data: list[bytes], limit: int, param: dict[str, Any],
                    expr: str | None) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """A search through pymilvus' request builder and gRPC stub, read as numpy arrays.

        pymilvus' public ``search`` wraps every hit in a Python dict, which costs several
        times the server's own search time for large ``k``; this reads the raw result arrays
        instead. It relies on pymilvus 2.5 internals (``Prepare``, the handler's ``_stub``);
        without them it returns ``None`` and the public API is used from then on.
        """
        from pymilvus.client.prepare import Prepare  # noqa: PLC0415
        from pymilvus.client.utils import check_status  # noqa: PLC0415

        handler = self._pm.connections._fetch_handler(self._alias)
        stub = getattr(handler, "_stub", None)
        if stub is None:
            self._fast_search = False
            return None
        request = Prepare.search_requests_with_expr(
            self.collection, data, VECTOR, param, limit, expr,
            consistency_level=self._level())
        response = stub.Search(request)
        check_status(response.status)
        res = response.results
        topks = np.asarray(res.topks, dtype=np.int64)
        ids = np.asarray(res.ids.int_id.data, dtype=np.int64)
        dist = np.rint(np.asarray(res.scores, dtype=np.float64)).astype(np.int64)
        if len(topks) != len(data) or int(topks.sum()) != len(ids) or len(dist) != len(ids):
            raise MilvusError(f"{self._where()}: malformed search result ({len(topks)} result "
                              f"lists, {len(ids)} ids for {len(data)} queries)")
        ends = np.cumsum(topks)
        return [(dist[a - t : a], ids[a - t : a]) for a, t in zip(ends, topks, strict=True)]

    def search(self, queries: Any, k: int, *, packed: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest codes of each query: ``(distances int32 [q, k], ids int64 [q, k])``.

        Ranked by distance, ties by id. When ``k`` exceeds the collection size the trailing
        slots hold id ``-1`` and distance ``PAD_DISTANCE`` (int32 max). ``min(k, len(self))``
        may not exceed 16384 (Milvus' top-k cap).
        """
        # the count costs a request (a Strong read waits for the server's next time tick);
        # it only matters when k exceeds the top-k cap: otherwise fewer hits than asked for
        # mean that every item came back
        big_k = isinstance(k, int | np.integer) and not isinstance(k, bool) and k > MAX_TOPK
        n = len(self) if big_k else None
        q, dist, ids, kk = search_frame(queries, k, packed, self.bits,
                                        MAX_TOPK if n is None else n, f" ({self._where()})")
        nq, k = q.shape[0], dist.shape[1]
        if nq == 0 or kk == 0:
            return dist, ids
        if kk > MAX_TOPK:
            raise MilvusError(f"{self._where()}: k={k} exceeds Milvus' top-k cap of "
                              f"{MAX_TOPK} (the collection holds {n} codes)")
        if self.index_type == "BIN_FLAT":
            rows = self._exact_search(q, kk, n)
        else:
            rows = self._raw_search(q, kk, {"nprobe": self.nprobe})
        for r, (d, i) in enumerate(rows):
            order = np.lexsort((i, d))[:kk]
            dist[r, : len(order)] = d[order]
            ids[r, : len(order)] = i[order]
        return dist, ids

    def range_search(self, queries: Any, radius: int, *, packed: bool = False
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """All items within Hamming distance ``<= radius`` of each query: one ``(distances
        int32 [m], ids int64 [m])`` pair per query, ranked by ``(distance, id)``.

        One Milvus range search per batch of queries; a query whose result reaches the top-k
        cap is completed one distance at a time (:meth:`_all_ids_at` for a group larger than
        the cap), so the answer is complete however many items match (``BIN_FLAT``).
        """
        if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer; got {radius!r}")
        radius = int(radius)
        q = self._as_packed(queries, packed, "queries")
        if q.shape[0] == 0:
            return []
        extra = {"nprobe": self.nprobe} if self.index_type == "BIN_IVF_FLAT" else {}
        rows = self._raw_search(q, MAX_TOPK, {"radius": radius + 1, "range_filter": 0, **extra})
        out = []
        for r, (d, i) in enumerate(rows):
            if len(i) >= MAX_TOPK:  # cut at the cap: read it distance by distance
                parts = [self._all_ids_at(q[r : r + 1], dist) for dist in range(radius + 1)]
                d = np.concatenate([np.full(len(p), dist, np.int64)
                                    for dist, p in enumerate(parts)])
                i = np.concatenate(parts)
            order = np.lexsort((i, d))
            out.append((d[order].astype(np.int32), i[order].astype(np.int64)))
        return out

    def _all_ids_at(self, q: np.ndarray, distance: int) -> np.ndarray:
        """Every id at exactly ``distance`` from the one query ``q``: one range search, or id
        windows (halved while full, doubled after each complete one) when the group is larger
        than the top-k cap."""
        params = {"radius": distance + 1, "range_filter": distance}
        found: list[np.ndarray] = []
        lo, width = 0, MAX_TOPK
        while True:
            (_, rest), = self._raw_search(q, MAX_TOPK, params, expr=f"{PK} >= {lo}")
            if len(rest) < MAX_TOPK:
                found.append(rest)
                return np.concatenate(found)
            (_, got), = self._raw_search(q, MAX_TOPK, params,
                                         expr=f"{PK} >= {lo} and {PK} < {lo + width}")
            if len(got) >= MAX_TOPK and width > 1:
                width //= 2
                continue
            found.append(got)
            lo, width = lo + width, width * 2

    def _exact_search(self, q: np.ndarray, kk: int, n: int | None
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: candidates holding every item of the exact top ``kk`` by (distance, id)
        (``n``: the collection size when known)."""
        limit = min(MAX_TOPK, 2 * kk + 64) if n is None else min(n, MAX_TOPK, 2 * kk + 64)
        rows = self._raw_search(q, limit, {})
        if n is not None and limit >= n:
            return rows  # the whole collection: nothing can be missing
        by_boundary: dict[int, list[int]] = {}
        for r, (d, _) in enumerate(rows):
            if len(d) < limit:
                continue  # fewer hits than asked: every item came back
            boundary = int(np.partition(d, kk - 1)[kk - 1])
            if int(d.max()) == boundary:  # the tie group at the boundary may be cut short
                by_boundary.setdefault(boundary, []).append(r)
        for boundary, members in by_boundary.items():
            group_hits = self._raw_search(q[members], MAX_TOPK,
                                          {"radius": boundary + 1, "range_filter": boundary})
            for r, (gd, gi) in zip(members, group_hits, strict=True):
                d, i = rows[r]
                closer = d < boundary
                need = kk - int(closer.sum())
                if len(gi) >= MAX_TOPK:  # more ties than one request returns
                    known = int(np.partition(gi, need - 1)[need - 1])  # `need` ids are <= it
                    gi = self._smallest_ids_at(q[r : r + 1], boundary, need, known)
                    gd = np.full(len(gi), boundary, dtype=np.int64)
                rows[r] = (np.concatenate([d[closer], gd]), np.concatenate([i[closer], gi]))
        return rows

    def _smallest_ids_at(self, q: np.ndarray, distance: int, need: int, upper: int
                         ) -> np.ndarray:
        """The ``need`` smallest ids at exactly ``distance`` from the query (a huge tie group).

        Walks id windows ``[lo, hi)`` upwards from 0, halving a window while it returns a full
        :data:`MAX_TOPK` hits (so it may hold more) and widening it again after each complete
        one. At least ``need`` ids of the group are ``<= upper``, so the walk ends by then.
        """
        params = {"radius": distance + 1, "range_filter": distance}
        found: list[np.ndarray] = []
        count, lo, width = 0, 0, max(1, upper + 1)
        while count < need:
            hi = lo + width
            (_, got), = self._raw_search(q, MAX_TOPK, params, expr=f"{PK} >= {lo} and "
                                                                  f"{PK} < {hi}")
            if len(got) >= MAX_TOPK and width > 1:
                width //= 2
                continue
            found.append(np.sort(got))
            count += len(got)
            lo, width = hi, width * 2
            if lo > upper:
                break  # every id up to a known member is read (only short if rows vanished)
        return np.concatenate(found)[:need] if found else np.zeros(0, np.int64)
