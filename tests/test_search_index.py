"""Every index backend through the same cases: the :class:`SearchIndex` contract.

Backends: ``HammingIndex`` on faiss, numpy and torch (CPU); ``MilvusIndex`` on Milvus Lite (one
``.db`` for the module) and on the session's Milvus server (tests/conftest.py:
``milvus_server``). A backend whose dependency is missing is skipped with the reason. The
reference is independent of every backend: numpy popcount over unpacked bits, ranked by
(distance, insertion position) — faiss' ``IndexBinaryFlat`` order; ids here ascend with
insertion, as a collection adds them, so a backend ranking by (distance, id) must agree.
A new backend gets a parameter in ``BACKENDS`` (and a row in ``INDEX_BACKENDS``:
``test_every_registered_backend_is_in_this_suite`` checks it).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from contrahash.retrieval.backends import INDEX_BACKENDS, open_index
from contrahash.retrieval.hamming import faiss_module
from contrahash.retrieval.index import PAD_DISTANCE, HammingIndex, IndexFormatError, pack_codes
from contrahash.retrieval.search_index import SearchIndex

pytestmark = pytest.mark.timeout(300)
#: parameter → the INDEX_BACKENDS kind it exercises
BACKENDS = {"faiss": "faiss", "numpy": "faiss", "torch": "faiss", "milvus-lite": "milvus",
            "milvus-server": "milvus"}
_names = itertools.count()


def _milvus_lite_missing() -> str | None:
    try:
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"pip install 'contrahash[milvus]' ({exc})"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        try:
            import milvus_lite.server  # noqa: F401
        except ImportError as exc:
            return f"milvus-lite is not usable ({exc}): pip install 'contrahash[milvus]'"
    return None


@pytest.fixture(scope="module")
def lite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    missing = _milvus_lite_missing()
    if missing:
        pytest.skip(missing)
    return str(tmp_path_factory.mktemp("milvus-lite") / "suite.db")


@pytest.fixture(params=list(BACKENDS))
def make(request: pytest.FixtureRequest):
    """``make(bits)``: a new, empty index on this run's backend."""
    kind = request.param
    opened: list[SearchIndex] = []
    if kind in ("faiss", "numpy", "torch"):
        if kind == "faiss" and faiss_module() is None:
            pytest.skip("faiss is not installed (pip install faiss-cpu)")
        if kind == "torch":
            pytest.importorskip("torch", reason="the torch backend needs torch")

        def new(bits: int) -> SearchIndex:
            return HammingIndex(bits, backend=kind, device="cpu" if kind == "torch" else None)
    else:
        if kind == "milvus-server":
            missing = _milvus_lite_missing()  # pymilvus, for the client
            if missing:
                pytest.skip(missing)
            uri = request.getfixturevalue("milvus_server").uri
        else:
            uri = request.getfixturevalue("lite_uri")

        def new(bits: int) -> SearchIndex:
            from contrahash.retrieval.milvus import MilvusIndex

            return MilvusIndex(uri, bits, f"suite_{next(_names)}")

    def make_one(bits: int) -> SearchIndex:
        index = new(bits)
        opened.append(index)
        return index

    yield make_one
    for index in opened:
        index.close()


