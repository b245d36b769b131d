"""The search service's JSON API against a FakeCollection (tests/serve_fakes.py).

Most tests use the in-process TestClient; those whose point is the HTTP wire (a huge declared
Content-Length, a chunked body without length, un-normalised ``..`` paths that an HTTP client
would clean up) talk to a real uvicorn server through a raw socket. Every bad request is
followed by a good one to show the server keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import re
import select
import socket
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

with warnings.catch_warnings():  # starlette warns about httpx at import; the client works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from contrahash.serve.app import create_app, swagger_assets_dir
from contrahash.serve.batching import MicroBatcher
from contrahash.serve.settings import ServeSettings
from serve_fakes import (
    HTML_LABEL,
    HTML_LABEL_ID,
    SCRIPT_ID,
    SCRIPT_NAME,
    FakeCollection,
    jpeg_bytes,
    make_image,
    running_server,
)

SMALL_LIMIT = 256 * 1024


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fake() -> FakeCollection:
    return FakeCollection()


@pytest.fixture(scope="module")
def client(fake: FakeCollection):
    with TestClient(create_app(fake, ServeSettings(max_k=300))) as c:
        yield c


@pytest.fixture(scope="module")
def small_server(fake: FakeCollection):
    """A real uvicorn server whose upload limit is 256 KiB."""
    settings = ServeSettings(max_upload_bytes=SMALL_LIMIT, multipart_overhead_bytes=16 * 1024)
    with running_server(create_app(fake, settings)) as (url, port):
        yield url, port


def reference_hits(codes: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, int]]:
    """(id, distance) of the k nearest by brute force, ties by id (independent of the fake)."""
    dist = np.count_nonzero(codes != query[None, :], axis=1)
    return sorted(((int(i), int(d)) for i, d in enumerate(dist)), key=lambda t: (t[1], t[0]))[:k]


def hits_of(body: dict) -> list[tuple[int, int]]:
    return [(r["id"], r["distance"]) for r in body["results"]]


def upload(client, data: bytes, filename: str = "q.jpg", **form):
    return client.post("/api/search", files={"image": (filename, data, "image/jpeg")},
                       data={k: str(v) for k, v in form.items()})


def assert_still_serving(client, fake: FakeCollection) -> None:
    r = upload(client, fake.thumbnail(7), k=3)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0] == {**r.json()["results"][0], "id": 7, "distance": 0}


def png_bomb_header(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels but carries only a few rows of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * 2, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def raw_http(port: int, head: bytes, body_chunks=(), timeout: float = 10.0
             ) -> tuple[int, bytes, int]:
    """Send ``head`` then the chunks (stopping as soon as the server answers); return
    (status, response bytes, bytes of body sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        for chunk in body_chunks:
            if select.select([s], [], [], 0)[0]:
                break  # the server has answered: stop sending
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                header, _, rest = data.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in header.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ")[1]), data, sent


# ----------------------------------------------------------------------------- basics


def test_healthz_info_openapi(client, fake):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "count": 200, "bits": [16, 64]}
    info = client.get("/api/info").json()
    assert info["count"] == 200 and info["bits"] == [16, 64] and info["default_bits"] == 64
    assert info["max_k"] == 300 and info["token_required"] is False
    assert info["collection"]["run_id"] == "fake-run"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/items/{item_id}", "/api/items/{item_id}/thumbnail",
            "/api/random", "/api/info", "/api/reload", "/healthz"} <= set(paths)
    assert set(paths["/api/search"]) == {"get", "post"}
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert paths["/api/search"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_docs_work_offline(client):
    r = client.get("/docs")
    assert r.status_code == 200 and "swagger-ui" in r.text
    if swagger_assets_dir() is None:
        pytest.skip("swagger_ui_bundle not installed: /docs loads Swagger UI from a CDN")
    assert "cdn" not in r.text.lower() and "/docs-assets/swagger-ui-bundle.js" in r.text
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200


def test_page_and_assets_are_served_with_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>contrahash search</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="docs"', "")  # no external URL at all
    for asset in ("app.js", "style.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    js = client.get("/static/app.js").text
    assert not re.search(r"\.(innerHTML|outerHTML|insertAdjacentHTML)\b|document\.write", js)


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("bits", [16, 64])
def test_search_by_id_matches_brute_force(client, fake, bits):
    r = client.get("/api/search", params={"id": 42, "k": 10, "bits": bits})
    assert r.status_code == 200, r.text
    body = r.json()
    codes = fake.codes(bits)
    assert hits_of(body) == reference_hits(codes, codes[42], 10)
    assert body["bits"] == bits and body["k"] == 10 and body["count"] == 200
    assert body["query"]["kind"] == "id" and body["query"]["id"] == 42
    assert body["encode_ms"] is None and body["search_ms"] >= 0 and body["server_ms"] >= 0
    first = body["results"][0]
    assert first["id"] == 42 and first["distance"] == 0
    assert first["thumbnail_url"] == "/api/items/42/thumbnail"


def test_search_defaults_and_large_k(client, fake):
    body = client.get("/api/search", params={"id": 1}).json()
    assert body["bits"] == 64 and body["k"] == 24 and len(body["results"]) == 24
    body = client.get("/api/search", params={"id": 1, "k": 300}).json()
    assert len(body["results"]) == 200  # k above the collection size: every item once
    assert sorted(r["id"] for r in body["results"]) == list(range(200))


@pytest.mark.parametrize("bits", [16, 64])
def test_search_by_image_finds_the_item_and_matches_brute_force(client, fake, bits):
    data = fake.thumbnail(SCRIPT_ID)
    r = upload(client, data, k=8, bits=bits)
    assert r.status_code == 200, r.text
    body = r.json()
    query = fake._encode_pure([fake.decode_image(data)])[bits][0]
    assert hits_of(body) == reference_hits(fake.codes(bits), query, 8)
    assert (SCRIPT_ID, 0) in hits_of(body)
    assert body["query"] == {**body["query"], "kind": "image", "width": 32, "height": 32}
    assert body["encode_batch"] == 1 and body["encode_ms"] >= 0 and body["decode_ms"] >= 0
    names = {x["id"]: x["name"] for x in body["results"]}
    assert names[SCRIPT_ID] == SCRIPT_NAME  # JSON carries the raw name; the page escapes it


def test_search_by_image_k_and_bits_as_query_parameters(client, fake):
    r = client.post("/api/search?k=3&bits=16",
                    files={"image": ("q.jpg", fake.thumbnail(9), "image/jpeg")})
    assert r.status_code == 200 and r.json()["k"] == 3 and r.json()["bits"] == 16
    assert len(r.json()["results"]) == 3


def test_search_by_png_and_large_image(client, fake):
    buf = io.BytesIO()
    Image.fromarray(make_image(5, size=700)).save(buf, format="PNG")
    r = upload(client, buf.getvalue(), filename="big.png", k=5)
    assert r.status_code == 200, r.text
    assert r.json()["query"]["width"] == 700


def test_items_random_and_thumbnail(client, fake):
    r = client.get(f"/api/items/{HTML_LABEL_ID}")
    assert r.status_code == 200
    assert r.json() == {"id": HTML_LABEL_ID, "name": fake.item(HTML_LABEL_ID).name,
                        "labels": [HTML_LABEL], "album": "2020", "width": 32, "height": 32,
                        "thumbnail_url": f"/api/items/{HTML_LABEL_ID}/thumbnail",
                        "original_url": f"/api/items/{HTML_LABEL_ID}/original"}
    assert "path" not in r.json()  # the server-side path is never sent
    t = client.get("/api/items/3/thumbnail")
    assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert t.content == fake.thumbnail(3)
    assert "max-age" in t.headers["cache-control"] and t.headers["etag"]
    again = client.get("/api/items/3/thumbnail", headers={"If-None-Match": t.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    other = client.get("/api/items/3/thumbnail", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200
    ids = {client.get("/api/random").json()["id"] for _ in range(20)}
    assert len(ids) > 1 and all(0 <= i < 200 for i in ids)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["text", "truncated", "corrupt", "empty", "html", "zeros"])
def test_bad_uploads_are_422_and_server_keeps_serving(client, fake, case):
    good = jpeg_bytes(make_image(11, size=64))
    data = {
        "text": b"this is not an image",
        "truncated": good[: len(good) // 2],
        "corrupt": good[:20] + bytes(range(256)) * 8,
        "empty": b"",
        "html": b"<html><script>alert(1)</script></html>",
        "zeros": b"\x00" * 4096,
    }[case]
    r = upload(client, data, k=3)
    assert r.status_code == 422, (case, r.status_code, r.text)
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert_still_serving(client, fake)


def test_missing_image_field_is_422(client, fake):
    r = client.post("/api/search", data={"k": "3"})
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post("/api/search", content=b"raw bytes", headers={"content-type": "image/jpeg"})
    assert r.status_code == 422
    assert_still_serving(client, fake)


@pytest.mark.parametrize("size", [(100_000, 100_000), (3000, 3000)])
def test_decompression_bomb_is_422(client, fake, size):
    """A header declaring 10^10 pixels (Pillow's own bomb error) and a real 9-Mpixel PNG over
    the collection's 4-Mpixel limit: both refused before decoding."""
    if size[0] == 100_000:
        data = png_bomb_header(*size)
    else:
        buf = io.BytesIO()
        Image.new("L", size).save(buf, format="PNG")
        data = buf.getvalue()
    assert len(data) < 200_000
    r = upload(client, data, filename="bomb.png")
    assert r.status_code == 422, r.text
    assert "pixels" in r.json()["detail"] or "bomb" in r.json()["detail"]
    assert_still_serving(client, fake)


def test_upload_over_limit_is_413(fake):
    settings = ServeSettings(max_upload_bytes=50_000, multipart_overhead_bytes=4096)
    with TestClient(create_app(fake, settings)) as c:
        r = upload(c, b"\xff\xd8" + b"\x00" * 60_000)
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # a file just over the limit inside a body under the body cap: the handler's check
        r = upload(c, b"\xff\xd8" + b"\x00" * 50_500)
        assert r.status_code == 413
        assert_still_serving(c, fake)


def test_huge_declared_length_is_refused_before_reading(small_server, fake):
    _, port = small_server
    head = (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    start = time.monotonic()
    status, data, _ = raw_http(port, head, [b"--b\r\n"])
    assert status == 413 and b"limit" in data
    assert time.monotonic() - start < 5  # answered at once, not after a terabyte
    assert httpx.get(f"{small_server[0]}/healthz").status_code == 200


def test_chunked_body_without_length_is_cut_at_the_limit(small_server, fake):
    _, port = small_server
    head = (b"POST /api/search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    piece = 32 * 1024
    chunk = f"{piece:x}\r\n".encode() + b"\x00" * piece + b"\r\n"
    first = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
             b"Content-Type: image/jpeg\r\n\r\n")
    chunks = [f"{len(first):x}\r\n".encode() + first + b"\r\n"] + [chunk] * 2000  # ~64 MiB
    status, data, sent = raw_http(port, head, chunks)
    assert status == 413, data[:300]
    assert sent < 16 * 1024 * 1024  # the server stopped reading long before the end
    with httpx.Client(base_url=small_server[0]) as c:
        assert_still_serving(c, fake)


def test_body_reading_stops_at_the_cap_even_when_the_length_lies(fake):
    """ASGI level: a body declared as 100 bytes that never ends is read only up to the cap."""
    settings = ServeSettings(max_upload_bytes=100_000, multipart_overhead_bytes=0)
    app = create_app(fake, settings)
    handed_out = 0
    piece = 8192

    async def receive():
        nonlocal handed_out
        handed_out += piece
        body = (b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\n"
                if handed_out == piece else b"\x00" * piece)
        return {"type": "http.request", "body": body, "more_body": True}

    messages = []

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/search", "raw_path": b"/api/search",
             "query_string": b"", "root_path": "", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "headers": [
                 (b"content-length", b"100"),
                 (b"content-type", b"multipart/form-data; boundary=b")]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert messages[0]["status"] == 413
    assert handed_out <= 100_000 + 2 * piece


@pytest.mark.parametrize("params, status", [
    ({"id": 1, "k": 0}, 422), ({"id": 1, "k": -5}, 422), ({"id": 1, "k": 301}, 422),
    ({"id": 1, "k": 10**30}, 422), ({"id": 1, "k": "ten"}, 422), ({"id": 1, "k": "1.5"}, 422),
    ({"id": 1, "bits": 32}, 422), ({"id": 1, "bits": "x"}, 422), ({"id": 1, "bits": -64}, 422),
    ({"id": 200}, 404), ({"id": 10**12}, 404), ({"id": -1}, 422), ({"id": 10**30}, 422),
    ({"id": "abc"}, 422), ({"id": ""}, 422), ({"id": "1e3"}, 422), ({}, 422),
])
def test_bad_search_parameters(client, fake, params, status):
    r = client.get("/api/search", params=params)
    assert r.status_code == status, (params, r.text)
    assert isinstance(r.json()["detail"], str)
    assert client.get("/api/search", params={"id": 2, "k": 2}).status_code == 200


@pytest.mark.parametrize("form", [{"k": 0}, {"k": 301}, {"k": "x"}, {"bits": 8},
                                  {"bits": "../../etc/passwd"}])
def test_bad_upload_parameters(client, fake, form):
    r = upload(client, fake.thumbnail(1), **form)
    assert r.status_code == 422, r.text
    r = client.post("/api/search?" + "&".join(f"{k}={v}" for k, v in form.items()),
                    files={"image": ("q.jpg", fake.thumbnail(1), "image/jpeg")})
    assert r.status_code == 422, r.text
    assert_still_serving(client, fake)


@pytest.mark.parametrize("path, status", [
    ("/api/items/200", 404), ("/api/items/-1", 422), ("/api/items/abc", 422),
    ("/api/items/1.5", 422), ("/api/items/200/thumbnail", 404), ("/api/items/x/thumbnail", 422),
    ("/api/nothing", 404),
])
def test_bad_item_requests(client, path, status):
    r = client.get(path)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str)


@pytest.mark.parametrize("path, item_id", [
    ("/api/items/200", 200), ("/api/items/987654321/thumbnail", 987654321),
    ("/api/search?id=201", 201), ("/api/items/202/original", 202)])
def test_an_unknown_item_is_404_naming_its_id(client, path, item_id):
    r = client.get(path)
    assert r.status_code == 404, r.text
    assert r.json()["detail"].startswith(f"unknown item id {item_id}:"), r.text


class _BuggyCollection(FakeCollection):
    """A collection whose lookups hit an internal bug: a bare KeyError (a missing dict key)."""

    def item(self, item_id: int):  # noqa: ANN201
        return {}["album"]


def test_an_internal_key_error_is_a_logged_500_not_an_unknown_item(caplog):
    buggy = _BuggyCollection(n=4)
    with TestClient(create_app(buggy, ServeSettings()), raise_server_exceptions=False) as c:
        with caplog.at_level("ERROR", logger="contrahash.serve.app"):
            r = c.get("/api/items/1")
    assert r.status_code == 500, r.text
    assert "unknown item" not in r.text and r.json()["detail"].startswith("internal server error")
    logged = [rec for rec in caplog.records if rec.name == "contrahash.serve.app"]
    assert logged and logged[0].exc_info[0] is KeyError, caplog.text
    assert "GET /api/items/1" in logged[0].getMessage()


TRAVERSALS = [
    "/api/items/../../etc/passwd", "/api/items/..%2f..%2fetc%2fpasswd",
    "/api/items/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/items/%2e%2e/%2e%2e/etc/passwd",
    "/api/items/%2Fetc%2Fpasswd", "/api/items//etc/passwd",
    "/api/items/..%2f..%2fetc%2fpasswd/thumbnail", "/api/items/%2fetc%2fpasswd/thumbnail",
    "/api/items/..%252f..%252fetc%252fpasswd/thumbnail",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static//etc/passwd",
    "/static/%2fetc%2fpasswd", "/docs-assets/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/docs-assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/etc/passwd",
    "/api/search?id=../../etc/passwd", "/api/search?id=%2Fetc%2Fpasswd",
    "/api/search?id=1&k=/etc/passwd", "/api/search?id=1&bits=..%2F..%2Fetc%2Fpasswd",
    "/api/search?id=%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/api/search?id=file:///etc/passwd",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_no_request_reads_a_file(small_server, fake, target):
    """Raw request targets (no client-side normalisation of ``..``): never 200, never a file."""
    _, port = small_server
    status, data, _ = raw_http(port, f"GET {target} HTTP/1.1\r\nHost: x\r\n"
                                     "Connection: close\r\n\r\n".encode())
    assert status in (400, 404, 422), (target, data[:300])
    assert b"root:" not in data and b"/bin/" not in data


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/etc/passwd",
                                      "..%2f..%2fetc%2fpasswd", "C:\\Windows\\win.ini"])
def test_multipart_filename_is_ignored(client, fake, filename):
    ok = upload(client, fake.thumbnail(12), filename=filename, k=4)
    assert ok.status_code == 200 and ok.json()["results"][0]["id"] == 12
    assert filename not in ok.text
    bad = upload(client, b"not an image", filename=filename)
    assert bad.status_code == 422 and b"root:" not in bad.content


# ----------------------------------------------------------------------------- token


def test_token_protects_every_api_route(fake):
    with TestClient(create_app(fake, ServeSettings(token="s3cret"))) as c:
        routes = [("GET", "/api/info"), ("GET", "/api/search?id=1"), ("GET", "/api/items/1"),
                  ("GET", "/api/items/1/thumbnail"), ("GET", "/api/random"),
                  ("POST", "/api/reload")]
        for method, path in routes:
            r = c.request(method, path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
            wrong = c.request(method, path, headers={"Authorization": "Bearer s3cre"})
            assert wrong.status_code == 401
            basic = c.request(method, path, headers={"Authorization": "Basic czNjcmV0"})
            assert basic.status_code == 401
            in_query = c.request(method, path + ("&" if "?" in path else "?") + "token=s3cret")
            assert in_query.status_code == 401  # the token travels in a header only
            right = c.request(method, path, headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200, (path, right.text)
        r = c.post("/api/search", files={"image": ("q.jpg", fake.thumbnail(1), "image/jpeg")})
        assert r.status_code == 401
        assert c.get("/healthz").status_code == 200  # open on purpose
        # the token is checked before the body is read: no 413, no parsing, no waiting
        r = c.post("/api/search", content=b"x" * 100,
                   headers={"content-length": str(10**12), "content-type": "image/jpeg"})
        assert r.status_code == 401
        r = c.get("/api/info", headers={"Authorization": "bearer   s3cret "})
        assert r.status_code == 200  # scheme is case-insensitive, spaces around ignored
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        assert c.get("/api/info", headers={"Authorization": "Bearer s3cret"}
                     ).json()["token_required"] is True
        thumb = c.get("/api/items/1/thumbnail", headers={"Authorization": "Bearer s3cret"})
        assert thumb.headers["cache-control"].startswith("private")


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="max_k"):
        ServeSettings(max_k=0)
    with pytest.raises(ValueError, match="token"):
        ServeSettings(token="  ")
    with pytest.raises(ValueError, match="default_k"):
        ServeSettings(max_k=10, default_k=11)


# ----------------------------------------------------------------------------- reload


def test_reload_adds_items_without_restart():
    fake = FakeCollection(n=50)
    with TestClient(create_app(fake)) as c:
        assert c.post("/api/reload").json() == {"changed": False, "count": 50, "bits": [16, 64]}
        assert c.get("/api/items/50").status_code == 404
        fake.stage([1000, 1001, 1002])
        assert c.post("/api/reload").json() == {"changed": True, "count": 53, "bits": [16, 64]}
        assert c.get("/healthz").json()["count"] == 53
        assert c.get("/api/items/52").status_code == 200
        r = upload(c, jpeg_bytes(make_image(1002)), k=1)
        assert r.json()["results"][0] == {**r.json()["results"][0], "id": 52, "distance": 0}
        assert c.get("/api/search", params={"id": 51, "k": 1}).json()["results"][0]["id"] == 51


def test_automatic_reload_and_restart_of_the_same_app():
    fake = FakeCollection(n=20)
    app = create_app(fake, ServeSettings(reload_interval_s=0.05))
    with TestClient(app) as c:
        fake.stage([77])
        deadline = time.monotonic() + 5
        while c.get("/healthz").json()["count"] != 21 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/healthz").json()["count"] == 21
        assert upload(c, fake.thumbnail(20), k=1).json()["results"][0]["id"] == 20
    with TestClient(app) as c:  # a second start of the same app still decodes and encodes
        assert upload(c, fake.thumbnail(4), k=1).json()["results"][0]["id"] == 4


def test_reload_while_a_search_is_running_keeps_the_old_data_for_it():
    fake = FakeCollection(n=40)
    fake.search_hook = threading.Event()
    app = create_app(fake, ServeSettings(search_in_thread=True))
    with running_server(app) as (url, _):
        result: dict = {}

        def slow_search() -> None:
            result["r"] = httpx.get(f"{url}/api/search", params={"id": 0, "k": 100}, timeout=20)

        thread = threading.Thread(target=slow_search)
        thread.start()
        assert fake.search_entered.wait(10)  # the search now waits holding the old data
        fake.stage([500, 501])
        reload = httpx.post(f"{url}/api/reload", timeout=10)  # not blocked by the search
        assert reload.json()["changed"] is True and reload.json()["count"] == 42
        fake.search_hook.set()
        thread.join(20)
        assert len(result["r"].json()["results"]) == 40  # finished on the old 40 items
        after = httpx.get(f"{url}/api/search", params={"id": 0, "k": 100}).json()
        assert len(after["results"]) == 42


# ----------------------------------------------------------------------------- batching


async def _concurrent_uploads(app, payloads: list[bytes], **form) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await asyncio.gather(*[
            c.post("/api/search", files={"image": ("q.jpg", p, "image/jpeg")},
                   data={k: str(v) for k, v in form.items()}) for p in payloads])


def test_concurrent_uploads_are_batched_and_equal_unbatched_results():
    fake = FakeCollection(encode_delay_s=0.05)
    ids = [3, 17, 42, 99, 123, 150, 180, 199, 5, 60, 61, 62]
    payloads = [fake.thumbnail(i) for i in ids]
    app = create_app(fake, ServeSettings(batch_window_ms=30, batch_max_size=8))
    batched = asyncio.run(_concurrent_uploads(app, payloads, k=6))
    assert all(r.status_code == 200 for r in batched)
    assert sum(fake.encode_batches) == len(ids)
    assert len(fake.encode_batches) < len(ids) and max(fake.encode_batches) > 1
    assert max(fake.encode_batches) <= 8
    assert max(r.json()["encode_batch"] for r in batched) > 1
    # each upload was prepared for the encoder on a decoding thread, not in the encoder thread
    assert len(fake.prepared_threads) == len(ids)
    assert all(name.startswith("decode") for name in fake.prepared_threads)

    solo_fake = FakeCollection()
    solo_app = create_app(solo_fake, ServeSettings(batch_window_ms=0, batch_max_size=1))
    with TestClient(solo_app) as c:
        unbatched = [upload(c, p, k=6).json() for p in payloads]
    assert set(solo_fake.encode_batches) == {1}
    for i, b, u in zip(ids, batched, unbatched, strict=True):
        assert hits_of(b.json()) == hits_of(u) and (i, 0) in hits_of(u)


def test_encoding_does_not_block_the_event_loop():
    fake = FakeCollection(encode_delay_s=1.2)
    app = create_app(fake)

    async def scenario() -> tuple[float, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            slow = asyncio.create_task(c.post(
                "/api/search", files={"image": ("q.jpg", fake.thumbnail(1), "image/jpeg")}))
            while not fake.encode_batches:  # wait until the encode is running
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            health = await c.get("/healthz")
            by_id = await c.get("/api/search", params={"id": 3, "k": 5})
            elapsed = time.perf_counter() - start
            assert health.status_code == 200 and by_id.status_code == 200
            return elapsed, (await slow).status_code

    elapsed, status = asyncio.run(scenario())
    assert status == 200
    assert elapsed < 0.8  # did not wait for the 1.2 s encode


def test_micro_batcher_isolates_failures_and_keeps_order():
    def double(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError(f"negative in {items}")
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(double, max_batch=4, window_s=0.05)

    async def scenario():
        results = await asyncio.gather(*[batcher.submit(i) for i in [1, 2, -3, 4, 5, 6]],
                                       return_exceptions=True)
        await batcher.aclose()
        return results

    results = asyncio.run(scenario())
    assert [r.value for r in results if not isinstance(r, Exception)] == [2, 4, 8, 10, 12]
    assert isinstance(results[2], ValueError)
    assert batcher.batch_sizes[:2] == [4, 2]  # full batch at once, then the rest
    assert all(s <= 4 for s in batcher.batch_sizes)


@hypothesis_settings(max_examples=30, deadline=None)
@given(items=st.lists(st.integers(-1000, 1000), min_size=1, max_size=40),
       max_batch=st.integers(1, 9), window_ms=st.sampled_from([0.0, 1.0]))
def test_micro_batcher_property(items, max_batch, window_ms):
    """Any submission pattern: every caller gets f(its own item); batches never exceed
    max_batch and cover every item exactly once."""
    seen: list[int] = []

    def square(xs: list[int]) -> list[int]:
        seen.extend(xs)
        return [x * x for x in xs]

    batcher: MicroBatcher[int, int] = MicroBatcher(square, max_batch=max_batch,
                                                   window_s=window_ms / 1000)

    async def scenario():
        out = await asyncio.gather(*[batcher.submit(x) for x in items])
        await batcher.aclose()
        return out

    results = asyncio.run(scenario())
    assert [r.value for r in results] == [x * x for x in items]
    assert sorted(seen) == sorted(items)
    assert sum(batcher.batch_sizes) == len(items) and max(batcher.batch_sizes) <= max_batch
    assert all(r.batch_size <= max_batch for r in results)


def test_micro_batcher_lone_request_waits_at_most_the_window():
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=64, window_s=0.02)

    async def scenario() -> float:
        start = time.perf_counter()
        assert (await batcher.submit(7)).value == 7
        elapsed = time.perf_counter() - start
        await batcher.aclose()
        return elapsed

    assert asyncio.run(scenario()) < 0.5
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, max_batch=0)


# ----------------------------------------------------------------------------- CLI


def test_serve_command_opens_the_collection_and_binds_loopback(monkeypatch, tmp_path):
    import sys
    import types

    import torch
    import typer
    import uvicorn
    from typer.testing import CliRunner

    import contrahash.runtime
    from contrahash.cli.common import guarded
    from contrahash.cli.serve import serve_command

    opened: list[FakeCollection] = []
    module = types.ModuleType("contrahash.retrieval.collection")

    def open_collection(path):
        opened.append(FakeCollection(n=20))
        opened[-1].path = Path(path)
        return opened[-1]

    # the command gives the main thread one OpenMP thread: not this test process's
    team_sizes: list[int] = []
    monkeypatch.setattr(contrahash.runtime, "use_threads_in_this_thread", team_sizes.append)

    module.open_collection = open_collection  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "contrahash.retrieval.collection", module)
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    cli = typer.Typer()
    cli.command()(guarded(serve_command))
    runner = CliRunner()

    result = runner.invoke(cli, [str(tmp_path)], env={"CONTRAHASH_TOKEN": "envtok"})
    assert result.exit_code == 0, result.output
    assert [c.path for c in opened] == [tmp_path]
    assert calls[-1]["host"] == "127.0.0.1" and calls[-1]["port"] == 8000
    settings = calls[-1]["app"].state.serve.settings
    assert settings.token == "envtok" and settings.warm_up
    assert team_sizes == [1] and settings.encode_threads == torch.get_num_threads()
    assert getattr(opened[-1], "closed", False)  # closed when the server stops
    from contrahash.serve.connections import HeadTimeoutH11Protocol

    assert issubclass(calls[-1]["http"], HeadTimeoutH11Protocol)
    assert calls[-1]["http"].head_timeout_s == settings.header_timeout_s == 10.0

    result = runner.invoke(cli, [str(tmp_path), "--port", "9123", "--max-upload-mb", "2",
                                 "--token", "cli"], env={"CONTRAHASH_TOKEN": ""})
    settings = calls[-1]["app"].state.serve.settings
    assert calls[-1]["port"] == 9123 and settings.token == "cli"
    assert settings.max_upload_bytes == 2 * 1024 * 1024
    runner.invoke(cli, [str(tmp_path), "--header-timeout", "2.5"])
    assert calls[-1]["http"].head_timeout_s == 2.5

    result = runner.invoke(cli, ["no-such-collection-dir"])
    assert result.exit_code != 0 and "is not a directory" in result.output


# ----------------------------------------------------------------------------- load benchmark


def test_load_benchmark_runs_against_the_fake():
    """benchmarks/serve_load.py end to end with tiny counts: server subprocess, both phases,
    the one final line."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    out = subprocess.run(
        [sys.executable, str(script), "--fake", "--requests", "60", "--warmup", "5",
         "--images", "20", "--concurrency-id", "4", "--concurrency-image", "2",
         "--max-seconds", "30"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    fields = dict(part.split("=") for part in last.split())
    assert list(fields) == ["serve_id_qps", "serve_id_p99_ms", "serve_image_qps",
                            "serve_image_p50_ms", "serve_image_p99_ms", "errors"]
    assert fields["errors"] == "0" and float(fields["serve_id_qps"]) > 0
    assert "60 ok + 0 errors" in out.stderr


def test_encoder_thread_gets_the_threads_and_the_others_one():
    """With ``encode_threads`` set, the batcher's thread runs torch on that many threads while
    the thread that called use_threads_in_this_thread(1) keeps one, whatever order they start
    in (torch applies its *last* set_num_threads to a thread's first op). In a subprocess:
    the counts are per thread but torch's default for new threads is process-wide."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import asyncio, torch
        from contrahash.runtime import use_threads_in_this_thread
        from contrahash.serve.app import _threads_initializer
        from contrahash.serve.batching import MicroBatcher
        use_threads_in_this_thread(1)
        batcher = MicroBatcher(lambda xs: [torch.get_num_threads() for _ in xs],
                               initializer=_threads_initializer(2))
        async def main():
            out = await batcher.submit(0)
            await batcher.aclose()
            return out.value
        inside = asyncio.run(main())
        print(inside, torch.get_num_threads(), _threads_initializer(None))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["2", "1", "None"]
    with pytest.raises(ValueError, match="encode_threads"):
        ServeSettings(encode_threads=0)


def test_warm_up_decodes_and_encodes_one_image_at_start_up_and_never_blocks_it():
    """``warm_up``: one encoder batch of one image before the first request; a collection
    whose decoder fails still starts and serves."""
    fake = FakeCollection(n=20)
    with TestClient(create_app(fake, ServeSettings(warm_up=True))) as client:
        assert fake.encode_batches == [1]
        assert client.get("/api/search", params={"id": 3, "k": 2}).status_code == 200

    def missing_decoder(data: bytes) -> np.ndarray:
        raise RuntimeError("decoder missing")

    broken = FakeCollection(n=20)
    broken.decode_image = missing_decoder  # type: ignore[method-assign]
    with TestClient(create_app(broken, ServeSettings(warm_up=True))) as client:
        assert broken.encode_batches == []
        assert client.get("/healthz").status_code == 200
