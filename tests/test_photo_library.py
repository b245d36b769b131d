"""A person's photo library: one command from a folder to a collection (the model learnt from
the photos themselves), photos decoded and shown as they are, every photo indexed or named,
and the index following the folder (sync, remove) — on phone-style folders made from the
CIFAR-10 JPEGs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from contrahash.cli import app
from contrahash.data import load_source
from contrahash.data.errors import DataError
from contrahash.data.images import decode_image, decode_upright
from contrahash.retrieval.collection import CollectionError, open_collection, read_manifest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
runner = CliRunner()
#: a tiny backbone so that a one-command build takes seconds in tests
TINY = ["backbone.name=tiny_cnn", "backbone.random_init=true", "backbone.image_size=32",
        "cache.views=4", "optim.epochs=3"]


def _cifar() -> Path:
    from contrahash.library.synthetic import find_cifar10

    return find_cifar10() or pytest.skip("the CIFAR-10 JPEG copy (shared/datasets/cifar10-jpeg.npz) is not here")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from contrahash.library.synthetic import make_photo_folder

    root = tmp_path_factory.mktemp("photos") / "Pictures"
    photos = make_photo_folder(_cifar(), root, 80, size=(96, 72))
    return root, photos


@pytest.fixture(scope="module")
def library(folder, tmp_path_factory):
    from contrahash.library.build import build_library

    root, photos = folder
    out = tmp_path_factory.mktemp("lib") / "photos.index"
    said: list[str] = []
    manifest = build_library(str(root), out, bits=[16, 32], overrides=TINY, say=said.append)
    return out, manifest, said


# --------------------------------------------------------------------------------- decoding
def _reference(photo) -> np.ndarray:
    """The photo as it was meant to be seen, from the CIFAR image (independent of decoding)."""
    return np.asarray(decode_upright(photo.path.read_bytes())[0], dtype=np.int16)


def test_exif_rotated_photos_decode_upright(folder):
    root, photos = folder
    rotated = [p for p in photos if p.rotated]
    upright = [p for p in photos if p.kind == "jpeg"]
    assert rotated
    with Image.open(rotated[0].path) as raw:
        assert raw.size == (72, 96)  # stored sideways
        assert raw.getexif()[0x0112] == 6
    img = decode_image(str(rotated[0].path))
    assert img.shape == (72, 96, 3)  # shown upright, as a photo viewer shows it
    # the stored pixels turned by hand (Orientation 6 = rotate 90° clockwise to display)
    with Image.open(rotated[0].path) as raw:
        by_hand = np.asarray(raw.convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(img, by_hand)
    assert decode_image(str(upright[0].path)).shape == (72, 96, 3)
    # a 256² store of a rotated photo equals the upright picture squashed the same way
    small = decode_image(str(rotated[0].path), 64)
    expected = np.asarray(Image.fromarray(by_hand).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(small.astype(int) - expected.astype(int)).max() <= 24  # draft-mode JPEG scale


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_kind_of_file_decodes_to_the_right_rgb():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[..., 0], rgb[:8, :, 1], rgb[:, :12, 2] = 200, 120, 60
    picture = Image.fromarray(rgb)
    # CMYK JPEG: the colours survive (JPEG error only)
    cmyk = decode_image(_saved(picture.convert("CMYK"), "JPEG", quality=95))
    assert np.abs(cmyk.astype(int) - rgb.astype(int)).mean() < 6
    # 16-bit grey PNG: 0..65535 onto 0..255
    grey16 = (np.asarray(picture.convert("L"), np.uint16) * 257)
    out16 = decode_image(_saved(Image.fromarray(grey16), "PNG"))
    assert np.array_equal(out16[..., 0], np.asarray(picture.convert("L")))
    # palette PNG: the palette's colours
    pal = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert np.array_equal(decode_image(_saved(pal, "PNG")), np.asarray(pal.convert("RGB")))
    # alpha: composited over white (a transparent pixel is white, not its stored colour)
    rgba = picture.convert("RGBA")
    alpha = np.full((16, 24), 255, np.uint8)
    alpha[:, :6] = 0
    rgba.putalpha(Image.fromarray(alpha))
    out = decode_image(_saved(rgba, "PNG"))
    assert (out[:, :6] == 255).all() and np.array_equal(out[:, 6:], rgb[:, 6:])
    # animated GIF: its first frame
    second = Image.fromarray(255 - rgb)
    gif = _saved(picture, "GIF", save_all=True, append_images=[second], duration=100)
    first = np.asarray(Image.open(io.BytesIO(_saved(picture, "GIF"))).convert("RGB"))
    assert np.array_equal(decode_image(gif), first)
    # WebP (lossy): close to the picture
    webp = decode_image(_saved(picture, "WEBP", quality=95))
    assert np.abs(webp.astype(int) - rgb.astype(int)).mean() < 6


def test_a_heic_photo_without_the_extra_is_named(tmp_path, monkeypatch):
    from contrahash.data import images

    monkeypatch.setattr(images, "_HEIF", False)  # as on a machine without pillow-heif
    folder = tmp_path / "iphone"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.jpg")
    (folder / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    with pytest.raises(DataError, match=r"1 HEIC/HEIF photo\(s\) \(IMG_0001.HEIC\).*"
                                        r"contrahash\[heif\]"):
        load_source(folder)
    with pytest.raises(ValueError, match="contrahash\\[heif\\]"):
        images.decode_like_source((folder / "IMG_0001.HEIC").read_bytes())


# --------------------------------------------------------------------------------- folders
def test_every_photo_at_every_depth_albums_not_classes(folder):
    root, photos = folder
    with pytest.warns(UserWarning, match="skipped 3 of"):  # notes.txt, empty.jpg, truncated.jpg
        ds = load_source(root)
    assert len(ds) == len(photos) and ds.labels.shape == (len(photos), 0)
    assert {Path(p) for p in ds.paths} == {p.path for p in photos}
    albums = dict(zip(ds.paths, ds.albums, strict=True))
    assert {albums[str(p.path)] for p in photos} == {"", "2019", "2020", "2021", "2021/trip"}
    assert albums[str(next(p for p in photos if p.kind == "jpeg-top").path)] == ""
    skipped = {Path(p).name for p, _ in ds.skipped}
    assert skipped == {"notes.txt", "empty.jpg", "truncated.jpg"}  # system files: silently
    # the same folder read as classes on request: top-level files are named, not dropped
    with pytest.warns(UserWarning, match="not in a class folder"):
        classes = load_source(root, labels="folders")
    assert classes.class_names == ["2019", "2020", "2021"]  # empty-album holds nothing


def test_photos_at_the_top_and_in_subfolders_are_all_indexed(tmp_path):
    from contrahash.data.sources import walk_image_files

    root = tmp_path / "mixed"
    for name in ("a", "b", "c", "d", "e"):
        (root).mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), ord(name), np.uint8)).save(root / f"{name}.png")
    (root / "sub").mkdir()
    for name in ("x", "y", "z"):
        Image.fromarray(np.full((8, 8, 3), ord(name), np.uint8)).save(root / "sub" / f"{name}.png")
    (root / "empty-album").mkdir()
    assert len(walk_image_files(root)) == 8
    assert len(load_source(root)) == 8


# --------------------------------------------------------------------------------- one command
def test_one_command_learns_from_the_folder_and_serves_it(folder, library):
    root, photos = folder
    out, manifest, said = library
    assert manifest["count"] == len(photos)
    assert (out / "model" / "model.safetensors").is_file()  # the model is inside
    training = manifest["training"]
    assert training["labels"] is False and training["evaluated_on"] == "self-retrieval"
    for rep in training["bits"].values():  # no mAP against folder names
        assert "map" not in rep and 0.0 <= rep["self_retrieval_at_10"] <= 1.0
        assert rep["self_retrieval_at_10"] <= rep["self_retrieval_at_10_best"]
    assert any(s.startswith("estimated total time") for s in said)
    assert not (out / "training" / "cache").exists()  # the feature cache is not kept
    with open_collection(out) as coll:
        items = [coll.item(i) for i in coll.live_ids()]
        assert {it.path for it in items} == {str(p.path) for p in photos}
        assert all(it.labels == [] for it in items)
        by_path = {it.path: it for it in items}
        rot = next(p for p in photos if p.rotated)
        item = by_path[str(rot.path)]
        assert (item.width, item.height) == (96, 72)  # the size as shown
        thumb = Image.open(io.BytesIO(coll.thumbnail(item.id)))
        assert thumb.size[0] > thumb.size[1]  # upright and not squashed (4:3)
        assert abs(thumb.size[0] / thumb.size[1] - 4 / 3) < 0.05
        # a photo uploaded as its file finds itself at distance 0 — a rotated one too
        for photo in (rot, next(p for p in photos if p.kind == "cmyk")):
            decoded = coll.decode_image(photo.path.read_bytes())
            code = coll.encode([decoded])[32]
            hits = coll.search_codes(code, 5, 32)[0]
            assert by_path[str(photo.path)].id in [h.id for h in hits if h.distance == 0]


def test_run_codes_are_the_collection_codes(library):
    """The collection reuses the run's own codes of every image (no second backbone pass):
    they equal what encoding the images again gives."""
    out, manifest, _ = library
    with open_collection(out) as coll:
        ids = coll.live_ids()
        paths = [coll.item(i).path for i in ids]
        with pytest.warns(UserWarning, match="skipped"):
            ds = load_source(manifest["segments"][0]["root"])
        rows = [ds.paths.index(p) for p in paths]
        fresh = coll.model.encode(coll.model.extract(ds.images, np.asarray(rows)))
        assert np.array_equal(coll.codes_of(list(ids), 32), fresh[32])


def test_out_must_be_new_or_empty(folder, tmp_path):
    root, _ = folder
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "holiday.doc").write_text("mine")
    for out, message in ((busy, "is not empty"), (Path("/"), "is not empty")):
        res = runner.invoke(app, ["index", "build", "--data", str(root), "--out", str(out)])
        assert res.exit_code == 2 and message in res.output, res.output
        assert res.output.count("\n") <= 2
    assert sorted(p.name for p in busy.iterdir()) == ["holiday.doc"]  # nothing written


def test_a_folder_without_images_is_one_line(tmp_path):
    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no photos here")
    res = runner.invoke(app, ["index", "build", "--data", str(empty), "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_pixels_model_is_refused_on_photos(folder, tmp_path):
    from contrahash.config import resolve_config
    from contrahash.training.train import train_run

    root, _ = folder
    cfg = resolve_config(None, ["method=itq", "data.source=digits", "backbone.name=pixels",
                                "bits=[8]", f"cache.dir={tmp_path / 'cache'}"])
    run = train_run(cfg, tmp_path / "run").run_dir
    with pytest.raises(CollectionError, match="the model sees"):
        from contrahash.retrieval.collection import build_collection

        build_collection(run, str(root), tmp_path / "coll")
    assert not (tmp_path / "coll" / "manifest.json").exists()


# --------------------------------------------------------------------------------- sync
@pytest.fixture
def synced(folder, library, tmp_path):
    """A private copy of the library and its folder (sync changes both)."""
    root, photos = folder
    out, _, _ = library
    copy_root = tmp_path / "Pictures"
    shutil.copytree(root, copy_root, symlinks=True)
    copy_out = tmp_path / "photos.index"
    shutil.copytree(out, copy_out)
    manifest = json.loads((copy_out / "manifest.json").read_text())
    # the copy's items point at the copied folder
    for seg in manifest["segments"]:
        seg["root"] = str(copy_root)
        items = copy_out / "segments" / seg["name"] / "items.jsonl"
        rows = [json.loads(x) for x in items.read_text().splitlines()]
        for row in rows:
            row["path"] = row["path"].replace(str(root), str(copy_root))
            st = os.stat(row["path"])
            row["size_bytes"], row["mtime_ns"] = st.st_size, st.st_mtime_ns
        items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (copy_out / "manifest.json").write_text(json.dumps(manifest))
    return copy_out, copy_root


def _sync(out: Path) -> dict:
    res = runner.invoke(app, ["index", "sync", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def test_sync_follows_deletions_edits_touches_and_new_files(synced):
    out, root = synced
    with open_collection(out) as coll:
        before = {coll.item(i).path: i for i in coll.live_ids()}
    files = sorted(p for p in before if p.endswith(".jpg"))
    deleted, edited, touched = files[:5], files[5:8], files[8:12]
    for p in deleted:
        os.remove(p)
    for p in edited:
        img = Image.open(p).convert("RGB")
        Image.fromarray(255 - np.asarray(img)).save(p, "JPEG", quality=90)
    for p in touched:
        os.utime(p, None)  # same bytes, new mtime
    # (the folder's three junk files are counted as unreadable at every sync, never encoded)
    assert _sync(out) == {"added": 0, "removed": 5, "changed": 3, "unchanged": len(before) - 8,
                          "duplicates": 0, "unreadable": 3, "encoded": 3}
    assert _sync(out)["encoded"] == 0  # nothing left to do
    # a new photo is added, a copy of an indexed one is reported and not stored twice
    new = root / "2022" / "new.jpg"
    new.parent.mkdir()
    Image.open(files[20]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new, "JPEG")
    shutil.copyfile(files[21], root / "2022" / "copy-of-21.jpg")
    report = _sync(out)
    assert (report["added"], report["duplicates"]) == (1, 1)
    with open_collection(out) as coll:
        after = {coll.item(i).path: i for i in coll.live_ids()}
        for p in deleted:  # never served again: by search, by id, by thumbnail
            gone = before[p]
            assert p not in after
            with pytest.raises(KeyError):
                coll.item(gone)
            with pytest.raises(KeyError):
                coll.thumbnail(gone)
            hits = coll.search_ids([after[files[30]]], len(coll), 32)[0]
            assert gone not in {h.id for h in hits}
        for p, i in before.items():  # kept ids never change (edited ones included)
            if p not in deleted:
                assert after[p] == i
        assert after[str(new)] == max(before.values()) + 1
        # an edited photo's new content is what it is searched by
        img = coll.decode_image(Path(edited[0]).read_bytes())
        code = coll.encode([img])[32]
        np.testing.assert_array_equal(coll.codes_of([after[edited[0]]], 32), code)
        hits = coll.search_codes(code, len(coll), 32)[0]  # every tie at distance 0
        assert after[edited[0]] in [h.id for h in hits if h.distance == 0]
        assert len(coll) == read_manifest(out)["count"] == len(before) - 5 + 1


def test_remove_by_id_and_path_and_the_errors(synced):
    out, root = synced
    with open_collection(out) as coll:
        ids = list(coll.live_ids())
        path = coll.item(ids[3]).path
    res = runner.invoke(app, ["index", "remove", str(out), "--id", str(ids[0]), "--path", path])
    assert res.exit_code == 0, res.output
    with open_collection(out) as coll:
        assert len(coll) == len(ids) - 2
        with pytest.raises(KeyError):
            coll.item(ids[0])
    for args, message in ((["--id", str(ids[0])], "already removed"),
                          (["--id", "99999"], "no such item"),
                          (["--path", str(root / "nope.jpg")], "no item")):
        res = runner.invoke(app, ["index", "remove", str(out), *args])
        assert res.exit_code == 2 and message in res.output, res.output
    shutil.rmtree(root)
    manifest = (out / "manifest.json").read_bytes()
    res = runner.invoke(app, ["index", "sync", str(out)])
    assert res.exit_code == 2 and "is gone" in res.output
    assert (out / "manifest.json").read_bytes() == manifest  # nothing written


@pytest.mark.slow
def test_kill_minus_nine_during_sync_then_sync_completes(synced):
    """kill -9 at each dangerous point of a sync (a filled segment not renamed, a segment not
    committed, the first of its two commits done) and at random moments: the collection
    opens, serves and is consistent every time, and the next sync completes the work."""
    from contrahash.retrieval.collection import CRASH_POINTS

    out, root = synced
    files = sorted(p for p in root.rglob("*.jpg") if p.stat().st_size > 1000)
    for p in files[:4]:
        p.unlink()
    for p in files[4:10]:
        Image.fromarray(255 - np.asarray(Image.open(p).convert("RGB"))).save(p, "JPEG")
    for k in range(6):
        img = np.asarray(Image.open(files[20 + k]).convert("RGB"))[::-1]
        Image.fromarray(np.ascontiguousarray(img)).save(root / f"new-{k}.jpg", "JPEG")
    env = {**os.environ, "PYTHONPATH": str(SRC), "CONTRAHASH_THREADS": "1"}
    cuts = [("crash", point) for point in CRASH_POINTS if point != "milvus-applied"]
    cuts += [("after", delay) for delay in (2.5, 3.5)]
    for how, when in cuts:
        cmd = [sys.executable, "-m", "contrahash.cli", "index", "sync", str(out), "--no-progress"]
        if how == "crash":
            res = subprocess.run(cmd, env={**env, "CONTRAHASH_CRASH_AT": str(when)},
                                 capture_output=True, timeout=240)
            assert res.returncode == -signal.SIGKILL, (when, res.stderr[-500:])
        else:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                proc.wait(timeout=when)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        with open_collection(out) as coll:  # opens, consistent, serves
            assert len(coll) == read_manifest(out)["count"]
            some = int(coll.live_ids()[0])
            assert coll.search_ids([some], 3, 32)[0][0].distance == 0
    _sync(out)
    again = _sync(out)
    assert again["encoded"] == 0 and again["added"] == again["removed"] == again["changed"] == 0
    assert not [p for p in (out / "segments").iterdir() if p.name.startswith(".tmp-")]
    with open_collection(out) as coll:
        paths = {coll.item(i).path for i in coll.live_ids()}
        assert not any(str(p) in paths for p in files[:4])
        assert all(str(root / f"new-{k}.jpg") in paths for k in range(6))
        by_path = {coll.item(i).path: i for i in coll.live_ids()}
        for p in files[4:10]:  # every edit made it in, under the photo's old id
            code = coll.encode([coll.decode_image(p.read_bytes())])[32]
            np.testing.assert_array_equal(coll.codes_of([by_path[str(p)]], 32), code)
            # found at distance 0 (all of the ties: other photos may share its 32-bit code)
            hits = coll.search_codes(code, len(coll), 32)[0]
            assert by_path[str(p)] in [h.id for h in hits if h.distance == 0]


def test_heic_photos_with_the_extra(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif") if not os.environ.get("CI") else (
        __import__("pillow_heif"))
    pillow_heif.register_heif_opener()
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (220, 40, 40)
    folder = tmp_path / "iphone" / "2024"
    folder.mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "IMG_0002.HEIC", format="HEIF", quality=95)
    ds = load_source(tmp_path / "iphone")
    assert len(ds) == 1 and ds.albums == ["2024"]
    out = np.asarray(ds.images[0]).astype(int)
    assert np.abs(out - rgb).mean() < 8  # lossy HEVC, the same picture


def test_the_estimate_is_said_once_the_backbone_speed_is_known_and_follows_the_work():
    from contrahash.library.estimate import TimeEstimate, Work
    from contrahash.progress import ProgressEvent

    said: list[str] = []
    est = TimeEstimate(Work(forwards=1000, train_images=20_000, scan_items=100), said.append)
    est(ProgressEvent("features of the evaluated images", 0, 1000, "img", 0.0))
    est(ProgressEvent("features of the evaluated images", 100, 1000, "img", 1.0))
    assert not said  # 100 images in 1 s: too early to trust
    est(ProgressEvent("features of the evaluated images", 400, 1000, "img", 4.0))
    assert len(said) == 1 and said[0].startswith("estimated total time")
    assert est.rate["forwards"] == pytest.approx(100.0)
    # 600 forwards left at 100/s, 20,000 training images at the prior scaled by 100/150,
    # 100 scanned items likewise
    expected = 6.0 + 20_000 / (1100 * 100 / 150) + 100 / (150 * 100 / 150)
    assert est.remaining() == pytest.approx(expected)
    for _epoch in range(2):  # training epochs: measured over all of them
        est(ProgressEvent("training", 0, 10_000, "img", 0.0))
        est(ProgressEvent("training", 10_000, 10_000, "img", 5.0, finished=True))
    assert est.rate["train"] == pytest.approx(2000.0)
