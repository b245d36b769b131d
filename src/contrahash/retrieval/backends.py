"""The index backends a collection is served from: one table, one factory.

A collection's manifest records its backend: ``{"kind": "faiss"}`` (the codes of the
collection's own segments, searched in this process) or ``{"kind": "milvus", "uri": …,
"collection": …, "index": …}`` (the codes mirrored into Milvus). :data:`INDEX_BACKENDS` maps
each ``kind`` to an :class:`IndexBackend`, the way :data:`contrahash.methods.METHODS` maps a
method name to its class; :func:`open_index` is the one factory the collection code opens its
:class:`~contrahash.retrieval.search_index.SearchIndex` objects with, and nothing outside this
table tells backends apart. Adding a backend: see docs/architecture.md,
"Adding an index backend: the checklist".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contrahash.retrieval.search_index import SearchIndex

__all__ = ["INDEX_BACKENDS", "IndexBackend", "backend_of", "check_record", "open_index"]

Record = dict[str, Any]


@dataclass(frozen=True)
class IndexBackend:
    """What the collection code needs to know of one backend.

    ``external``: the codes live outside the collection directory, so every commit is
    mirrored into the backend (ids written or removed are deleted, then the new codes added),
    indexes opened by a reader are kept across reloads while the record is unchanged, and
    closing the collection closes them. An in-process backend is handed the index built from
    the directory's segments and serves it as it is.

    ``check(record)``: the record completed with its defaults, refusing what cannot work
    before anything is written (an unknown option, a server that does not answer).
    ``open(record, bits, local, create)``: the index of the ``bits``-bit codes (``local``:
    those codes from the directory, in id order; ``create``: make a missing external store).
    ``describe(record)``: one line for ``index info``.
    """

    kind: str
    external: bool
    check: Callable[[Record], Record]
    open: Callable[[Record, int, SearchIndex | None, bool], SearchIndex]
    describe: Callable[[Record], str]


def _faiss_check(record: Record) -> Record:
    return {**record, "kind": "faiss"}


def _faiss_open(record: Record, bits: int, local: SearchIndex | None, create: bool
                ) -> SearchIndex:
    if local is None:
        raise ValueError("the faiss backend serves the collection's own codes: give them")
    return local


def _faiss_describe(record: Record) -> str:
    return "faiss in this process, from the collection's segments: exact results"


def _milvus_check(record: Record) -> Record:
    from contrahash.retrieval.collection.manifest import CollectionError
    from contrahash.retrieval.milvus_connect import check_backend, index_options

    if not record.get("uri"):
        raise CollectionError("--backend milvus needs --milvus-uri (a .db file or "
                              "http://host:port)")
    record = {"collection": "contrahash", **record}
    options = index_options(record)  # unreachable server / bad options: before any write
    check_backend(record["uri"], **options)
    return {**record, "index": options["index_type"], "nlist": options["nlist"],
            "nprobe": options["nprobe"]}


def _milvus_open(record: Record, bits: int, local: SearchIndex | None, create: bool
                 ) -> SearchIndex:
    from contrahash.retrieval.milvus import MilvusIndex
    from contrahash.retrieval.milvus_connect import index_options

    return MilvusIndex(record["uri"], bits, f"{record['collection']}_{bits}", create=create,
                       **index_options(record))


def _milvus_describe(record: Record) -> str:
    from contrahash.retrieval.milvus_connect import describe_backend

    return describe_backend(record)


#: kind → backend: the table a manifest's ``backend.kind`` is looked up in
INDEX_BACKENDS: dict[str, IndexBackend] = {
    b.kind: b for b in (
        IndexBackend("faiss", False, _faiss_check, _faiss_open, _faiss_describe),
        IndexBackend("milvus", True, _milvus_check, _milvus_open, _milvus_describe),
    )
}


def backend_of(record: Record) -> IndexBackend:
    """The backend of a manifest's ``backend`` record (an unknown kind is named)."""
    from contrahash.retrieval.collection.manifest import CollectionError

    kind = record.get("kind")
    if kind not in INDEX_BACKENDS:
        raise CollectionError(f"backend must be one of {', '.join(INDEX_BACKENDS)}, got "
                              f"{kind!r}")
    return INDEX_BACKENDS[kind]


def check_record(record: Record | None) -> Record:
    """A backend record for a new collection (default faiss), checked and completed."""
    record = dict(record or {"kind": "faiss"})
    return backend_of(record).check(record)


def open_index(record: Record, bits: int, local: SearchIndex | None = None, *,
               create: bool = False) -> SearchIndex:
    """The ``bits``-bit index a manifest's backend ``record`` serves (see :class:`IndexBackend`)."""
    return backend_of(record).open(record, bits, local, create)
