"""What only a real Milvus server has: loopback-only traffic, BIN_IVF_FLAT, restarts, one
server per machine (tests/conftest.py: ``milvus_server``, the session's standalone server)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("pymilvus", reason="MilvusIndex needs pip install 'contrahash[milvus]'")
faiss = pytest.importorskip("faiss", reason="the reference is faiss' IndexBinaryFlat")

from contrahash.retrieval.milvus import MilvusError, MilvusIndex  # noqa: E402
from contrahash.retrieval.milvus_server import COMPONENTS, LocalMilvusServer, MilvusServerError  # noqa: E402

pytestmark = pytest.mark.timeout(300)
TCP_STATES = {"01": "ESTABLISHED", "0A": "LISTEN"}


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6} (little-endian 32-bit words) as an ip address."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def sockets_of(pid: int) -> list[tuple[str, object, object]]:
    """(state, local address, remote address) of every TCP socket the process holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                local, remote = (_address(f.split(":")[0]) for f in fields[1:3])
                out.append((TCP_STATES.get(fields[3], fields[3]), local, remote))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_every_connection_of_the_server_is_on_loopback(milvus_server):
    config = yaml.safe_load((milvus_server.base_dir / "configs" / "milvus.yaml").read_text())
    with MilvusIndex(milvus_server.uri, 8, "loopback") as index:  # a client connection too
        index.add(np.eye(8, dtype=bool))
        assert index.search(np.eye(8, dtype=bool)[:1], 1)[1][0, 0] == 0
        table = sockets_of(milvus_server.pid)
    established = [(local, remote) for state, local, remote in table if state == "ESTABLISHED"]
    assert len(established) >= 4, table  # components talk to each other and to etcd
    assert all(local.is_loopback and remote.is_loopback for local, remote in established), (
        [c for c in established if not (c[0].is_loopback and c[1].is_loopback)])
    listening = [local for state, local, _ in table if state == "LISTEN"]
    # Milvus 2.3 binds its gRPC listeners to the wildcard address whatever its config
    # (milvus-io/milvus#26538); none is bound to a non-loopback address of the machine
    assert all(a.is_loopback or a.is_unspecified for a in listening), listening
    assert sum(a.is_loopback for a in listening) >= 2  # the embedded etcd: 127.0.0.1 only
    for component in COMPONENTS:  # the advertised address of every component
        assert config[component]["ip"] == "127.0.0.1", component


def test_a_second_server_is_refused_at_once(milvus_server, tmp_path):
    start = time.monotonic()
    with pytest.raises(MilvusServerError, match=r"2379, 2380 .* another Milvus server"):
        LocalMilvusServer(tmp_path / "second").start()
    assert time.monotonic() - start < 5
    assert not (tmp_path / "second" / "bin").exists()  # refused before anything was unpacked


def test_ivf_results_are_true_distances_sorted_by_distance_then_id(milvus_server):
    rng = np.random.default_rng(21)
    centres = rng.random((32, 64)) < 0.5
    db = centres[rng.integers(0, 32, 8000)] ^ (rng.random((8000, 64)) < 0.08)
    queries = db[rng.choice(8000, 40, replace=False)] ^ (rng.random((40, 64)) < 0.05)
    packed, q = np.packbits(db, axis=1), np.packbits(queries, axis=1)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(packed)
    d_ref, _ = flat.search(q, 20)
    with MilvusIndex(milvus_server.uri, 64, "ivf", index_type="BIN_IVF_FLAT", nlist=16,
                     nprobe=16) as index:
        index.add(packed, packed=True)
        index.flush(reload=True)  # searches use the IVF index now (unindexed rows: a scan)
        d_all, _ = index.search(q, 20, packed=True)
        np.testing.assert_array_equal(d_all, d_ref)  # every list probed: exact distances
        index.nprobe = 1
        d, i = index.search(q, 20, packed=True)
    true = (queries[:, None, :] != db[i]).sum(-1)
    found = i >= 0
    np.testing.assert_array_equal(d[found], true[found])  # approximate, but true distances
    for row_d, row_i in zip(d, i, strict=True):
        keys = list(zip(row_d[row_i >= 0], row_i[row_i >= 0], strict=True))
        assert keys == sorted(keys)
    assert (d >= d_ref).all() and (d > d_ref).any()  # one list of 16 misses neighbours
    with pytest.raises(MilvusError, match=r"has a BIN_IVF_FLAT index, but index_type='BIN_FLAT'"):
        MilvusIndex(milvus_server.uri, 64, "ivf")
    with MilvusIndex(milvus_server.uri, 64, "ivf", index_type="BIN_IVF_FLAT") as again:
        assert again.nlist == 16  # read back from the server


