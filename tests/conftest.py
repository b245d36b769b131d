"""Fixtures shared by the whole test run.

* Milvus Lite (and any glog-based binary) writes its log files into one folder of this run's
  pytest temporary directory, not into /tmp's top level (its default).
* ``milvus_server``: one standalone Milvus server (the PyPI package ``milvus`` 2.3.5, extra
  ``milvus-server``) for the whole run, started when a test first asks for it, on 127.0.0.1,
  its files under the run's temporary directory, stopped by its pid at the end. Without the
  package the tests that use it skip, except under ``CI=true`` (``make`` installs the extra
  there), where they fail.

Plain helpers that several test files use (imported with ``from conftest import …``):
:func:`free_port`, :func:`ref_by_id` (the brute-force reference of every index backend) and
:func:`cli_commands` (every command of the ``contrahash`` program, by its words).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator

import numpy as np
import pytest

TEST_SERVER_SETTINGS = {"proxy.timeTickInterval": 50, "queryCoord.checkInterval": 200,
                        "queryCoord.distPullInterval": 100, "common.session.ttl": 8}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; a server binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ref_by_id(db: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over bool codes, ranked by (distance, id), padded like faiss.

    ``db`` and ``queries`` are bool arrays (n, bits), ``ids`` the external id of each row of
    ``db``; returns int32 distances and int64 ids of shape (len(queries), k), with
    ``PAD_DISTANCE`` and -1 where fewer than ``k`` items exist.
    """
    from contrahash.retrieval.index import PAD_DISTANCE

    d = (queries[:, None, :] != db[None, :, :]).sum(-1)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    dist = np.full((len(queries), k), PAD_DISTANCE, dtype=np.int32)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    dist[:, : order.shape[1]] = np.take_along_axis(d, order, 1)
    out[:, : order.shape[1]] = ids[order]
    return dist, out


def cli_commands() -> dict[str, object]:
    """Every leaf command of the ``contrahash`` program as click sees it, keyed by its words
    (``"train"``, ``"index build"``)."""
    import typer

    from contrahash.cli import app

    found: dict[str, object] = {}

    def walk(command: object, words: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            found[" ".join(words)] = command
            return
        for name, sub in subcommands.items():
            walk(sub, (*words, name))

    walk(typer.main.get_command(app), ())
    return found


def _missing(reason: str) -> None:
    """Skip a test that needs something absent, or fail it in CI (where it must be there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the milvus-server extra must be installed)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _glog_files_off_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Milvus Lite's glog files go to this run's temporary directory (GLOG_log_dir)."""
    logs = tmp_path_factory.mktemp("glog")
    before = os.environ.get("GLOG_log_dir")
    os.environ["GLOG_log_dir"] = str(logs)
    yield
    if before is None:
        os.environ.pop("GLOG_log_dir", None)
    else:
        os.environ["GLOG_log_dir"] = before


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A running :class:`contrahash.retrieval.milvus_server.LocalMilvusServer` (``.uri``, ``.pid``)."""
    try:
        import milvus  # noqa: F401 - the server package (extra milvus-server)
        import pymilvus  # noqa: F401
    except ImportError as exc:
        _missing(f"a Milvus server test needs pip install 'contrahash[milvus,milvus-server]' "
                 f"({exc})")
    from contrahash.retrieval.milvus_server import LocalMilvusServer, MilvusServerError

    base = tmp_path_factory.mktemp("milvus-server")
    # faster time ticks and load checks: a Strong read waits for the next tick (200 ms by
    # default), a load for the next check (1 s); after a restart, the collections are served
    # again once the killed process' etcd sessions expire (30 s by default). What the tests
    # check does not depend on these timings.
    server = LocalMilvusServer(base, kill_with_parent=True, settings=TEST_SERVER_SETTINGS)
    try:
        server.start()
    except MilvusServerError as exc:
        _missing(f"the Milvus server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()
        for bulky in ("bin", "data"):  # 250 MB of binaries; the logs and config stay
            shutil.rmtree(base / bulky, ignore_errors=True)
