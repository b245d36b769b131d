"""Reaching Milvus for :class:`contrahash.retrieval.milvus.MilvusIndex`: the optional imports,
Milvus Lite's one-process-per-file rule, server credentials, the option checks made before
anything is written, and a collection's schema (created, or checked on reopening).

Kept apart from the index itself (:mod:`contrahash.retrieval.milvus`: what is stored and how a
search is made exact) because a collection's writer needs these checks without an index.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

__all__ = ["INDEX_TYPES", "MilvusError", "MilvusNotInstalledError", "check_backend",
           "describe_backend", "index_options", "parse_uri", "server_auth"]

INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
PK, VECTOR = "id", "code"
_DESCRIPTION = "contrahash bits="
_NETWORK_SCHEMES = ("http", "https", "tcp", "grpc")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_LITE_FILE_RE = re.compile(r"^[A-Za-z0-9.\-_]{1,36}$")  # what milvus-lite accepts
_LITE_START_TIMEOUT = 60.0  # a local server never hangs; a big .db can take a while to load
_INSTALL_HINT = "pip install 'contrahash[milvus]'"

# Embedded servers this process started, by resolved .db path: how many open indexes use each.
_lite_users: dict[str, int] = {}
_lite_lock = threading.Lock()

class MilvusError(ValueError):
    """A Milvus collection, server or argument is not what :class:`~contrahash.retrieval.milvus.MilvusIndex` needs."""


class MilvusNotInstalledError(MilvusError, ImportError):
    """pymilvus (or milvus-lite, for a ``.db`` uri) is not installed."""


def pymilvus_module() -> Any:
    try:
        import pymilvus  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise MilvusNotInstalledError(
            f"MilvusIndex needs pymilvus ({exc}): {_INSTALL_HINT}"
        ) from None
    return pymilvus


def check_milvus_lite() -> None:
    """Import milvus-lite now, so a missing or broken install gets a clear message."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        try:
            import milvus_lite.server_manager  # noqa: F401, PLC0415 - optional dependency
        except ModuleNotFoundError as exc:
            if exc.name == "pkg_resources":
                raise MilvusNotInstalledError(
                    "milvus-lite 2.5 imports pkg_resources, which setuptools 82 removed: "
                    "pip install 'setuptools<82'"
                ) from None
            raise MilvusNotInstalledError(
                f"a .db uri needs milvus-lite ({exc}): {_INSTALL_HINT}"
            ) from None


def has_search_internals() -> bool:
    """True when pymilvus has the internals :meth:`contrahash.retrieval.milvus.MilvusIndex._search_rpc` uses."""
    try:
        from pymilvus.client.prepare import Prepare  # noqa: PLC0415
        from pymilvus.client.utils import check_status  # noqa: F401, PLC0415
        from pymilvus.orm.connections import connections  # noqa: PLC0415
    except ImportError:
        return False
    return hasattr(Prepare, "search_requests_with_expr") and hasattr(connections,
                                                                      "_fetch_handler")


def lite_file_locked_elsewhere(path: str) -> bool:
    """True when another process holds milvus-lite's lock on the ``.db`` file ``path``.

    Checked before pymilvus starts a server: when that start fails on a held lock,
    milvus-lite 2.5.1 deletes the lock *file* the other process holds, after which a third
    process could open the same database. The probe locks and unlocks the lock file, so it
    runs only when this process has no server on ``path`` (closing any descriptor of a file
    drops all of the process' POSIX locks on it, including a server's).
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only, like milvus-lite itself
    except ImportError:  # pragma: no cover
        return False
    from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

    if path in _lite_users or path in getattr(server_manager_instance, "_servers", {}):
        return False
    lock = Path(path).parent / f".{Path(path).name}.lock"
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.lockf(fh, fcntl.LOCK_UN)
    return False


def check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits < 1:
        raise ValueError(f"bits must be a positive integer; got {bits!r}")
    return int(bits)


def server_auth() -> dict[str, str]:
    """Credentials for a Milvus server from the environment, never from a collection's
    manifest (which records the uri): ``CONTRAHASH_MILVUS_TOKEN`` (``user:password``, or a
    Zilliz Cloud API key) and ``CONTRAHASH_MILVUS_DB`` (a database other than ``default``)."""
    out = {}
    if os.environ.get("CONTRAHASH_MILVUS_TOKEN"):
        out["token"] = os.environ["CONTRAHASH_MILVUS_TOKEN"]
    if os.environ.get("CONTRAHASH_MILVUS_DB"):
        out["db_name"] = os.environ["CONTRAHASH_MILVUS_DB"]
    return out


def index_options(backend: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~contrahash.retrieval.milvus.MilvusIndex` keyword arguments of a collection's ``backend`` record
    (``index``, ``nlist``, ``nprobe``; an older record without them is ``BIN_FLAT``)."""
    return {"index_type": str(backend.get("index", "BIN_FLAT")),
            "nlist": int(backend.get("nlist", 1024)), "nprobe": int(backend.get("nprobe", 32))}


