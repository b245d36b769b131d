"""Every source format, bad files and structural errors, on tiny fixtures made in tmp_path."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrahash.data import (
    DataError,
    LazyImages,
    TensorImages,
    decode_image,
    load_source,
)
from contrahash.data import packed as packed_mod

RNG = np.random.default_rng(0)


def _rgb(h=10, w=10, seed=None):
    rng = RNG if seed is None else np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def _save(path: Path, arr_or_img, fmt=None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, format=fmt, **kw)
    return path


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_source(*args, **kwargs)


# --- image folders --------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path):
    """ROOT/<class>/: good RGB/gray/RGBA/palette/16-bit images and four bad files."""
    root = tmp_path / "messy"
    _save(root / "cat" / "a.png", _rgb())
    _save(root / "cat" / "b.jpg", _rgb(), quality=90)
    _save(root / "cat" / "gray.png", Image.fromarray(np.full((10, 10), 50, np.uint8), "L"))
    rgba = np.dstack([_rgb(), np.full((10, 10), 128, np.uint8)])
    _save(root / "dog" / "rgba.png", Image.fromarray(rgba, "RGBA"))
    _save(root / "dog" / "pal.png", Image.fromarray(_rgb()).convert("P"))
    sixteen = np.full((10, 10), 257 * 200, dtype=np.uint16)
    _save(root / "dog" / "deep.png", Image.fromarray(sixteen))
    (root / "dog" / "zero.jpg").write_bytes(b"")
    (root / "dog" / "notes.txt").write_text("this is not an image\n")
    (root / "cat" / "corrupt.jpg").write_bytes(os.urandom(300))
    good = (root / "cat" / "b.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / ".DS_Store").write_bytes(b"hidden files are ignored")
    (root / "cat" / "Thumbs.db").write_bytes(b"system files are ignored")
    (root / "README.md").write_text("files in ROOT have no class")
    return root


def test_folder_skips_bad_files_and_converts_modes(messy_folder):
    with pytest.warns(UserWarning, match="skipped 5 of 11"):
        ds = load_source(messy_folder, labels="folders")
    assert isinstance(ds.images, TensorImages)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds) == 6 and ds.n_skipped == 5
    assert {Path(p).name for p, _ in ds.skipped} == {
        "zero.jpg",
        "notes.txt",
        "corrupt.jpg",
        "truncated.jpg",
        "README.md",
    }
    reasons = dict((Path(p).name, r) for p, r in ds.skipped)
    assert "empty" in reasons["zero.jpg"]
    assert "not in a class folder" in reasons["README.md"]
    assert ds.images.image_size == (10, 10)  # all equal sizes keep their size
    imgs = ds.images[:]
    assert imgs.dtype == torch.uint8 and imgs.shape == (6, 10, 10, 3)
    names = [Path(p).name for p in ds.paths]
    assert (imgs[names.index("gray.png")] == 50).all()
    assert (imgs[names.index("deep.png")] == 200).all()  # 16-bit 257*200 -> 200
    assert ds.labels.tolist().count([1, 0]) == 3 and ds.single_label() is not None
    assert ds.groups is None


def test_folder_with_one_percent_corrupt_reports_exact_count(tmp_path):
    root = tmp_path / "hundreds"
    for i in range(200):
        cls = f"class{i % 4}"
        if i in (17, 151):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{i:03d}.jpg").write_bytes(b"\xff\xd8\xff garbage" + os.urandom(64))
        else:
            _save(root / cls / f"{i:03d}.png", _rgb(6, 6))
    with pytest.warns(UserWarning, match="skipped 2 of 200"):
        ds = load_source(root, labels="folders")
    assert len(ds) == 198 and ds.n_skipped == 2
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["017.jpg", "151.jpg"]
    with pytest.warns(UserWarning, match="skipped 2 of 200"):
        lazy = load_source(root, lazy=True, store_size=6, labels="folders")
    assert isinstance(lazy.images, LazyImages) and len(lazy) == 198
    assert torch.equal(lazy.images[[0, 5, 197]], ds.images[[0, 5, 197]])


def test_mixed_sizes_resize_to_store_size(tmp_path):
    root = tmp_path / "mixed"
    _save(root / "a" / "1.png", _rgb(10, 20))
    _save(root / "a" / "2.png", _rgb(30, 12))
    _save(root / "b" / "3.jpg", _rgb(16, 16))
    ds = load_source(root, store_size=8)
    assert ds.images.image_size == (8, 8) and ds.images[:].shape == (3, 8, 8, 3)
    default = load_source(root)
    assert default.images.image_size == (256, 256)
    assert ds.fingerprint != default.fingerprint  # stored pixels differ
    lazy = load_source(root, store_size=8, lazy=True)
    assert torch.equal(lazy.images[:], ds.images[:])


def test_split_layout_keeps_groups(tmp_path):
    root = tmp_path / "split"
    for split, classes, n in (("train", ("ant", "bee"), 3), ("test", ("bee", "cow"), 2)):
        for cls in classes:
            for i in range(n):
                _save(root / split / cls / f"{i}.png", _rgb(4, 4))
    ds = load_source(root, labels="folders")
    assert ds.class_names == ["ant", "bee", "cow"]
    assert set(ds.groups) == {"train", "test"}
    assert int(ds.groups["train"].sum()) == 6 and int(ds.groups["test"].sum()) == 4
    assert ds.labels[ds.groups["test"]].sum(axis=0).tolist() == [0, 2, 2]


def test_class_named_like_a_split_with_files_is_a_class(tmp_path):
    root = tmp_path / "flat"
    _save(root / "train" / "x.png", _rgb(4, 4))  # files directly inside: a class, not a split
    _save(root / "test" / "y.png", _rgb(4, 4))
    ds = load_source(root, labels="folders")
    assert ds.class_names == ["test", "train"] and ds.groups is None


def test_folder_structural_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_source(tmp_path / "empty")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="empty dataset"):
        load_source(tmp_path / "hollow", labels="folders")
    with pytest.raises(DataError, match="no images in the folder or its sub-folders"):
        load_source(tmp_path / "hollow")
    bad = tmp_path / "allbad" / "a"
    bad.mkdir(parents=True)
    (bad / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 files"):
        _quiet_load(tmp_path / "allbad")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_source(tmp_path / "data.csv")


def test_fingerprint_is_stable_and_content_sensitive(tmp_path):
    root = tmp_path / "fp"
    for i in range(3):
        _save(root / "a" / f"{i}.png", _rgb(5, 5))
    a, b = load_source(root), load_source(root)
    assert a.fingerprint == b.fingerprint
    _save(root / "a" / "3.png", _rgb(5, 5))
    assert load_source(root).fingerprint != a.fingerprint


# --- list files -----------------------------------------------------------------------------


def _list_fixture(tmp_path, lines, classes=None):
    images = tmp_path / "imgs"
    for name in ("x.jpg", "y.jpg", "z.png"):
        _save(images / name, _rgb(8, 8))
    lst = tmp_path / "lists" / "database.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(lines) + "\n")
    if classes is not None:
        (lst.parent / "classes.txt").write_text("\n".join(classes) + "\n")
    return lst, images


def test_list_file_loads_multi_hot(tmp_path):
    lst, images = _list_fixture(
        tmp_path,
        ["# comment", "x.jpg 1 0 1", "", "y.jpg 0 1 0", "z.png 0 0 0", "missing.jpg 1 1 1"],
        classes=["sky", "water", "person"],
    )
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        ds = load_source(lst, image_root=images)
    assert ds.class_names == ["sky", "water", "person"]
    assert ds.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert ds.single_label() is None
    assert ds.skipped[0][1] == "file not found"
    assert ds.name == "database" and ds.images.image_size == (8, 8)


def test_list_file_default_root_and_names(tmp_path):
    images = tmp_path / "flat"
    _save(images / "sub" / "a.png", _rgb(4, 4))
    lst = images / "list.txt"
    lst.write_text("sub/a.png 0 1\n")
    ds = load_source(lst)
    assert ds.class_names == ["c0", "c1"] and len(ds) == 1
    ds = load_source(lst, class_names=["left", "right"])
    assert ds.class_names == ["left", "right"]


def test_list_file_wrong_label_count_names_line(tmp_path):
    lst, images = _list_fixture(tmp_path, ["x.jpg 1 0 1", "y.jpg 0 1 0", "z.png 0 1"])
    with pytest.raises(DataError) as err:
        load_source(lst, image_root=images)
    msg = str(err.value)
    assert f"{lst}:3" in msg and "wrong number of labels" in msg
    assert "found 2, expected 3" in msg


def test_list_file_label_must_be_binary(tmp_path):
    lst, images = _list_fixture(tmp_path, ["x.jpg 1 0 1", "y.jpg 0 2 0"])
    with pytest.raises(DataError, match=r"database.txt:2: label 2 is '2'; labels must be 0 or 1"):
        load_source(lst, image_root=images)


def test_list_file_other_structural_errors(tmp_path):
    lst, images = _list_fixture(tmp_path, ["x.jpg 1", "y.jpg"])
    with pytest.raises(DataError, match=r"database.txt:2: wrong number of labels"):
        load_source(lst, image_root=images)
    lst.write_text("# only a comment\n")
    with pytest.raises(DataError, match="no entries"):
        load_source(lst, image_root=images)
    lst.write_text("x.jpg 1 0\n")
    (lst.parent / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match="3 class names, but .* has 2 label columns"):
        load_source(lst, image_root=images)
    with pytest.raises(DataError, match="image root"):
        load_source(lst, image_root=tmp_path / "nope")
    lst.write_text("nothing.jpg 1 0\n")
    (lst.parent / "classes.txt").unlink()
    with pytest.raises(DataError, match="check image_root"):
        _quiet_load(lst, image_root=images)


# --- CIFAR-10 pickles -----------------------------------------------------------------------


def _fake_cifar(root: Path, per_batch: int = 3) -> np.ndarray:
    """cifar-10-batches-py with ``per_batch`` images per batch; returns all images [N,32,32,3]."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]  # fmt: skip
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    all_images = []
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        imgs = _rgb(32, 32, seed=k)[None].repeat(per_batch, 0)
        imgs[:, 0, 0, :] = np.arange(per_batch)[:, None]  # distinct corner pixel
        data = imgs.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # channel-first rows
        labels = [(k + j) % 10 for j in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        all_images.append(imgs)
    return np.concatenate(all_images)


def test_cifar_pickles(tmp_path):
    expected = _fake_cifar(tmp_path)
    for spec in (tmp_path / "cifar-10-batches-py", tmp_path):
        ds = load_source(spec)
        assert ds.name == "cifar10" and len(ds) == 18
        assert ds.class_names[0] == "airplane" and ds.images.image_size == (32, 32)
        assert np.array_equal(ds.images[:].numpy(), expected)
        assert int(ds.groups["train"].sum()) == 15 and int(ds.groups["test"].sum()) == 3
        assert ds.single_label()[:4].tolist() == [0, 1, 2, 1]
    assert load_source(tmp_path).fingerprint == ds.fingerprint


def test_cifar_missing_is_an_offline_error(tmp_path):
    with pytest.raises(DataError, match="download=True"):
        load_source(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match="download=True"):
        load_source("cifar10", cache_dir=tmp_path / "cache")
    _fake_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3"):
        load_source(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 batch"):
        load_source(tmp_path)


# --- packed JPEG npz ------------------------------------------------------------------------


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def _write_packed(path: Path, files: list[bytes], labels, is_test, class_names, sha=None):
    """The documented format: header = the longest common prefix of all files."""
    header_len = len(os.path.commonprefix(files))
    header = np.frombuffer(files[0][:header_len], dtype=np.uint8)
    scans = [f[header_len:] for f in files]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in scans])]).astype(np.int64)
    digest = hashlib.sha256()
    for f in files:
        digest.update(f)
    np.savez(
        path,
        jpeg_header=header,
        jpeg_scans=np.frombuffer(b"".join(scans), dtype=np.uint8),
        offsets=offsets,
        labels=np.asarray(labels, dtype=np.uint8),
        is_test=np.asarray(is_test, dtype=bool),
        file_number=np.arange(len(files), dtype=np.int32),
        class_names=np.array(class_names),
        files_sha256=np.array(sha or digest.hexdigest()),
    )
    return path


