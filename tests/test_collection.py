"""Collections: index build from a run, add, info, search by image and by id, self-retrieval."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from contrahash.cli import app
from contrahash.retrieval.collection import (
    CollectionError,
    add_to_collection,
    build_collection,
    open_collection,
    read_manifest,
)
from contrahash.serve.types import UnknownItemError

runner = CliRunner()


def _image(seed: int, size: int = 32) -> np.ndarray:
    """A structured picture (blobs and stripes), different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(1, 6, 3)
        channels.append(0.5 + 0.5 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    return (np.stack(channels, -1) * 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_packed(path: Path, files: list[bytes], labels: list[int], names: list[str]) -> Path:
    """A packed-JPEG .npz in the documented format (header = common prefix of all files)."""
    header_len = len(os.path.commonprefix(files))
    scans = [f[header_len:] for f in files]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in scans])]).astype(np.int64)
    np.savez(path, jpeg_header=np.frombuffer(files[0][:header_len], dtype=np.uint8),
             jpeg_scans=np.frombuffer(b"".join(scans), dtype=np.uint8), offsets=offsets,
             labels=np.asarray(labels, dtype=np.uint8),
             is_test=np.zeros(len(files), dtype=bool),
             file_number=np.arange(len(files), dtype=np.int32), class_names=np.array(names),
             files_sha256=np.array(hashlib.sha256(b"".join(files)).hexdigest()))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A packed source of 120 JPEGs, a flat folder of 12 more, and a trained (ITQ) run."""
    from contrahash.config import resolve_config
    from contrahash.training.train import train_run

    root = tmp_path_factory.mktemp("collection")
    files = [_jpeg(_image(i)) for i in range(120)]
    packed = write_packed(root / "pics.npz", files, [i % 3 for i in range(120)],
                          ["sea", "<script>alert(1)</script>", "wood"])
    flat = root / "more"
    flat.mkdir()
    for i in range(12):  # other sizes and formats: decoded and resized like any source
        Image.fromarray(_image(500 + i, 24 + 4 * (i % 3))).save(flat / f"extra_{i:02d}.png")
    cfg = resolve_config(None, [
        "method=itq", f"data.source={packed}", "data.protocol=custom",
        "data.protocol_options={query: 20, train: 60}", "backbone.name=tiny_cnn",
        "backbone.random_init=true", "backbone.image_size=32", "bits=[8,32]",
        f"cache.dir={root / 'cache'}", f"data.cache_dir={root / 'decoded'}"])
    run = train_run(cfg, root / "run").run_dir
    return {"root": root, "packed": packed, "files": files, "flat": flat, "run": run}


@pytest.fixture(scope="module")
def built(world):
    out = world["root"] / "coll"
    build_collection(world["run"], str(world["packed"]), out)
    return out


def test_build_writes_a_self_contained_directory(world, built):
    manifest = read_manifest(built)
    assert manifest["count"] == 120 and manifest["bits"] == [8, 32]
    assert manifest["query_decoding"]["decoder"] in ("torchvision-jpeg", "pil")
    assert (built / "model" / "model.safetensors").is_file()
    assert (built / "model" / "config.yaml").is_file()
    seg = built / "segments" / "000000"
    assert {p.name for p in seg.iterdir()} == {"codes_8.index", "codes_32.index", "items.jsonl",
                                               "thumbnails.bin", "thumbnails.npy",
                                               "perceptual.npy"}
    items = [json.loads(x) for x in (seg / "items.jsonl").read_text().splitlines()]
    assert [it["id"] for it in items] == list(range(120))
    assert items[1]["labels"] == ["<script>alert(1)</script>"]
    collection = open_collection(built)
    thumb = Image.open(io.BytesIO(collection.thumbnail(7)))
    assert thumb.format == "JPEG" and thumb.size == (32, 32)
    # the collection encodes with its own copy of the model: the run may go away
    assert collection.info()["run_id"] == manifest["run"]["run_id"]


def test_each_original_file_finds_itself_at_distance_zero(world, built):
    collection = open_collection(built)
    found = 0
    for i in range(100):
        decoded = collection.decode_image(world["files"][i])
        codes = collection.encode([decoded])
        for bits in collection.bits:  # exactly the codes the index holds
            assert np.array_equal(codes[bits], collection.codes_of([i], bits)), (i, bits)
        hits = collection.search_codes(codes[32], len(collection), 32)[0]
        assert hits[0].distance == 0
        zero = [h.id for h in hits if h.distance == 0]
        assert zero == sorted(zero)  # ties by id
        found += i in zero
    assert found == 100


def test_batched_encoding_equals_one_by_one(world, built):
    collection = open_collection(built)
    images = [collection.decode_image(world["files"][i]) for i in range(9)]
    together = collection.encode(images)
    # the service's path: each image prepared on its own (decoding threads), one batched forward
    prepared = collection.encode_prepared([collection.prepare_query(img) for img in images])
    for i, img in enumerate(images):
        alone = collection.encode([img])
        for bits in collection.bits:
            assert np.array_equal(together[bits][i], alone[bits][0])
            assert np.array_equal(prepared[bits][i], together[bits][i])


def test_search_by_id_ranks_by_distance_then_id(built):
    collection = open_collection(built)
    hits = collection.search_ids([5], 120, 8)[0]
    assert hits[0].distance == 0 and 5 in [h.id for h in hits if h.distance == 0]
    keys = [(h.distance, h.id) for h in hits]
    assert keys == sorted(keys) and len(hits) == 120
    with pytest.raises(UnknownItemError, match="unknown item id 120"):
        collection.search_ids([120], 3, 8)
    with pytest.raises(ValueError, match="code lengths"):
        collection.search_ids([1], 3, 16)


def test_cli_search_by_image_and_by_id(world, built):
    photo = world["root"] / "photo.jpg"
    photo.write_bytes(world["files"][42])
    res = runner.invoke(app, ["search", str(built), "--image", str(photo), "-k", "5", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["bits"] == 32 and out["results"][0]["distance"] == 0
    assert 42 in [r["id"] for r in out["results"] if r["distance"] == 0]
    res = runner.invoke(app, ["search", str(built), "--id", "3", "-k", "4", "--bits", "8"])
    assert res.exit_code == 0, res.output
    assert "top 4 of 120 (8 bits)" in " ".join(res.output.split())
    for args, message in ((["--id", "3", "--image", str(photo)], "exactly one"),
                          (["--id", "3", "--bits", "7"], "code lengths"),
                          (["--id", "999"], "unknown item id 999"),
                          (["--image", str(world["root"] / "none.jpg")], "does not exist")):
        res = runner.invoke(app, ["search", str(built), *args])
        assert res.exit_code != 0 and message in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_add_appends_without_touching_what_was_written(world, tmp_path):
    out = tmp_path / "coll"
    build_collection(world["run"], str(world["packed"]), out, bits=[32])
    first = {p: p.read_bytes() for p in (out / "segments" / "000000").iterdir()}
    reader = open_collection(out)
    manifest = add_to_collection(out, str(world["flat"]))
    assert manifest["count"] == 132 and [s["first_id"] for s in manifest["segments"]] == [0, 120]
    for path, data in first.items():
        assert path.read_bytes() == data
    assert len(reader) == 120 and reader.reload() and len(reader) == 132
    assert reader.item(125).name == "extra_05.png" and reader.item(125).labels == []
    assert reader.search_ids([131], 1, 32)[0][0].id == 131
    assert not reader.reload()
    with pytest.raises(CollectionError, match="already in"):
        add_to_collection(out, str(world["flat"]))
    res = runner.invoke(app, ["index", "info", str(out)])
    assert res.exit_code == 0 and "132 items" in " ".join(res.output.split()), res.output


def test_an_interrupted_add_leaves_the_collection_as_it_was(world, tmp_path, monkeypatch):
    from contrahash.retrieval.collection import writer as module
    out = tmp_path / "coll"
    build_collection(world["run"], str(world["packed"]), out, bits=[8])
    before = (out / "manifest.json").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing the segment

    monkeypatch.setattr(module, "_write_thumbnails", crash)
    with pytest.raises(KeyboardInterrupt):
        add_to_collection(out, str(world["flat"]))
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (out / "segments").iterdir()) == ["000000"]
    assert len(open_collection(out)) == 120
    monkeypatch.undo()
    assert add_to_collection(out, str(world["flat"]))["count"] == 132


def test_build_refuses_what_it_cannot_do(world, built, tmp_path):
    with pytest.raises(FileExistsError, match="index add"):
        build_collection(world["run"], str(world["packed"]), built)
    with pytest.raises(CollectionError, match="code lengths"):
        build_collection(world["run"], str(world["packed"]), tmp_path / "x", bits=[12])
    assert not (tmp_path / "x").exists()
    with pytest.raises(CollectionError, match="not a run directory"):
        build_collection(tmp_path, str(world["packed"]), tmp_path / "y")
    with pytest.raises(CollectionError, match="not a collection"):
        open_collection(tmp_path)
    res = runner.invoke(app, ["index", "build", str(world["run"]), "--out", str(tmp_path / "z")])
    assert res.exit_code != 0 and "--data" in res.output


def test_cli_build_reports_images_per_second(world, tmp_path):
    res = runner.invoke(app, ["index", "build", str(world["run"]), "--data", str(world["flat"]),
                              "--out", str(tmp_path / "c"), "--bits", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "indexed 12 images at 8 bits" in res.output and "images/s" in res.output


def test_the_service_serves_a_real_collection(world, built):
    from fastapi.testclient import TestClient

    from contrahash.serve.app import create_app
    from contrahash.serve.settings import ServeSettings

    with TestClient(create_app(open_collection(built), ServeSettings())) as client:
        res = client.post("/api/search", files={"image": ("x.jpg", world["files"][17])},
                          data={"k": "3", "bits": "32"})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["results"][0]["distance"] == 0
        assert 17 in [r["id"] for r in body["results"] if r["distance"] == 0]
        res = client.get("/api/search", params={"id": 4, "k": 120, "bits": 8})
        assert res.status_code == 200
        results = res.json()["results"]
        assert 4 in [r["id"] for r in results if r["distance"] == 0]  # ties rank by id
        assert [(r["distance"], r["id"]) for r in results] == sorted(
            (r["distance"], r["id"]) for r in results)
        assert client.get("/api/items/1").json()["labels"] == ["<script>alert(1)</script>"]
        assert client.get("/api/items/1/thumbnail").headers["content-type"] == "image/jpeg"
        bad = client.post("/api/search", files={"image": ("x.jpg", b"not an image")})
        assert bad.status_code == 422


def test_a_milvus_backed_collection_searches_like_faiss(world, built, tmp_path):
    """index build --backend milvus: the codes live in Milvus (Lite here), search and serve use
    it transparently, and rank exactly like the in-process faiss collection."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    out = tmp_path / "coll"
    build_collection(world["run"], str(world["packed"]), out,
                     backend={"kind": "milvus", "uri": str(tmp_path / "codes.db")})
    assert read_manifest(out)["backend"]["kind"] == "milvus"
    local, remote = open_collection(built), open_collection(out)
    for bits in (8, 32):
        want = local.search_ids(list(range(0, 120, 7)), 30, bits)
        got = remote.search_ids(list(range(0, 120, 7)), 30, bits)
        assert [[(h.id, h.distance) for h in row] for row in got] == [
            [(h.id, h.distance) for h in row] for row in want]
    res = runner.invoke(app, ["search", str(out), "--id", "9", "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    # index add inserts into the same Milvus collections; a reload keeps the open connections
    before = dict(remote._snapshot.indexes)
    add_to_collection(out, str(world["flat"]))
    assert remote.reload() and len(remote) == 132
    assert all(remote._snapshot.indexes[b] is before[b] for b in (8, 32))
    assert [h.distance for h in remote.search_ids([125], 1, 32)[0]] == [0]
    in_process = remote._snapshot.local[32]  # the same codes, as the directory holds them
    distances, ids = in_process.search(remote.codes_of([125], 32), 5)
    assert [(h.id, h.distance) for h in remote.search_ids([125], 5, 32)[0]] == list(
        zip(ids[0].tolist(), distances[0].tolist(), strict=True))
    remote.close()  # Milvus Lite opens its file in one process at a time
    remote.close()  # idempotent
    from contrahash.retrieval import milvus_connect as milvus_module
    assert str(tmp_path / "codes.db") not in {str(p) for p in milvus_module._lite_users}
