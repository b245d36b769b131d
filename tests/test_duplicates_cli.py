"""``contrahash duplicates`` and ``/api/duplicates`` on a real collection: a folder of photos
with edited copies (half size, JPEG quality 35, 90 % crop, +20 % brightness) and a byte copy,
indexed with a small trained run."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

from contrahash.cli import app

runner = CliRunner()


def _photo(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:384, :512] / 384
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 3, 3)
        channels.append(0.5 + 0.5 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    return Image.fromarray((np.stack(channels, -1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def collection_dir(tmp_path_factory):
    from contrahash.config import resolve_config
    from contrahash.retrieval.collection import build_collection
    from contrahash.training.train import train_run

    root = tmp_path_factory.mktemp("dups")
    photos = root / "photos"
    (photos / "2020").mkdir(parents=True)
    for p in range(5):
        img = _photo(p)
        img.save(photos / f"p{p}.jpg", quality=90)
        w, h = img.size
        img.resize((w // 2, h // 2)).save(photos / "2020" / f"p{p}-half.jpg", quality=90)
        img.save(photos / "2020" / f"p{p}-q35.jpg", quality=35)
        img.crop((26, 19, 26 + 461, 19 + 346)).save(photos / "2020" / f"p{p}-crop.jpg")
        ImageEnhance.Brightness(img).enhance(1.2).save(photos / "2020" / f"p{p}-bright.jpg")
    shutil.copyfile(photos / "p0.jpg", photos / "2020" / "p0-copy.jpg")  # byte-identical
    cfg = resolve_config(None, [
        "method=itq", f"data.source={photos}", "data.protocol=custom",
        "data.protocol_options={query: 5, train: 21}", "backbone.name=tiny_cnn",
        "backbone.random_init=true", "backbone.image_size=64", "bits=[16]",
        f"cache.dir={root / 'cache'}", f"data.cache_dir={root / 'decoded'}"])
    run = train_run(cfg, root / "run").run_dir
    out = root / "coll"
    build_collection(run, str(photos), out)
    return out, photos


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].split("-")[0].removesuffix(".jpg")


def test_cli_groups_each_photo_with_its_edits(collection_dir):
    out, photos = collection_dir
    result = runner.invoke(app, ["duplicates", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["radius"] == 12 and doc["bits"] == 64 and set(doc) >= {"radius", "bits", "groups"}
    groups = doc["groups"]
    stems = [{_stem(m["path"]) for m in g} for g in groups]
    assert all(len(s) == 1 for s in stems)  # no group mixes two photos
    paths = {m["path"] for g in groups for m in g}
    indexed = {str(p) for p in photos.rglob("*.jpg")}
    assert paths <= indexed
    found = sum(len(g) for g in groups)
    assert found >= 0.9 * len(indexed)
    sizes = [len(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    for g in groups:
        assert g[0]["distance"] == 0 and all(0 <= m["distance"] <= 64 for m in g)
        assert set(g[0]) == {"id", "path", "distance", "exact"}
    p0 = next(g for g in groups if _stem(g[0]["path"]) == "p0")
    exact = {m["path"].rsplit("/", 1)[-1] for m in p0 if m["exact"]}
    assert exact in ({"p0.jpg", "p0-copy.jpg"}, set())  # set(): the copy was not stored twice
    text = runner.invoke(app, ["duplicates", str(out), "--radius", "0"])
    assert text.exit_code == 0 and "within radius 0" in text.output


def test_cli_refuses_bad_options(collection_dir):
    out, _ = collection_dir
    for args in (["--radius", "-1"], ["--radius", "65"], ["--bits", "48"]):
        result = runner.invoke(app, ["duplicates", str(out), *args])
        assert result.exit_code == 2, (args, result.output)
        assert "error:" in result.output and "Traceback" not in result.output


def test_the_service_on_a_real_collection(collection_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from contrahash.retrieval.collection import open_collection
    from contrahash.serve.app import create_app

    out, _ = collection_dir
    with open_collection(out) as coll, TestClient(create_app(coll)) as client:
        body = client.get("/api/duplicates", params={"per_page": 50}).json()
        cli = json.loads(runner.invoke(app, ["duplicates", str(out), "--json"]).output)
        assert [[m["id"] for m in g] for g in body["groups"]] == [
            [m["id"] for m in g] for g in cli["groups"]]
        member = body["groups"][0][0]
        assert member["album"] in ("", "2020")
        original = client.get(member["original_url"])
        assert original.status_code == 200
        assert original.content == open(coll.item(member["id"]).path, "rb").read()
        albums = {a["album"] for a in client.get("/api/albums").json()["albums"]}
        assert albums == {"", "2020"}