def reference(db: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over bool codes by numpy popcount, ranked by (distance, position), padded."""
    d = np.unpackbits(np.bitwise_xor(pack_codes(queries)[:, None, :],
                                     pack_codes(db)[None, :, :]), axis=2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.full((len(queries), k), PAD_DISTANCE, dtype=np.int32)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    dist[:, : order.shape[1]] = np.take_along_axis(d, order, 1)
    out[:, : order.shape[1]] = ids[order]
    return dist, out


def tie_heavy(rng: np.random.Generator, n: int, bits: int, protos: int = 4, flip: float = 0.05
              ) -> np.ndarray:
    centres = rng.random((protos, bits)) < 0.5
    return centres[rng.integers(0, protos, n)] ^ (rng.random((n, bits)) < flip)


def assert_same(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    assert ours[0].dtype == np.int32 and ours[1].dtype == np.int64
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


def test_every_registered_backend_is_in_this_suite():
    assert set(INDEX_BACKENDS) <= set(BACKENDS.values())


def test_it_is_a_search_index(make):
    assert isinstance(make(8), SearchIndex)


@pytest.mark.parametrize("bits", [12, 64])
def test_exact_distances_and_tie_order(make, bits):
    rng = np.random.default_rng(bits)
    db = tie_heavy(rng, 3000, bits) if bits == 12 else rng.random((3000, bits)) < 0.5
    queries = np.concatenate([db[:5], tie_heavy(rng, 20, bits)])
    ids = np.cumsum(rng.integers(1, 4, len(db)))  # ascending, not 0..n-1
    index = make(bits)
    index.add(db[:1000], ids=ids[:1000])
    index.add(np.where(db[1000:], 1, -1), ids=ids[1000:])  # another code convention
    assert len(index) == len(db)
    for k in (1, 10, 300):
        assert_same(index.search(np.where(queries, 1, -1), k), reference(db, ids, queries, k))


def test_empty_index(make):
    index = make(16)
    assert len(index) == 0
    d, i = index.search(np.ones((3, 16)), 4)
    assert d.shape == (3, 4) and (i == -1).all() and (d == PAD_DISTANCE).all()
    assert [len(ids) for _, ids in index.range_search(np.ones((2, 16)), 3)] == [0, 0]
    assert index.remove([1, 2]) == 0


@pytest.mark.parametrize("bits", [1, 13, 20])
def test_padding_bits_and_slots_past_the_count(make, bits):
    """Code lengths that are not a multiple of 8 (zero padding bits), and k > count."""
    rng = np.random.default_rng(100 + bits)
    db = rng.random((7, bits)) < 0.5
    index = make(bits)
    index.add(db, ids=np.arange(10, 17))
    d, i = index.search(db[:2], 12)
    assert_same((d, i), reference(db, np.arange(10, 17), db[:2], 12))
    assert (i[:, 7:] == -1).all() and (d[:, 7:] == PAD_DISTANCE).all()
    assert (d[:, 0] == 0).all()


def test_inputs_and_an_exact_count_after_each_add(make):
    rng = np.random.default_rng(6)
    codes = np.where(rng.random((50, 16)) < 0.5, 1, -1)
    index = make(16)
    index.add(codes[:20])  # ±1, ids 0..19
    assert len(index) == 20
    index.add(codes[20:30] > 0)  # bool, ids 20..29
    assert len(index) == 30
    index.add(np.packbits(codes[30:] > 0, axis=1), ids=np.arange(100, 120), packed=True)
    assert len(index) == 50
    ids = np.r_[np.arange(30), np.arange(100, 120)]
    assert_same(index.search(codes[[3, 35]], 60), reference(codes > 0, ids, codes[[3, 35]] > 0,
                                                             60))
    assert_same(index.search(np.where(codes[:4] > 0, 1, 0), 5), index.search(codes[:4], 5))
    assert_same(index.search(pack_codes(codes[:4] > 0), 5, packed=True),
                index.search(codes[:4], 5))


def test_wrong_inputs_are_refused(make):
    index = make(16)
    index.add(np.ones((3, 16)))
    with pytest.raises(IndexFormatError, match="12 bits but the index holds 16-bit"):
        index.search(np.ones((1, 12)), 1)
    with pytest.raises(IndexFormatError):
        index.add(np.ones((1, 17)))
    with pytest.raises(ValueError, match="k must"):
        index.search(np.ones((1, 16)), 0)
    with pytest.raises(ValueError, match="ids must be >= 0"):
        index.add(np.ones((1, 16)), ids=[-1])
    with pytest.raises(ValueError, match="radius must"):
        index.range_search(np.ones((1, 16)), -1)
    assert len(index) == 3


def test_removal(make):
    rng = np.random.default_rng(14)
    db = rng.random((2000, 32)) < 0.5
    ids = np.arange(2000, dtype=np.int64)
    index = make(32)
    index.add(db)
    gone = rng.choice(2000, 500, replace=False)
    assert index.remove(np.r_[gone, gone[:5], [5000, 7000]]) == 500  # repeats, unknown ids
    assert len(index) == 1500
    keep = np.setdiff1d(ids, gone)
    queries = np.concatenate([db[gone[:10]], db[keep[:10]], rng.random((5, 32)) < 0.5])
    for k in (1, 40):
        assert_same(index.search(queries, k), reference(db[keep], keep, queries, k))
    assert index.remove(gone[:3]) == 0  # already gone
    assert [len(i) for _, i in index.range_search(db[gone[:3]], 0)] == [0, 0, 0]


def test_range_search(make):
    rng = np.random.default_rng(2)
    bits = 20
    db, queries = tie_heavy(rng, 2000, bits, flip=0.15), tie_heavy(rng, 12, bits, flip=0.15)
    ids = np.arange(2000) + 5
    index = make(bits)
    index.add(db, ids=ids)
    dist = (queries[:, None, :] != db[None, :, :]).sum(-1)
    for radius in (0, 2, 5):
        results = index.range_search(queries, radius)
        assert len(results) == len(queries)
        for qi, (d, found) in enumerate(results):
            members = np.flatnonzero(dist[qi] <= radius)
            order = members[np.argsort(dist[qi, members], kind="stable")]
            assert d.dtype == np.int32 and found.dtype == np.int64
            np.testing.assert_array_equal(found, ids[order])
            np.testing.assert_array_equal(d, dist[qi, order])


def test_close_is_idempotent(make):
    index = make(8)
    index.add(np.ones((2, 8)))
    index.close()
    index.close()


def test_the_factory_opens_each_kind(tmp_path):
    """``open_index`` from a manifest record: faiss serves the collection's own codes as they
    are, milvus opens its collection ``<collection>_<bits>``; an unknown kind is refused
    naming the known ones."""
    from contrahash.retrieval.collection import CollectionError

    local = HammingIndex(8, backend="numpy")
    assert open_index({"kind": "faiss"}, 8, local) is local
    with pytest.raises(CollectionError, match="faiss, milvus"):
        open_index({"kind": "annoy"}, 8, local)
    if _milvus_lite_missing() is None:
        record = {"kind": "milvus", "uri": str(tmp_path / "f.db"), "collection": "photos"}
        with pytest.raises(ValueError, match="does not exist"):
            open_index(record, 8)  # a reader never creates the store
        index = open_index(record, 8, create=True)
        try:
            assert isinstance(index, SearchIndex) and index.bits == 8
            assert index.collection == "photos_8"
        finally:
            index.close()
