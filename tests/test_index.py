"""Packing, the exact Hamming kernels, HammingIndex on every backend, and the index file format.

This module imports torch *and* runs faiss searches in the same process on purpose: both bring
an OpenMP runtime, and the combination must neither crash nor hang.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrahash.retrieval import hamming
from contrahash.retrieval import index as index_module
from contrahash.retrieval.hamming import PackedDatabase, hamming_topk
from contrahash.retrieval.index import (
    PAD_DISTANCE,
    HammingIndex,
    IndexFormatError,
    pack_codes,
    unpack_codes,
)

HAS_FAISS = hamming.faiss_module() is not None
BACKENDS = ["numpy", "torch"] + (["faiss"] if HAS_FAISS else [])
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")


def ref_topk(q_bits: np.ndarray, db_bits: np.ndarray, k: int):
    d = (q_bits[:, None, :] != db_bits[None, :, :]).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def tie_heavy(rng, n, bits, n_protos=4, flip=0.1):
    protos = rng.integers(0, 2, (n_protos, bits)).astype(bool)
    return protos[rng.integers(0, n_protos, n)] ^ (rng.random((n, bits)) < flip)


# ----------------------------------------------------------------------------- packing


def test_pack_bit_order_and_conventions():
    bits = np.array([[1, 0, 0, 1, 1, 1, 0, 0, 1]], dtype=bool)
    want = np.array([[0b10011100, 0b10000000]], dtype=np.uint8)  # big-endian within a byte
    assert (pack_codes(bits) == want).all()
    assert (pack_codes(bits.astype(np.uint8)) == want).all()
    assert (pack_codes(np.where(bits, 1, -1)) == want).all()
    assert (pack_codes(np.where(bits, 1.0, -1.0).astype(np.float32)) == want).all()
    assert (pack_codes(torch.from_numpy(np.where(bits, 1, -1))) == want).all()
    assert unpack_codes(want, 9).tolist() == np.where(bits, 1, -1).tolist()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 20), bits=st.integers(1, 70), seed=st.integers(0, 1000))
def test_pack_unpack_roundtrip(n, bits, seed):
    codes = np.where(np.random.default_rng(seed).random((n, bits)) < 0.5, 1, -1).astype(np.int8)
    packed = pack_codes(codes)
    assert packed.shape == (n, (bits + 7) // 8) and packed.dtype == np.uint8
    assert (unpack_codes(packed, bits) == codes).all()


def test_pack_rejects_other_values():
    with pytest.raises(ValueError, match="±1, \\{0,1\\} or bool"):
        pack_codes(np.array([[1, 0, -1]]))
    with pytest.raises(ValueError, match="±1, \\{0,1\\} or bool"):
        pack_codes(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        pack_codes(np.array([1, -1]))
    with pytest.raises(ValueError, match="padding bit"):
        unpack_codes(np.array([[0xFF]], dtype=np.uint8), 5)
    with pytest.raises(ValueError, match="uint8"):
        unpack_codes(np.array([[1, 2]], dtype=np.uint8), 5)


# ----------------------------------------------------------------------------- kernels


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 140), n=st.integers(1, 300), nq=st.integers(1, 9),
       seed=st.integers(0, 10_000), data=st.data())
def test_topk_kernels_match_stable_sort(bits, n, nq, seed, data):
    rng = np.random.default_rng(seed)
    db, q = tie_heavy(rng, n, bits), tie_heavy(rng, nq, bits)
    k = data.draw(st.integers(1, n))
    want_d, want_p = ref_topk(q, db, k)
    database = PackedDatabase(pack_codes(db), bits)
    for method in ("select", "sort"):
        for use_faiss in (False, True) if HAS_FAISS else (False,):
            for threads in (1, 3):
                d, p = hamming_topk(pack_codes(q), database, k, method=method,
                                    use_faiss=use_faiss, threads=threads)
                assert (p == want_p).all() and (d == want_d).all(), (method, use_faiss)
    qs, ds = hamming.torch_signed(q, "cpu"), hamming.torch_signed(db, "cpu")
    d, p = hamming.torch_topk(qs, ds, k, max_elements=max(1, n * 2))
    assert (p.numpy() == want_p).all() and (d.numpy() == want_d).all()


def test_select_kernel_on_clustered_data_with_huge_tie_groups():
    rng = np.random.default_rng(0)
    for bits in (4, 16, 64):
        db, q = tie_heavy(rng, 20_000, bits, n_protos=3, flip=0.02), tie_heavy(rng, 70, bits)
        database = PackedDatabase(pack_codes(db), bits)
        for k in (1, 999, 5000):
            d, p = hamming_topk(pack_codes(q), database, k, method="select")
            want_d, want_p = ref_topk(q, db, k)
            assert (p == want_p).all() and (d == want_d).all()


@needs_faiss
def test_faiss_orders_ties_by_insertion():
    assert hamming.faiss_orders_ties_by_position()


# ----------------------------------------------------------------------------- the index


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_pads_when_k_exceeds_size_and_maps_ids(backend):
    index = HammingIndex(8, backend=backend, device="cpu" if backend == "torch" else None)
    d, i = index.search(np.ones((2, 8)), 3)
    assert (i == -1).all() and (d == PAD_DISTANCE).all()
    index.add(np.array([[1] * 8, [-1] * 8, [1] * 7 + [-1]]), ids=[30, 10, 20])
    d, i = index.search(np.ones((1, 8)), 5)
    assert i.tolist() == [[30, 20, 10, -1, -1]]
    assert d.tolist() == [[0, 1, 8, PAD_DISTANCE, PAD_DISTANCE]]
    assert len(index) == 3


def test_backends_agree_and_torch_faiss_share_a_process():
    rng = np.random.default_rng(3)
    db, q = tie_heavy(rng, 5000, 32), tie_heavy(rng, 40, 32)
    results = []
    for backend in BACKENDS:
        index = HammingIndex(32, backend=backend, device="cpu" if backend == "torch" else None)
        index.add(db)
        results.append(index.search(q, 50))
        torch.ones(64, 64) @ torch.ones(64, 64)  # torch's OpenMP pool alongside faiss'
    for d, i in results[1:]:
        assert (d == results[0][0]).all() and (i == results[0][1]).all()


def test_wrong_arguments():
    """The shared refusals (code length, k, negative ids) are in tests/test_search_index.py."""
    index = HammingIndex(16, backend="numpy")
    with pytest.raises(ValueError, match="ids must be an integer array"):
        index.add(np.ones((2, 16)), ids=[1])
    with pytest.raises(ValueError, match="backend"):
        HammingIndex(16, backend="annoy")
    with pytest.raises(ValueError, match="bits"):
        HammingIndex(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_numpy():
    rng = np.random.default_rng(5)
    db, q = tie_heavy(rng, 50_000, 64), tie_heavy(rng, 300, 64)
    cpu = HammingIndex(64, backend="numpy")
    gpu = HammingIndex(64, backend="torch", device="cuda")
    for index in (cpu, gpu):
        index.add(db)
    for k in (1, 100, 2000):
        assert all((x == y).all() for x, y in zip(cpu.search(q, k), gpu.search(q, k),
                                                  strict=True))


# ----------------------------------------------------------------------------- file format


def saved(tmp_path, n=50, bits=21):
    rng = np.random.default_rng(6)
    index = HammingIndex(bits, backend="numpy")
    index.add(rng.integers(0, 2, (n, bits)), ids=rng.permutation(10 * n)[:n])
    path = index.save(tmp_path / "codes.chidx")
    return index, path


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_roundtrip(tmp_path, backend):
    index, path = saved(tmp_path)
    loaded = HammingIndex.load(path, backend=backend,
                               device="cpu" if backend == "torch" else None)
    assert loaded.bits == index.bits and len(loaded) == len(index)
    assert (loaded.packed_codes == index.packed_codes).all() and (loaded.ids == index.ids).all()
    q = np.random.default_rng(7).integers(0, 2, (4, index.bits))
    assert all((x == y).all() for x, y in zip(index.search(q, 9), loaded.search(q, 9),
                                              strict=True))
    assert [p.name for p in tmp_path.iterdir()] == ["codes.chidx"]  # no temp file left


def test_empty_index_roundtrip(tmp_path):
    path = HammingIndex(7).save(tmp_path / "empty.idx")
    assert len(HammingIndex.load(path)) == 0


def _rewrite(path, data):
    with open(path, "wb") as fh:
        fh.write(data)


def test_load_rejects_damaged_files(tmp_path):
    _, path = saved(tmp_path)
    data = path.read_bytes()
    cases = {
        "truncated": data[:-10],
        "trailing": data + b"\0",
        "not a contrahash index": b"PK\x03\x04" + data[4:],
        "version 9": data[:6] + (9).to_bytes(2, "little") + data[8:],
        "checksum mismatch": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "too short": data[:3],
    }
    for expected, content in cases.items():
        bad = tmp_path / f"bad-{len(content)}.idx"
        _rewrite(bad, content)
        with pytest.raises(IndexFormatError) as info:
            HammingIndex.load(bad)
        message = str(info.value)
        assert str(bad) in message
        assert expected.split()[0] in message or expected in message, (expected, message)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HammingIndex.load(tmp_path / "missing.idx")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    index, path = saved(tmp_path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["codes.chidx"]


@needs_faiss
def test_multihash_range_search_is_exact(monkeypatch):
    monkeypatch.setattr(index_module, "_MULTIHASH_MIN_SIZE", 10)
    rng = np.random.default_rng(8)
    db = tie_heavy(rng, 3000, 64, n_protos=20, flip=0.03)
    q = tie_heavy(rng, 30, 64, n_protos=20, flip=0.03)
    multi, flat = HammingIndex(64, backend="faiss"), HammingIndex(64, backend="numpy")
    for index in (multi, flat):
        index.add(db)
    for radius in (0, 2, 3, 4, 7):
        for (d1, i1), (d2, i2) in zip(multi.range_search(q, radius), flat.range_search(q, radius),
                                      strict=True):
            assert (d1 == d2).all() and (i1 == i2).all()
    assert any(key.startswith("multihash") for key in multi._cache)