@pytest.fixture
def packed_npz(tmp_path):
    arrays = [_rgb(32, 32, seed=100 + i) for i in range(24)]
    files = [_jpeg(a) for a in arrays]
    labels = [i % 3 for i in range(24)]
    is_test = [i >= 18 for i in range(24)]
    path = _write_packed(tmp_path / "tiny.npz", files, labels, is_test, ["a", "b", "c"])
    return path, files, labels


@pytest.mark.parametrize("workers", [1, 2])
def test_packed_npz_decodes_and_caches(packed_npz, tmp_path, workers, monkeypatch):
    path, files, labels = packed_npz
    cache = tmp_path / f"cache{workers}"
    ds = load_source(path, cache_dir=cache, workers=workers)
    assert len(ds) == 24 and ds.images.image_size == (32, 32) and ds.n_skipped == 0
    expected = np.stack([decode_image(f) for f in files])
    assert np.array_equal(ds.images[:].numpy(), expected)  # same pixels as Pillow
    assert ds.single_label().tolist() == labels and ds.class_names == ["a", "b", "c"]
    assert int(ds.groups["test"].sum()) == 6 and int(ds.groups["train"].sum()) == 18
    assert ds.paths[0] == "train/a/0000.jpg" and ds.paths[-1] == "test/c/0023.jpg"
    assert len(list((cache / "decoded").glob("*.npy"))) == 1

    def no_decoding(*a, **k):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(packed_mod, "decode_packed", no_decoding)
    again = load_source(path, cache_dir=cache)
    assert again.fingerprint == ds.fingerprint
    assert torch.equal(again.images[:], ds.images[:])


