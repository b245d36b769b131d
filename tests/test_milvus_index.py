"""MilvusIndex (contrahash.retrieval.milvus) against faiss' IndexBinaryFlat and HammingIndex(numpy).

Needs the ``milvus`` extra (pymilvus 2.5, milvus-lite 2.5.1): skipped without it. Every test
runs an embedded Milvus Lite server on a ``.db`` file under a temporary directory; the network
test starts milvus-lite's server binary on a free 127.0.0.1 port and stops it at the end.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import free_port, ref_by_id

pytest.importorskip("pymilvus", reason="MilvusIndex needs pip install 'contrahash[milvus]'")
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    try:
        from milvus_lite.server import Server
    except ImportError as _exc:  # missing, or setuptools >= 82 (no pkg_resources)
        pytest.skip(f"milvus-lite is not usable ({_exc}); pip install 'contrahash[milvus]'",
                    allow_module_level=True)

faiss = pytest.importorskip("faiss", reason="the reference is faiss' IndexBinaryFlat")

from contrahash.retrieval import milvus as milvus_module  # noqa: E402
from contrahash.retrieval import milvus_connect  # noqa: E402
from contrahash.retrieval.milvus import MilvusError, MilvusIndex, MilvusNotInstalledError  # noqa: E402

pytestmark = pytest.mark.timeout(300)
N_BIG = 100_000


def faiss_flat(packed: np.ndarray) -> object:
    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    return index


def assert_same(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    d, i = ours
    d_ref, i_ref = ref
    assert d.dtype == np.int32 and i.dtype == np.int64
    np.testing.assert_array_equal(d, d_ref)
    np.testing.assert_array_equal(i, i_ref)


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory: pytest.TempPathFactory):
    """One embedded database for the collections of several tests (one server start)."""
    path = str(tmp_path_factory.mktemp("milvus") / "shared.db")
    opened: list[MilvusIndex] = []

    def open_index(bits: int, collection: str, **kwargs: object) -> MilvusIndex:
        index = MilvusIndex(path, bits, collection, **kwargs)
        opened.append(index)
        return index

    yield open_index
    for index in opened:
        index.close()


def random_packed(rng: np.random.Generator, n: int, nbytes: int = 8) -> np.ndarray:
    return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)


# ----------------------------------------------------------------------------- vs faiss


@pytest.mark.parametrize("kind", ["random", "few-codes", "huge-ties"])
def test_identical_to_faiss_on_100k_codes(shared_db, kind: str, monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []  # which tie-completion steps ran (module docstring: steps 2 and 3)
    raw, walk = MilvusIndex._raw_search, MilvusIndex._smallest_ids_at

    def spy_raw(self, q, limit, params, expr=None):
        calls.append("range" if "radius" in params else "search")
        return raw(self, q, limit, params, expr)

    def spy_walk(self, *args):
        calls.append("walk")
        return walk(self, *args)

    monkeypatch.setattr(MilvusIndex, "_raw_search", spy_raw)
    monkeypatch.setattr(MilvusIndex, "_smallest_ids_at", spy_walk)
    rng = np.random.default_rng({"random": 1, "few-codes": 2, "huge-ties": 3}[kind])
    if kind == "random":
        db = random_packed(rng, N_BIG)
        queries = random_packed(rng, 200)
    else:  # 12 or 3 distinct codes: tie groups of ~8,000 or ~33,000 items (> Milvus' 16384)
        protos = random_packed(rng, 12 if kind == "few-codes" else 3)
        db = protos[rng.integers(0, len(protos), N_BIG)]
        queries = np.concatenate([protos, random_packed(rng, 20)])
    index = shared_db(64, kind.replace("-", "_"))
    index.add(db, packed=True)
    assert len(index) == N_BIG
    flat = faiss_flat(db)
    for k in (10, 1000):
        q = queries if k == 10 else queries[:60]
        assert_same(index.search(q, k, packed=True), flat.search(q, k))
    if kind != "random":
        assert "range" in calls
    if kind == "huge-ties":
        assert "walk" in calls


def test_windowed_tie_walk_and_batching(shared_db, monkeypatch: pytest.MonkeyPatch):
    """Tiny caps force every path: id windows, several insert and search requests."""
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 40)
    monkeypatch.setattr(milvus_module, "RESULT_HITS", 100)
    monkeypatch.setattr(milvus_module, "INSERT_ROWS", 333)
    rng = np.random.default_rng(4)
    protos = rng.random((5, 16)) < 0.5
    db = protos[rng.integers(0, 5, 3000)] ^ (rng.random((3000, 16)) < 0.02)
    ids = rng.permutation(10_000)[:3000]  # ties by id, not by insertion order
    index = shared_db(16, "tiny_caps")
    index.add(db, ids=ids)
    queries = np.concatenate([protos, rng.random((7, 16)) < 0.5])
    for k in (1, 7, 40):
        assert_same(index.search(queries, k), ref_by_id(db, ids, queries, k))
    with pytest.raises(MilvusError, match="top-k cap"):
        index.search(queries, 41)


def test_range_search_past_the_top_k_cap(shared_db, monkeypatch: pytest.MonkeyPatch):
    """Results and tie groups larger than the (patched) cap are read distance by distance and
    in id windows: complete, ranked by (distance, id)."""
    monkeypatch.setattr(milvus_module, "MAX_TOPK", 40)
    rng = np.random.default_rng(9)
    protos = rng.random((3, 16)) < 0.5
    db = protos[rng.integers(0, 3, 600)] ^ (rng.random((600, 16)) < 0.03)
    ids = rng.permutation(5000)[:600]
    index = shared_db(16, "range_caps")
    index.add(db, ids=ids)
    queries = np.concatenate([protos, rng.random((3, 16)) < 0.5])
    dist = (queries[:, None, :] != db[None, :, :]).sum(-1)
    for radius in (0, 1, 3):
        for qi, (d, found) in enumerate(index.range_search(queries, radius)):
            members = np.flatnonzero(dist[qi] <= radius)
            order = members[np.lexsort((ids[members], dist[qi, members]))]
            np.testing.assert_array_equal(found, ids[order])
            np.testing.assert_array_equal(d, dist[qi, order])


_example = iter(range(10**6))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 300), bits=st.integers(1, 20), protos=st.integers(1, 5),
       k=st.integers(1, 40), extra_cap=st.integers(0, 30), seed=st.integers(0, 2**32 - 1))
def test_random_tie_structures_match_hamming_index(shared_db, n, bits, protos, k, extra_cap,
                                                   seed):
    """Small caps (Milvus' top-k cap patched down), tie-heavy codes, shuffled ids."""
    rng = np.random.default_rng(seed)
    centres = rng.random((protos, bits)) < 0.5
    db = centres[rng.integers(0, protos, n)] ^ (rng.random((n, bits)) < 0.05)
    queries = np.concatenate([centres, rng.random((3, bits)) < 0.5])
    ids = rng.permutation(3 * n)[:n]  # ties by id, not by insertion order
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(milvus_module, "MAX_TOPK", min(k, n) + extra_cap)
        index = shared_db(bits, f"prop_{next(_example)}")
        index.add(db, ids=ids)
        assert_same(index.search(queries, k), ref_by_id(db, ids, queries, k))


def test_public_search_path_matches(shared_db):
    rng = np.random.default_rng(5)
    db = random_packed(rng, 5000, 4)
    index = shared_db(32, "public_path")
    index.add(db, packed=True)
    queries = np.concatenate([db[:5], random_packed(rng, 20, 4)])
    fast = index.search(queries, 50, packed=True)
    index._fast_search = False  # pymilvus' public search (slow hit objects)
    assert_same(index.search(queries, 50, packed=True), fast)
    assert_same(fast, faiss_flat(db).search(queries, 50))


# ----------------------------------------------------------------------------- API


# ----------------------------------------------------------------------------- persistence


def test_persistence_and_one_process_per_file(tmp_path):
    path = str(tmp_path / "persist.db")
    rng = np.random.default_rng(7)
    db = random_packed(rng, 20_000)
    queries = random_packed(rng, 30)
    with MilvusIndex(path, 64, "codes") as index:
        index.add(db[:15_000], packed=True)
        index.add(db[15_000:], packed=True)
        before = index.search(queries, 100, packed=True)
        # while this process holds the file, another process gets a clear error
        script = textwrap.dedent(f"""
            from contrahash.retrieval.milvus import MilvusError, MilvusIndex
            try:
                MilvusIndex({path!r}, 64, "codes")
            except MilvusError as exc:
                print("ERROR", exc)
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120)
        assert "open in another process" in out.stdout and "persist.db" in out.stdout, out
    # closed: reopen here, then in another process (the file really holds the data)
    with MilvusIndex(path, 64, "codes", create=False) as index:
        assert len(index) == 20_000
        assert_same(index.search(queries, 100, packed=True), before)
    assert_same(before, faiss_flat(db).search(queries, 100))
    np.save(tmp_path / "q.npy", queries)
    script = textwrap.dedent(f"""
        import numpy as np
        from contrahash.retrieval.milvus import MilvusIndex
        with MilvusIndex({path!r}, 64, "codes", create=False) as index:
            d, i = index.search(np.load({str(tmp_path / "q.npy")!r}), 100, packed=True)
            np.save({str(tmp_path / "i.npy")!r}, i)
            print("COUNT", len(index))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert "COUNT 20000" in out.stdout, out
    np.testing.assert_array_equal(np.load(tmp_path / "i.npy"), before[1])


def test_collection_errors(tmp_path):
    path = str(tmp_path / "errors.db")
    with MilvusIndex(path, 64, "c64") as index:
        index.add(np.zeros((3, 64), dtype=bool))
    with MilvusIndex(path, 60, "c60"):
        pass
    with pytest.raises(MilvusError, match=r"holds 64-bit codes, but bits=60") as info:
        MilvusIndex(path, 60, "c64")
    assert "'c64'" in str(info.value) and "errors.db" in str(info.value)
    with pytest.raises(MilvusError, match=r"holds 60-bit codes, but bits=64"):  # same dim 64
        MilvusIndex(path, 64, "c60")
    with pytest.raises(MilvusError, match="does not exist"):
        MilvusIndex(path, 64, "missing", create=False)
    with pytest.raises(MilvusError, match="supports only the BIN_FLAT index"):
        MilvusIndex(path, 64, "ivf", index_type="BIN_IVF_FLAT")
    with pytest.raises(MilvusError, match="index_type must be"):
        MilvusIndex(path, 64, "x", index_type="HNSW")
    with pytest.raises(MilvusError, match="not valid for Milvus"):
        MilvusIndex(path, 64, "bad name")
    with pytest.raises(MilvusError, match=r"ending in \.db"):
        MilvusIndex(str(tmp_path / "codes.sqlite"), 64)
    with pytest.raises(MilvusError, match="does not exist"):
        MilvusIndex(str(tmp_path / "nowhere" / "x.db"), 64)
    with MilvusIndex(path, 64, "c64") as index:  # the failures left the file usable
        assert len(index) == 3


def test_pymilvus_missing(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus -> ImportError
    with pytest.raises(MilvusNotInstalledError, match=r"contrahash\[milvus\]"):
        MilvusIndex(str(tmp_path / "x.db"), 64)


# ----------------------------------------------------------------------------- network


def test_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(MilvusError, match="cannot reach the Milvus server") as info:
        MilvusIndex(uri, 64, connect_timeout=1.0)
    assert uri in str(info.value)
    assert time.perf_counter() - start < 10


@pytest.fixture
def milvus_server(tmp_path):
    """milvus-lite's server binary listening on a free 127.0.0.1 port (stopped afterwards)."""
    port = free_port()
    server = Server(str(tmp_path / "server.db"), f"127.0.0.1:{port}")
    assert server.init() and server.start(), "milvus-lite server did not start"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server._p.poll() is not None:
                server.stop()
                pytest.fail("milvus-lite server did not listen within 60 s")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    server._p.terminate()  # in address mode it ignores its lock: stop() would wait 2 s, then kill
    server._p.wait(timeout=10)
    server.stop()


def test_network_server(milvus_server: str):
    rng = np.random.default_rng(8)
    db = random_packed(rng, 20_000)
    queries = np.concatenate([db[:10], random_packed(rng, 40)])
    with MilvusIndex(milvus_server, 64, "net") as index:
        index.add(db, packed=True)
        assert len(index) == 20_000
        got = index.search(queries, 30, packed=True)
    assert_same(got, faiss_flat(db).search(queries, 30))
    with MilvusIndex(milvus_server, 64, "net", create=False) as index:  # reconnect
        assert_same(index.search(queries, 30, packed=True), got)
    # milvus-lite's server is "local mode" as well: the server itself refuses BIN_IVF_FLAT
    with pytest.raises(MilvusError, match="refused a BIN_IVF_FLAT index"):
        MilvusIndex(milvus_server, 64, "ivf", index_type="BIN_IVF_FLAT")
    with MilvusIndex(milvus_server, 64, "net") as index:
        assert len(index) == 20_000


def test_tests_do_not_leak_servers():
    """Every index the tests closed released its embedded server (module-scoped ones aside)."""
    assert all(path.endswith("shared.db") for path in milvus_connect._lite_users), (
        milvus_connect._lite_users)