def describe_backend(backend: dict[str, Any]) -> str:
    """One line for ``index info``: where the codes are and whether results are exact."""
    opts = index_options(backend)
    where = f"Milvus at {backend.get('uri')}, collections {backend.get('collection')}_<bits>"
    if opts["index_type"] == "BIN_IVF_FLAT":
        return (f"{where}, BIN_IVF_FLAT index (nlist={opts['nlist']}, nprobe={opts['nprobe']}): "
                "approximate results, a search may miss some of the true nearest items "
                "(docs/scaling.md)")
    return f"{where}, BIN_FLAT index: exact results, ties by id as with faiss"


def check_backend(uri: str, index_type: str = "BIN_FLAT", nlist: int = 1024,
                  nprobe: int = 32, connect_timeout: float = 5.0) -> None:
    """Refuse Milvus options that cannot work before anything is written: an unknown index
    type, ``nlist``/``nprobe`` < 1, ``BIN_IVF_FLAT`` on Milvus Lite, a malformed uri, or a
    server that does not answer within ``connect_timeout`` s (a :class:`MilvusError` naming
    the uri). A ``.db`` uri is only checked, not opened (that starts Milvus Lite)."""
    if index_type not in INDEX_TYPES:
        raise MilvusError(f"Milvus index must be one of {', '.join(INDEX_TYPES)}; got "
                          f"{index_type!r}")
    if isinstance(nlist, bool) or isinstance(nprobe, bool) or int(nlist) < 1 or int(nprobe) < 1:
        raise MilvusError(f"Milvus nlist and nprobe must be >= 1; got {nlist}, {nprobe}")
    lite = parse_uri(str(uri)) is not None
    if lite:
        if index_type != "BIN_FLAT":
            raise MilvusError(f"Milvus Lite ({uri}) supports only the BIN_FLAT index, not "
                              f"{index_type}; use a Milvus server (http://host:port)")
        return
    parsed = urlparse(str(uri))
    try:  # a refused connection fails here at once; pymilvus would wait the whole timeout
        socket.create_connection((parsed.hostname or "localhost", parsed.port or 19530),
                                 timeout=connect_timeout).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise MilvusError(f"cannot reach the Milvus server at {uri} ({reason}); is it "
                          "running?") from None
    pm = pymilvus_module()
    alias = f"contrahash-check-{uuid.uuid4().hex}"
    try:
        pm.connections.connect(alias, uri=str(uri), timeout=connect_timeout, **server_auth())
    except pm.MilvusException as exc:
        raise MilvusError(f"cannot reach the Milvus server at {uri} within "
                          f"{connect_timeout:g} s ({exc.message}); is it running?") from None
    finally:
        pm.connections.remove_connection(alias)


def parse_uri(uri: str) -> str | None:
    """The resolved ``.db`` path for Milvus Lite, or ``None`` for a network uri."""
    scheme = urlparse(uri).scheme.lower()
    if scheme in _NETWORK_SCHEMES:
        return None
    if not uri.endswith(".db"):
        raise MilvusError(
            f"Milvus uri {uri!r}: expected a local file path ending in .db (Milvus Lite) "
            "or http://host:port (a Milvus server)"
        )
    path = Path(uri).expanduser().absolute()
    if not path.parent.is_dir():
        raise MilvusError(f"Milvus Lite database {uri}: directory {path.parent} does not "
                          "exist")
    if not _LITE_FILE_RE.match(path.name):
        raise MilvusError(
            f"Milvus Lite database {uri}: the file name must be at most 36 characters of "
            "letters, digits, '.', '-' or '_' (a milvus-lite restriction)"
        )
    return str(path.resolve())