def test_packed_npz_skips_undecodable_file(tmp_path):
    files = [_jpeg(_rgb(32, 32, seed=i)) for i in range(8)]
    files[3] = files[3][: len(files[3]) // 3]  # truncated
    path = _write_packed(tmp_path / "bad.npz", files, [0] * 8, [False] * 8, ["only"])
    with pytest.warns(UserWarning, match="skipped 1 of 8"):
        ds = load_source(path, cache_dir=tmp_path / "c")
    assert len(ds) == 7 and ds.n_skipped == 1 and ds.skipped[0][0] == "train/only/0003.jpg"
    with pytest.warns(UserWarning, match="skipped 1 of 8"):
        cached = load_source(path, cache_dir=tmp_path / "c")
    assert cached.n_skipped == 1 and torch.equal(cached.images[:], ds.images[:])


def test_packed_npz_structural_errors(tmp_path, packed_npz):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="junk.npz: cannot read it as an .npz"):
        load_source(junk)
    partial = tmp_path / "partial.npz"
    np.savez(partial, jpeg_header=np.zeros(3, np.uint8), labels=np.zeros(2, np.uint8))
    with pytest.raises(DataError, match="missing array.*jpeg_scans, offsets"):
        load_source(partial)
    path, files, labels = packed_npz
    wrong = _write_packed(
        tmp_path / "wrong.npz", files, labels, [False] * 24, list("abc"), "0" * 64
    )
    with pytest.raises(DataError, match="content check failed"):
        load_source(wrong, cache_dir=tmp_path / "c")
    z = dict(np.load(path))
    z["offsets"] = z["offsets"][:-1]
    np.savez(tmp_path / "offs.npz", **z)
    with pytest.raises(DataError, match="'offsets' has 24 entries, expected N\\+1 = 25"):
        load_source(tmp_path / "offs.npz")


