"""Milvus-only cases on Milvus Lite and on a real standalone Milvus server (the cases every
backend shares — empty index, padding, removal, range search — are in test_search_index.py).

References are independent of Milvus: faiss' ``IndexBinaryFlat`` (ranks by (distance,
insertion position), the order MilvusIndex reproduces when ids follow insertion order) and a
brute-force (distance, id) ranking over bool codes. ``lite`` runs on one embedded ``.db`` for
the module; ``server`` on the session's Milvus server (tests/conftest.py: ``milvus_server``,
skipped without the ``milvus-server`` extra except under CI=true).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from conftest import ref_by_id

pytest.importorskip("pymilvus", reason="MilvusIndex needs pip install 'contrahash[milvus]'")
faiss = pytest.importorskip("faiss", reason="the reference is faiss' IndexBinaryFlat")

from contrahash.retrieval.milvus import MilvusError, MilvusIndex  # noqa: E402

pytestmark = pytest.mark.timeout(300)
_names = itertools.count()


def _lite_usable() -> bool:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        try:
            import milvus_lite.server  # noqa: F401
        except ImportError:
            return False
    return True


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not _lite_usable():
        pytest.skip("milvus-lite is not usable: pip install 'contrahash[milvus]'")
    return str(tmp_path_factory.mktemp("milvus-lite") / "backends.db")


@pytest.fixture(params=["lite", "server"])
def open_index(request: pytest.FixtureRequest):
    """``open_index(bits, **kwargs)``: a fresh collection on the backend of this run."""
    kind = request.param
    uri = (request.getfixturevalue("lite_uri") if kind == "lite"
           else request.getfixturevalue("milvus_server").uri)
    opened: list[MilvusIndex] = []

    def make(bits: int, **kwargs: object) -> MilvusIndex:
        index = MilvusIndex(uri, bits, f"{kind}_{next(_names)}", **kwargs)
        opened.append(index)
        return index

    make.kind = kind  # type: ignore[attr-defined]
    yield make
    for index in opened:
        index.close()


def faiss_flat(packed: np.ndarray) -> object:
    index = faiss.IndexBinaryFlat(packed.shape[1] * 8)
    index.add(packed)
    return index


def assert_same(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    assert ours[0].dtype == np.int32 and ours[1].dtype == np.int64
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


def test_exact_distances_and_faiss_tie_order(open_index):
    """Random codes and tie-heavy codes (groups far larger than 2k + 64 at the k-th distance)."""
    rng = np.random.default_rng(11)
    random_db = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    protos = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    tied_db = protos[rng.integers(0, 6, 6000)]
    for db, queries in ((random_db, np.concatenate([random_db[:5], rng.integers(
            0, 256, (45, 8), dtype=np.uint8)])), (tied_db, np.concatenate([protos, rng.integers(
                0, 256, (4, 8), dtype=np.uint8)]))):
        index = open_index(64)
        index.add(db, packed=True)
        assert len(index) == len(db)
        flat = faiss_flat(db)
        for k in (10, 300):
            assert_same(index.search(queries, k, packed=True), flat.search(queries, k))


def test_ties_broken_by_id_not_insertion_order(open_index):
    rng = np.random.default_rng(12)
    centres = rng.random((4, 20)) < 0.5
    db = centres[rng.integers(0, 4, 1500)] ^ (rng.random((1500, 20)) < 0.03)
    ids = rng.permutation(100_000)[:1500]
    index = open_index(20)
    index.add(db[:700], ids=ids[:700])
    index.add(db[700:], ids=ids[700:])
    queries = np.concatenate([centres, rng.random((4, 20)) < 0.5])
    for k in (1, 50, 400):
        assert_same(index.search(queries, k), ref_by_id(db, ids, queries, k))


def test_ids_are_unique(open_index):
    """Milvus itself stores a second row for a repeated primary key; MilvusIndex refuses it."""
    rng = np.random.default_rng(15)
    codes = rng.random((20, 16)) < 0.5
    index = open_index(16)
    index.add(codes[:10])  # ids 0..9
    with pytest.raises(MilvusError, match=r"already in the collection") as info:
        index.add(codes[10:13], ids=[20, 3, 21])
    assert "[3]" in str(info.value)
    with pytest.raises(MilvusError, match=r"repeat within one add"):
        index.add(codes[10:13], ids=[30, 31, 30])
    assert index.remove([3]) == 1
    with pytest.raises(MilvusError, match=r"already in the collection"):
        index.add(codes[10:11])  # the default id (the count, 9) is taken after a removal
    assert len(index) == 9  # nothing went in
    index.add(codes[10:], ids=np.arange(100, 110))
    index.add(codes[3:4], ids=[3])  # a removed id may come back
    d, i = index.search(codes, 20)
    assert sorted(i[0].tolist()) == [*range(10), *range(100, 110)]
    assert_same((d, i), ref_by_id(codes, np.r_[np.arange(10), np.arange(100, 110)], codes, 20))