def connect(pm: Any, alias: str, uri: str, lite_path: str | None, timeout: float) -> None:
    """Open the pymilvus connection ``alias`` to ``uri`` (starting Milvus Lite on
    ``lite_path`` when it is not running in this process yet; pair with :func:`disconnect`)."""
    connections = pm.connections
    if lite_path is None:
        try:
            connections.connect(alias, uri=uri, timeout=timeout, **server_auth())
        except pm.MilvusException as exc:
            raise MilvusError(
                f"cannot reach the Milvus server at {uri} within {timeout:g} s "
                f"({exc.message}); is it running?"
            ) from None
        return
    check_milvus_lite()
    path = lite_path
    with _lite_lock, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        if lite_file_locked_elsewhere(path):
            raise MilvusError(
                f"Milvus Lite database {uri} is open in another process (Milvus "
                "Lite allows one process per .db file; close it there first)"
            )
        try:
            connections.connect(alias, uri=path, timeout=max(timeout, _LITE_START_TIMEOUT))
        except pm.MilvusException as exc:
            if path not in _lite_users:  # a server that started but did not answer
                from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

                if path in getattr(server_manager_instance, "_servers", {}):
                    server_manager_instance.release_server(path)
            raise MilvusError(
                f"cannot start Milvus Lite on {uri}: {exc.message} (is the file open "
                "in another process?)"
            ) from None
        _lite_users[path] = _lite_users.get(path, 0) + 1


def disconnect(pm: Any, alias: str, lite_path: str | None) -> None:
    """Close what :func:`connect` opened; the last user of an embedded ``.db`` in this
    process stops its server."""
    pm.connections.remove_connection(alias)
    if lite_path is None:
        return
    with _lite_lock:
        _lite_users[lite_path] -= 1
        if _lite_users[lite_path] == 0:
            del _lite_users[lite_path]
            from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

            server_manager_instance.release_server(lite_path)


def create_collection(pm: Any, alias: str, name: str, bits: int, index_type: str, nlist: int,
                      where: str) -> Any:
    """A new collection ``name`` for ``bits``-bit codes with its ``index_type`` index."""
    code_bytes = (bits + 7) // 8
    schema = pm.CollectionSchema(
        [pm.FieldSchema(PK, pm.DataType.INT64, is_primary=True, auto_id=False),
         pm.FieldSchema(VECTOR, pm.DataType.BINARY_VECTOR, dim=8 * code_bytes)],
        description=f"{_DESCRIPTION}{bits}",
    )
    coll = pm.Collection(name, schema, using=alias)
    params: dict[str, Any] = {"index_type": index_type, "metric_type": "HAMMING", "params": {}}
    if index_type == "BIN_IVF_FLAT":
        params["params"] = {"nlist": nlist}
    try:
        coll.create_index(VECTOR, params)
    except pm.MilvusException as exc:
        coll.drop()  # ours, just made: leave nothing half-built behind
        raise MilvusError(f"{where}: the server refused a {index_type} index: "
                          f"{exc.message}") from None
    return coll


def check_schema(pm: Any, coll: Any, bits: int, index_type: str, where: str) -> int | None:
    """Refuse an existing collection that does not hold ``bits``-bit contrahash codes under an
    ``index_type`` index; returns its ``nlist`` (``BIN_IVF_FLAT``) or None."""
    code_bytes = (bits + 7) // 8
    fields = {f.name: f for f in coll.schema.fields}
    pk, vec = fields.get(PK), fields.get(VECTOR)
    if (pk is None or not pk.is_primary or pk.dtype != pm.DataType.INT64
            or vec is None or vec.dtype != pm.DataType.BINARY_VECTOR):
        raise MilvusError(
            f"{where} is not a contrahash collection (it needs an INT64 primary "
            f"key {PK!r} and a BINARY_VECTOR field {VECTOR!r}); choose another name"
        )
    description = coll.schema.description or ""
    dim = int(vec.params.get("dim", 0))
    stored = int(description[len(_DESCRIPTION):]) if description.startswith(_DESCRIPTION) else dim
    if stored != bits:
        raise MilvusError(f"{where} holds {stored}-bit codes, but bits={bits} was given")
    if dim != 8 * code_bytes:
        raise MilvusError(f"{where}: vector dimension {dim} does not fit {bits}-bit codes "
                          f"(expected {8 * code_bytes})")
    index = next((i for i in coll.indexes if i.field_name == VECTOR), None)
    if index is None:
        raise MilvusError(f"{where} has no index on {VECTOR!r}")
    found = index.params.get("index_type")
    metric = index.params.get("metric_type")
    if metric != "HAMMING":
        raise MilvusError(f"{where}: index metric is {metric}, not HAMMING")
    if found != index_type:
        raise MilvusError(f"{where} has a {found} index, but index_type={index_type!r} was "
                          "given")
    if found == "BIN_IVF_FLAT":
        inner = index.params.get("params", {})
        nlist = inner.get("nlist", index.params.get("nlist"))
        return None if nlist is None else int(nlist)
    return None