# --- digits and dispatch --------------------------------------------------------------------


def test_digits():
    ds = load_source("digits")
    assert len(ds) == 1797 and ds.labels.shape == (1797, 10)
    imgs = ds.images[:]
    assert imgs.dtype == torch.uint8 and imgs.shape == (1797, 8, 8, 3)
    assert int(imgs.max()) == 255 and int(imgs.min()) == 0
    assert torch.equal(imgs[..., 0], imgs[..., 2])
    assert ds.single_label()[:10].tolist() == list(range(10))
    bigger = load_source("digits", store_size=16)
    assert bigger.images.image_size == (16, 16) and bigger.fingerprint != ds.fingerprint


def test_unknown_source_is_explained(tmp_path):
    with pytest.raises(DataError, match="does not exist .*'digits'"):
        load_source(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="store_size"):
        load_source("digits", store_size=0)


def test_packed_decode_survives_a_dead_worker(packed_npz, monkeypatch):
    path, files, _ = packed_npz

    def die(*args):
        os._exit(3)

    monkeypatch.setattr(packed_mod, "_worker_main", die)
    images, kept, failures = packed_mod.decode_packed(packed_mod.read_packed(path), workers=2)
    assert failures == {} and len(kept) == 24
    assert np.array_equal(images, np.stack([decode_image(f) for f in files]))


