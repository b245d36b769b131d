"""The service's everyday-use features against the FakeCollection: paging past k without
re-encoding, the album filter, the distance threshold, originals by id, duplicate groups,
albums, removed items, ``HEAD /healthz``, one file per upload, the query's real size, and
the deadline on request heads (raw sockets on 127.0.0.1)."""

from __future__ import annotations

import io
import socket
import time
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette warns about httpx at import; the client works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from contrahash.serve.app import create_app
from contrahash.serve.connections import head_timeout_protocol
from contrahash.serve.settings import ServeSettings
from serve_fakes import ALBUMS, FakeCollection, jpeg_bytes, make_image, running_server

N, DUPS = 80, 8


@pytest.fixture(scope="module")
def fake() -> FakeCollection:
    return FakeCollection(n=N, duplicates=DUPS)


@pytest.fixture(scope="module")
def client(fake):
    with TestClient(create_app(fake, ServeSettings(max_k=300, duplicates_per_page=2))) as c:
        yield c


def ranking(fake: FakeCollection, query: np.ndarray, bits: int) -> list[tuple[int, int]]:
    """(id, distance) of every live item by brute force, ties by id (not the fake's _rank)."""
    codes = fake.codes(bits)
    dist = np.count_nonzero(codes != query[None, :], axis=1)
    live = set(int(i) for i in fake.live_ids())
    return sorted(((i, int(d)) for i, d in enumerate(dist) if i in live),
                  key=lambda t: (t[1], t[0]))


def hits(body: dict) -> list[tuple[int, int]]:
    return [(r["id"], r["distance"]) for r in body["results"]]


def in_album(album: str | None, wanted: str) -> bool:
    return album is not None and (album == wanted or (wanted != "" and album.startswith(
        wanted + "/")))