def test_unreachable_server_names_the_uri_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(MilvusError, match="cannot reach the Milvus server") as info:
        MilvusIndex(uri, 64, connect_timeout=1.0)
    assert uri in str(info.value) and time.monotonic() - start < 10


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of 48 structured pictures, 12 and 3 more, and an ITQ run on a small random
    CNN."""
    from PIL import Image

    from contrahash.config import resolve_config
    from contrahash.training.train import train_run

    root = tmp_path_factory.mktemp("milvus-product")
    y, x = np.mgrid[:32, :32] / 32
    for folder, seeds in (("pics", range(48)), ("more", range(100, 112)),
                          ("extra", range(200, 203))):
        (root / folder).mkdir()
        for seed in seeds:
            f = np.random.default_rng(seed).uniform(1, 6, (3, 3))
            img = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (a * x + b * y) + c) for a, b, c in f],
                           -1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / folder / f"p{seed:03d}.png")
    cfg = resolve_config(None, [
        "method=itq", f"data.source={root / 'pics'}", "data.protocol=custom",
        "data.protocol_options={query: 8, train: 30}", "backbone.name=tiny_cnn",
        "backbone.random_init=true", "backbone.image_size=32", "bits=[16]",
        f"cache.dir={root / 'cache'}", f"data.cache_dir={root / 'decoded'}"])
    return {"root": root, "run": train_run(cfg, root / "run").run_dir, "pics": root / "pics",
            "more": root / "more", "extra": root / "extra"}


def test_cli_on_the_server_like_faiss_and_an_unreachable_server(milvus_server, tiny_run):
    """index build --backend milvus --milvus-uri http://…, info, search, add: as with faiss."""
    from typer.testing import CliRunner

    from contrahash.cli import app
    from contrahash.retrieval.collection import open_collection

    runner = CliRunner()
    root, run = tiny_run["root"], str(tiny_run["run"])

    def cli(*args: str) -> str:
        res = runner.invoke(app, [*args])
        assert res.exit_code == 0, res.output
        return res.output

    cli("index", "build", run, "--data", str(tiny_run["pics"]), "--out", str(root / "faiss"),
        "--no-progress")
    cli("index", "build", run, "--data", str(tiny_run["pics"]), "--out", str(root / "srv"),
        "--backend", "milvus", "--milvus-uri", milvus_server.uri, "--milvus-collection",
        "product", "--milvus-index", "BIN_IVF_FLAT", "--milvus-nlist", "4", "--milvus-nprobe",
        "4", "--no-progress")
    info = " ".join(cli("index", "info", str(root / "srv")).split())  # unwrapped
    assert "BIN_IVF_FLAT index (nlist=4, nprobe=4): approximate results" in info
    assert milvus_server.uri in info
    for item in (0, 17, 40):  # every list probed: the same distances as faiss
        want = json.loads(cli("search", str(root / "faiss"), "--id", str(item), "-k", "12",
                              "--json"))["results"]
        got = json.loads(cli("search", str(root / "srv"), "--id", str(item), "-k", "12",
                             "--json"))["results"]
        assert [r["distance"] for r in got] == [r["distance"] for r in want]
        assert got[0]["id"] == item and got[0]["distance"] == 0
    # kill -9 of `index add` after its Milvus insert, before its manifest commit
    script = textwrap.dedent(f"""
        import os, signal
        from contrahash.retrieval import collection
        from contrahash.retrieval.collection import writer
        real = writer.write_json
        def commit_then_die(path, data):
            if str(path).endswith("manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data)
        writer.write_json = commit_then_die
        collection.add_to_collection({str(root / "srv")!r}, {str(tiny_run["more"])!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert json.loads((root / "srv" / "manifest.json").read_text())["count"] == 48
    with MilvusIndex(milvus_server.uri, 16, "product_16", create=False,  # another process
                     index_type="BIN_IVF_FLAT", consistency="Strong") as index:  # wrote them
        assert len(index) == 60  # Milvus holds the uncommitted rows
    cli("index", "add", str(root / "srv"), "--data", str(tiny_run["more"]), "--no-progress")
    with MilvusIndex(milvus_server.uri, 16, "product_16", create=False,  # another process
                     index_type="BIN_IVF_FLAT", consistency="Strong") as index:  # wrote them
        assert len(index) == 60  # the re-run replaced them: no id twice
        _, ids = index.search(np.zeros((1, 16), dtype=bool), 100)
        assert sorted(ids[0][ids[0] >= 0].tolist()) == list(range(60))
    assert json.loads((root / "srv" / "manifest.json").read_text())["count"] == 60
    with open_collection(root / "srv") as coll:
        assert [h.distance for h in coll.search_ids([55], 1, 16)[0]] == [0]
    # index remove: the same on both backends, and gone from the Milvus collection
    cli("index", "add", str(root / "faiss"), "--data", str(tiny_run["more"]), "--no-progress")
    for name in ("faiss", "srv"):
        cli("index", "remove", str(root / name), "--id", "5", "--id", "17")
    want = json.loads(cli("search", str(root / "faiss"), "--id", "0", "-k", "58", "--json"))
    got = json.loads(cli("search", str(root / "srv"), "--id", "0", "-k", "58", "--json"))
    assert [r["distance"] for r in got["results"]] == [r["distance"] for r in want["results"]]
    assert not {5, 17} & {r["id"] for r in got["results"]}
    with MilvusIndex(milvus_server.uri, 16, "product_16", create=False,  # another process
                     index_type="BIN_IVF_FLAT", consistency="Strong") as index:  # wrote them
        assert len(index) == 58
    # an unreachable server: one line naming the URI, exit != 0, nothing written
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    res = runner.invoke(app, ["index", "build", run, "--data", str(tiny_run["pics"]), "--out",
                              str(root / "dead"), "--backend", "milvus", "--milvus-uri", dead,
                              "--no-progress"])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and dead in lines[0] and "cannot reach" in lines[0], res.output
    assert not (root / "dead").exists()
    # the same for index add on a collection whose server went away: nothing written
    shutil.copytree(root / "srv", root / "gone")
    manifest = json.loads((root / "gone" / "manifest.json").read_text())
    manifest["backend"]["uri"] = dead
    (root / "gone" / "manifest.json").write_text(json.dumps(manifest))
    before = sorted(str(p.relative_to(root)) for p in (root / "gone").rglob("*"))
    res = runner.invoke(app, ["index", "add", str(root / "gone"), "--data",
                              str(tiny_run["extra"]), "--no-progress"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code != 0 and len(lines) == 1 and dead in lines[0], res.output
    assert sorted(str(p.relative_to(root)) for p in (root / "gone").rglob("*")) == before


def test_a_restart_between_two_searches_gives_the_same_results(milvus_server):
    """Last in this file: the session's server restarts (same port, same data)."""
    rng = np.random.default_rng(22)
    db = rng.integers(0, 256, (20_000, 8), dtype=np.uint8)
    queries = np.concatenate([db[:5], rng.integers(0, 256, (20, 8), dtype=np.uint8)])
    index = MilvusIndex(milvus_server.uri, 64, "restart")
    index.add(db, packed=True)
    before = index.search(queries, 50, packed=True)
    uri, pid = milvus_server.uri, milvus_server.pid
    milvus_server.restart()
    assert milvus_server.uri == uri and milvus_server.pid != pid
    assert not Path(f"/proc/{pid}").exists() and not Path(f"/tmp/milvus/server_id_{pid}").exists()
    try:
        after = index.search(queries, 50, packed=True)  # the connection opened before
    finally:
        index.close()
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    with MilvusIndex(uri, 64, "restart", create=False) as reopened:
        assert len(reopened) == 20_000
        again = reopened.search(queries, 50, packed=True)
    np.testing.assert_array_equal(again[1], before[1])
    flat = faiss.IndexBinaryFlat(64)
    flat.add(db)
    np.testing.assert_array_equal(before[1], flat.search(queries, 50)[1])


def test_credentials_reach_pymilvus_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    """Token and database come from the environment (a manifest records only the uri)."""
    import pymilvus

    from contrahash.retrieval.milvus import check_backend

    seen: list[dict[str, object]] = []

    def connect(alias: str, **kwargs: object) -> None:
        seen.append(kwargs)

    class Reachable:
        def close(self) -> None:
            pass

    monkeypatch.setattr(pymilvus.connections, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Reachable())
    monkeypatch.setenv("CONTRAHASH_MILVUS_TOKEN", "reader:secret")
    monkeypatch.setenv("CONTRAHASH_MILVUS_DB", "photos")
    check_backend("https://milvus.example:19530", "BIN_IVF_FLAT", 64, 8)
    monkeypatch.delenv("CONTRAHASH_MILVUS_TOKEN")
    monkeypatch.delenv("CONTRAHASH_MILVUS_DB")
    check_backend("http://milvus.example:19530")
    assert seen[0]["token"] == "reader:secret" and seen[0]["db_name"] == "photos"
    assert seen[0]["uri"] == "https://milvus.example:19530"
    assert "token" not in seen[1] and "db_name" not in seen[1]


def test_backend_options_are_refused_before_any_connection(tmp_path):
    from contrahash.retrieval.milvus import check_backend

    with pytest.raises(MilvusError, match="supports only the BIN_FLAT index"):
        check_backend(str(tmp_path / "codes.db"), "BIN_IVF_FLAT")
    with pytest.raises(MilvusError, match="must be one of BIN_FLAT, BIN_IVF_FLAT"):
        check_backend("http://127.0.0.1:1", "HNSW")
    with pytest.raises(MilvusError, match="nlist and nprobe must be >= 1"):
        check_backend("http://127.0.0.1:1", "BIN_IVF_FLAT", 0, 8)
    check_backend(str(tmp_path / "codes.db"))  # a .db is checked, not opened
    assert not (tmp_path / "codes.db").exists()