def test_large_folders_load_lazily(tmp_path, monkeypatch):
    from contrahash.data import folders

    root = tmp_path / "many"
    for i in range(10):
        _save(root / f"c{i % 2}" / f"{i}.png", _rgb(12, 12))
    monkeypatch.setattr(folders, "LAZY_THRESHOLD", 5)
    ds = load_source(root)
    assert isinstance(ds.images, LazyImages) and ds.images.image_size == (256, 256)
    small = load_source(root, store_size=12)
    assert isinstance(small.images, LazyImages)
    assert torch.equal(small.images[:], load_source(root, lazy=False).images[:])


# --- sources without labels -----------------------------------------------------------------


def test_flat_folder_single_image_and_path_list_are_unlabelled_sources(tmp_path):
    from contrahash.data.images import decode_like_source

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        _save(flat / f"p{i}.png", _rgb(12, 12, seed=i))
    (flat / "notes.txt").write_text("not an image")
    ds = _quiet_load(flat)
    assert len(ds) == 3 and ds.labels.shape == (3, 0) and ds.class_names == []
    assert [Path(p).name for p in ds.paths] == ["p0.png", "p1.png", "p2.png"]
    one = load_source(flat / "p1.png")
    assert len(one) == 1 and np.array_equal(np.asarray(one.images[0]), np.asarray(ds.images[1]))
    lst = tmp_path / "paths.txt"
    lst.write_text("p2.png\np0.png\n")
    listed = load_source(lst, image_root=flat)
    assert listed.labels.shape == (2, 0)
    assert np.array_equal(np.asarray(listed.images[0]), np.asarray(ds.images[2]))
    # an outside copy of a file decodes to the very pixels the source stored
    data = (flat / "p0.png").read_bytes()
    assert np.array_equal(decode_like_source(data, ds.decoding), np.asarray(ds.images[0]))


def test_decode_like_source_follows_the_source_and_refuses_bad_files(tmp_path, packed_npz):
    from contrahash.data.images import decode_like_source

    path, files, _ = packed_npz
    ds = load_source(path, cache_dir=tmp_path / "cache")
    for i in (0, 5, 23):
        assert np.array_equal(decode_like_source(files[i], ds.decoding), np.asarray(ds.images[i]))
    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    _save(mixed / "a" / "big.png", _rgb(40, 30, seed=1))
    _save(mixed / "a" / "small.png", _rgb(10, 20, seed=2))
    resized = _quiet_load(mixed, store_size=16)  # mixed sizes: stored at 16 x 16 (Pillow)
    assert resized.decoding == {"decoder": "pil", "resize": "pil", "size": 16}
    got = decode_like_source((mixed / "a" / "big.png").read_bytes(), resized.decoding)
    assert np.array_equal(got, np.asarray(resized.images[0]))
    for bad, reason in ((b"", "empty"), (b"plain text", "not an image"),
                        (files[0][: len(files[0]) // 2], "not an image|decode")):
        with pytest.raises(ValueError, match=reason):
            decode_like_source(bad, ds.decoding)
    bomb = io.BytesIO()
    Image.new("L", (5000, 5000)).save(bomb, format="PNG")
    with pytest.raises(ValueError, match="pixels"):
        decode_like_source(bomb.getvalue(), None, max_pixels=1_000_000)