def test_pages_of_an_upload_without_encoding_again(client, fake):
    upload = fake.thumbnail(9)
    r = client.post("/api/search?k=7", files={"image": ("q.jpg", upload, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    codes = body["query"]["codes"]
    assert set(codes) == {"16", "64"}
    query = fake.encode([fake.decode_image(upload)])[64][0]
    full = ranking(fake, query, 64)
    assert hits(body) == full[:7] and body["more"] is True and body["offset"] == 0
    batches = len(fake.encode_batches)
    pages = []
    for offset in range(0, 35, 7):
        r = client.get("/api/search", params={"code": codes["64"], "k": 7, "offset": offset})
        assert r.status_code == 200, r.text
        assert r.json()["query"]["kind"] == "code" and r.json()["offset"] == offset
        pages += hits(r.json())
    assert pages == full[:35]
    assert len(fake.encode_batches) == batches  # no encoding for further pages
    # the 16-bit code of the same upload pages at 16 bits
    r = client.get("/api/search", params={"code": codes["16"], "bits": 16, "k": 5, "offset": 3})
    assert hits(r.json()) == ranking(fake, fake.encode([fake.decode_image(upload)])[16][0],
                                     16)[3:8]
    last = client.get("/api/search", params={"code": codes["64"], "k": 7,
                                              "offset": len(full) - 3}).json()
    assert len(last["results"]) == 3 and last["more"] is False


def test_bad_codes_and_pages_are_refused(client):
    for params in ({"code": "zz" * 8}, {"code": "ab"}, {"code": "ab" * 8, "id": 1}, {},
                   {"id": 1, "offset": 9_999, "k": 24}):
        r = client.get("/api/search", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"]
    assert client.get("/api/search", params={"id": 1}).status_code == 200


@pytest.mark.parametrize("album", ["2020", "2020/summer", "", "2019"])
def test_album_filter_keeps_the_ranking_of_the_album(client, fake, album):
    full = ranking(fake, fake.codes(64)[4], 64)
    expected = [h for h in full if in_album(fake.item(h[0]).album, album)]
    got = []
    for offset in (0, 6, 12):
        r = client.get("/api/search", params={"id": 4, "k": 6, "offset": offset,
                                               "album": album})
        assert r.status_code == 200, r.text
        got += hits(r.json())
        assert all(in_album(x["album"], album) for x in r.json()["results"])
    assert got == expected[:18]
    if album == "2020":  # the album includes its sub-album
        assert {fake.item(i).album for i, _ in got} == {"2020", "2020/summer"}


def test_distance_threshold(client, fake):
    full = ranking(fake, fake.codes(64)[11], 64)
    d = full[12][1]
    expected = [h for h in full if h[1] <= d]
    r = client.get("/api/search", params={"id": 11, "k": 300, "max_distance": d})
    assert hits(r.json()) == expected and r.json()["more"] is False
    r = client.get("/api/search", params={"id": 11, "k": 5, "max_distance": d, "album": "2019"})
    assert hits(r.json()) == [h for h in expected if fake.item(h[0]).album == "2019"][:5]
    r = client.post("/api/search?max_distance=0&k=50",
                    files={"image": ("q.jpg", fake.thumbnail(11), "image/jpeg")})
    assert all(x["distance"] == 0 for x in r.json()["results"]) and r.json()["results"]


def test_item_fields_and_the_original_by_id(client, fake):
    item = client.get("/api/items/6").json()
    assert item["album"] == ALBUMS[6 % 4] and item["width"] == 32
    assert "path" not in item and "/data/images" not in str(item)
    r = client.get(item["original_url"])
    assert r.status_code == 200 and r.content == fake.original_path(6).read_bytes()
    assert r.headers["content-type"] == "image/jpeg"
    assert client.get("/api/items/999999/original").status_code == 404
    for bad in ("/api/items/..%2F..%2Fetc%2Fpasswd/original", "/api/items/-1/original"):
        assert client.get(bad).status_code in (404, 422)


def test_original_needs_the_token(fake):
    with TestClient(create_app(fake, ServeSettings(token="s3cret"))) as c:
        assert c.get("/api/items/2/original").status_code == 401
        r = c.get("/api/items/2/original", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.content == fake.original_path(2).read_bytes()
        assert c.get("/api/duplicates").status_code == 401


def reference_groups(fake: FakeCollection, radius: int) -> list[set[int]]:
    ids, codes = fake.perceptual_codes()
    bits = np.unpackbits(codes, axis=1)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    parent = list(range(len(ids)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in zip(*np.nonzero(dist <= radius), strict=True):
        parent[root(int(a))] = root(int(b))
    comps: dict[int, set[int]] = {}
    for p in range(len(ids)):
        comps.setdefault(root(p), set()).add(int(ids[p]))
    return [c for c in comps.values() if len(c) > 1]


def test_duplicates_pages_and_matches_a_reference(client, fake):
    first = client.get("/api/duplicates").json()
    assert first["codes"] == "perceptual" and first["bits"] == 64 and first["radius"] == 12
    groups = []
    for page in range(1, first["pages"] + 1):
        body = client.get("/api/duplicates", params={"page": page}).json()
        assert len(body["groups"]) <= 2
        groups += body["groups"]
    assert len(groups) == first["total_groups"] >= 3
    assert {frozenset(m["id"] for m in g) for g in groups} == {
        frozenset(c) for c in reference_groups(fake, 12)}
    sizes = [len(g) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    exact = {frozenset(m["id"] for m in g) for g in groups if all(m["exact"] for m in g)}
    assert frozenset({0, N}) in exact  # item N is a byte copy of item 0
    for g in groups:
        assert g[0]["distance"] == 0 and all("thumbnail_url" in m for m in g)
    wide = client.get("/api/duplicates", params={"radius": 30, "per_page": 200}).json()
    assert {frozenset(m["id"] for m in g) for g in wide["groups"]} == {
        frozenset(c) for c in reference_groups(fake, 30)}
    semantic = client.get("/api/duplicates", params={"bits": 16, "radius": 0}).json()
    assert semantic["codes"] == "semantic" and semantic["bits"] == 16
    for params in ({"radius": 65}, {"bits": 32}, {"page": 0}, {"radius": -1}):
        assert client.get("/api/duplicates", params=params).status_code == 422, params


def test_albums(client, fake):
    body = client.get("/api/albums").json()
    counts = {a["album"]: a["count"] for a in body["albums"]}
    expected: dict[str, int] = {}
    for i in fake.live_ids():
        expected[fake.item(int(i)).album] = expected.get(fake.item(int(i)).album, 0) + 1
    assert counts == expected


def test_removed_items_are_never_returned():
    fake = FakeCollection(n=40, duplicates=6)
    with TestClient(create_app(fake, ServeSettings())) as c:
        before = c.get("/api/duplicates").json()
        assert any(m["id"] == 40 for g in before["groups"] for m in g)
        fake.remove([0, 40])
        assert c.post("/api/reload").json()["changed"] is True
        for url in ("/api/items/40", "/api/items/40/thumbnail", "/api/items/40/original",
                    "/api/search?id=40"):
            assert c.get(url).status_code == 404, url
        after = c.get("/api/duplicates", params={"per_page": 200}).json()
        assert not any(m["id"] in (0, 40) for g in after["groups"] for m in g)
        r = c.get("/api/search", params={"id": 1, "k": 46})
        assert not {0, 40} & {x["id"] for x in r.json()["results"]}
        assert len(r.json()["results"]) == 44  # 46 items, 2 removed


def test_head_healthz_and_one_file_per_upload(client, fake):
    r = client.head("/healthz")
    assert r.status_code == 200 and r.content == b""
    one = fake.thumbnail(1)
    r = client.post("/api/search", files=[("image", ("a.jpg", one, "image/jpeg")),
                                          ("image", ("b.jpg", one, "image/jpeg"))])
    assert r.status_code == 422 and "one image per upload" in r.json()["detail"]
    r = client.post("/api/search", files=[("image", ("a.jpg", one, "image/jpeg")),
                                          ("other", ("b.jpg", one, "image/jpeg"))])
    assert r.status_code == 422
    assert client.post("/api/search", files={"image": ("a.jpg", one, "image/jpeg")}
                       ).status_code == 200


def test_the_query_size_is_the_uploads_own(client):
    pixels = make_image(5, size=64)
    wide = np.asarray(Image.fromarray(pixels).resize((160, 120)))
    r = client.post("/api/search", files={"image": ("w.jpg", jpeg_bytes(wide), "image/jpeg")})
    assert (r.json()["query"]["width"], r.json()["query"]["height"]) == (160, 120)
    img = Image.fromarray(wide)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: displayed 120 wide, 160 high
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    r = client.post("/api/search", files={"image": ("r.jpg", buf.getvalue(), "image/jpeg")})
    assert (r.json()["query"]["width"], r.json()["query"]["height"]) == (120, 160)


def test_favicon(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.content.startswith(b"<svg")


# ----------------------------------------------------------------------------- head deadline


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_connections_without_a_request_head_are_closed(fake):
    app = create_app(fake, ServeSettings())
    with running_server(app, http=head_timeout_protocol(0.5)) as (_, port):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
        partial = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for s in partial:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        slow.sendall(b"Host: x\r\nConnection: close\r\n\r\n")  # finished in time: answered
        start = time.monotonic()
        assert all(_closed_within(s, 3.0) for s in idle + partial)
        assert time.monotonic() - start < 4.0
        answer = b""
        slow.settimeout(3.0)
        while chunk := slow.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        # a kept-alive connection gets a new deadline after its response
        keep = socket.create_connection(("127.0.0.1", port))
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        keep.settimeout(3.0)
        assert keep.recv(4096).startswith(b"HTTP/1.1 200")
        keep.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a second request
        assert _closed_within(keep, 3.0)
        for s in [*idle, *partial, slow, keep]:
            s.close()
        with socket.create_connection(("127.0.0.1", port)) as ok:
            ok.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ok.settimeout(3.0)
            assert ok.recv(4096).startswith(b"HTTP/1.1 200")


def test_a_collection_without_perceptual_codes_gets_a_clear_422():
    fake = FakeCollection(n=12)
    fake.perceptual_codes = lambda: (fake.live_ids(), np.zeros((12, 0), np.uint8))
    with TestClient(create_app(fake, ServeSettings())) as c:
        r = c.get("/api/duplicates")
        assert r.status_code == 422 and "index sync" in r.json()["detail"]
        assert c.get("/api/duplicates", params={"bits": 16}).status_code == 200


def test_derived_values_are_computed_once_per_snapshot_and_bounded():
    import asyncio

    fake = FakeCollection(n=12)
    app = create_app(fake, ServeSettings())
    state = app.state.serve
    calls: list[int] = []

    def compute(x: int):
        calls.append(x)
        return x * 10

    async def scenario():
        same = await asyncio.gather(*(state.derived("a", lambda: compute(1)) for _ in range(5)))
        assert same == [10] * 5 and calls == [1]
        for k in range(20):
            await state.derived(("r", k), lambda k=k: compute(k))
        assert len(state._derived) <= state.max_derived
        state.generation += 1  # a reload that changed the collection
        assert await state.derived("a", lambda: compute(2)) == 20
        assert len(state._derived) == 1

    asyncio.run(scenario())
