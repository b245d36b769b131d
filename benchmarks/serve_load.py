"""Load test of the search service: query by id and query by image over real HTTP.

Starts the server as a subprocess (``python -m contrahash.cli serve DIR``, i.e.
``contrahash serve DIR``) on a free 127.0.0.1 port, or with ``--fake`` the tests'
FakeCollection (HTTP layer only), waits for ``/healthz``, then runs two phases, each capped by
a request count and a time limit:

1. ``GET /api/search?id=…`` from ``--concurrency-id`` concurrent keep-alive connections,
2. ``POST /api/search`` multipart JPEG uploads (CIFAR-10 JPEGs from the packed npz, or the
   collection's own thumbnails) from ``--concurrency-image`` connections,

and prints per-phase details on stderr and one final line on stdout::

    serve_id_qps=… serve_id_p99_ms=… serve_image_qps=… serve_image_p50_ms=… serve_image_p99_ms=… errors=…

Why a subprocess and a raw-asyncio client: on a 2-core machine the server must get one core to
itself. A server thread in this process would share the GIL with the client, and a full HTTP
client library (httpx: ~0.5 ms of CPU per request) would take a large share of the second
core; this client writes pre-built request bytes on asyncio streams and parses only the status
line, headers and JSON body (~0.1 ms per request). Each phase also reports the server's and the
client's CPU time per request (from /proc), which shows how much of the machine each used.

Examples::

    python benchmarks/serve_load.py --index runs/cifar10-index           # the real collection
    python benchmarks/serve_load.py --fake --requests 2000               # HTTP layer only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: where CIFAR-10 JPEG query files come from: --npz, else $CONTRAHASH_CIFAR10 (never a fixed path)
DEFAULT_NPZ = Path(os.environ["CONTRAHASH_CIFAR10"]) if os.environ.get("CONTRAHASH_CIFAR10") else None


# ----------------------------------------------------------------------------- HTTP client


class HttpError(Exception):
    """A transport-level failure (connection closed, malformed answer)."""


class Connection:
    """One keep-alive HTTP/1.1 connection; requests are pre-built bytes."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request; return (status, body). Reconnects when the server closed."""
        if self.writer is None:
            await self._open()
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"connection closed before the answer ({exc})") from None
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            await self.close()
            raise HttpError(f"bad status line {lines[0][:80]!r}") from None
        length, chunked, close = None, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")  # end of the (empty) trailer
                    break
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            await self.close()
        return status, body


def get_request(target: str, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()


def upload_request(jpeg: bytes, k: int, bits: int | None, token: str | None) -> bytes:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"]
    if bits is not None:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"bits\"\r\n\r\n"
                     f"{bits}\r\n")
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                 f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
    body = "".join(parts).encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


# ----------------------------------------------------------------------------- load phases


@dataclass
class PhaseResult:
    name: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    capped_by_time: bool = False

    @property
    def done(self) -> int:
        return len(self.latencies_ms) + self.errors

    def qps(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def check_answer(status: int, body: bytes, want: int) -> str | None:
    """None when the answer is a search result with ``want`` results, else why not."""
    if status != 200:
        return f"HTTP {status}: {body[:160]!r}"
    try:
        results = json.loads(body)["results"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"bad JSON ({exc})"
    if len(results) != want:
        return f"{len(results)} results, expected {want}"
    return None


async def run_phase(name: str, host: str, port: int, requests: list[bytes], total: int,
                    concurrency: int, max_seconds: float, want: int, timeout_s: float,
                    server_pid: int) -> PhaseResult:
    """Send ``total`` requests (cycling through ``requests``) from ``concurrency`` connections,
    stopping early after ``max_seconds``."""
    result = PhaseResult(name, concurrency)
    counter = iter(range(total))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        conn = Connection(host, port)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    result.capped_by_time = True
                    return
                start = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout_s):
                        status, body = await conn.request(requests[i % len(requests)])
                    problem = check_answer(status, body, want)
                except (HttpError, OSError, TimeoutError) as exc:
                    await conn.close()
                    problem = f"{type(exc).__name__}: {exc}"
                if problem is None:
                    result.latencies_ms.append((time.perf_counter() - start) * 1000.0)
                else:
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(problem)
        finally:
            await conn.close()

    server0, client0 = process_cpu_s(server_pid), time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    result.wall_s = time.perf_counter() - start
    result.server_cpu_s = process_cpu_s(server_pid) - server0
    result.client_cpu_s = time.process_time() - client0
    return result


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks


def report(r: PhaseResult) -> None:
    n = max(len(r.latencies_ms), 1)
    print(f"{r.name}: {len(r.latencies_ms)} ok + {r.errors} errors in {r.wall_s:.1f} s at "
          f"{r.concurrency} concurrent -> {r.qps():.1f} q/s; latency p50 {r.pct(50):.1f} ms, "
          f"p90 {r.pct(90):.1f} ms, p99 {r.pct(99):.1f} ms, max {r.pct(100):.1f} ms; CPU per "
          f"request: server {1000 * r.server_cpu_s / n:.2f} ms, client "
          f"{1000 * r.client_cpu_s / n:.2f} ms"
          + (" (stopped by --max-seconds)" if r.capped_by_time else ""), file=sys.stderr)
    for sample in r.error_samples:
        print(f"  error: {sample}", file=sys.stderr)


# ----------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    if args.fake:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-fake", "--port", str(port),
               "--fake-items", str(args.fake_items)]
    else:
        cmd = [sys.executable, "-m", "contrahash.cli", "serve", str(args.index), "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    if args.batch_window_ms is not None:
        cmd += ["--batch-window-ms", str(args.batch_window_ms)]
    env = dict(os.environ)
    if args.token:
        env["CONTRAHASH_TOKEN"] = args.token
    print("server: " + " ".join(cmd), file=sys.stderr)
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


async def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode} before "
                             "answering /healthz")
        conn = Connection("127.0.0.1", port)
        try:
            status, body = await conn.request(get_request("/healthz", None))
            if status == 200:
                return json.loads(body)
        except (OSError, HttpError):
            pass
        finally:
            await conn.close()
        await asyncio.sleep(0.2)
    raise SystemExit(f"error: no answer from /healthz on port {port} within {timeout_s:.0f} s")


def serve_fake(port: int, items: int, batch_window_ms: float | None) -> None:
    """The ``--serve-fake`` child: the tests' FakeCollection behind uvicorn."""
    import uvicorn

    sys.path.insert(0, str(REPO / "tests"))
    from contrahash.serve.app import create_app
    from contrahash.serve.settings import ServeSettings
    from serve_fakes import FakeCollection

    settings = ServeSettings(token=os.environ.get("CONTRAHASH_TOKEN") or None,
                             **({} if batch_window_ms is None
                                else {"batch_window_ms": batch_window_ms}))
    uvicorn.run(create_app(FakeCollection(n=items), settings), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


# ----------------------------------------------------------------------------- images


async def load_images(args: argparse.Namespace, port: int, count: int) -> list[bytes]:
    n = min(args.images, count)
    source = args.images_from
    if source == "auto":
        source = "npz" if args.npz is not None and args.npz.is_file() and not args.fake else "thumbnails"
    if source == "npz":
        from contrahash.data.packed import read_packed

        packed = read_packed(args.npz)
        picks = np.random.default_rng(0).choice(len(packed), size=n, replace=False)
        print(f"images: {n} JPEGs from {args.npz}", file=sys.stderr)
        return [packed.file_bytes(int(i)) for i in picks]
    conn = Connection("127.0.0.1", port)
    images = []
    try:
        for item_id in range(n):
            status, body = await conn.request(
                get_request(f"/api/items/{item_id}/thumbnail", args.token))
            if status != 200:
                raise SystemExit(f"error: thumbnail {item_id}: HTTP {status}")
            images.append(body)
    finally:
        await conn.close()
    print(f"images: {n} thumbnails of the collection", file=sys.stderr)
    return images


# ----------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> int:
    port = args.port or free_port()
    proc = start_server(args, port)
    try:
        health = await wait_healthy(port, proc, args.startup_timeout)
        count = int(health["count"])
        print(f"server ready: {count} items, bits {health['bits']}", file=sys.stderr)
        want = min(args.k, count)
        rng = random.Random(0)
        bits = f"&bits={args.bits}" if args.bits else ""
        id_requests = [get_request(f"/api/search?id={rng.randrange(count)}&k={args.k}{bits}",
                                   args.token) for _ in range(4096)]
        images = await load_images(args, port, count)
        image_requests = [upload_request(j, args.k, args.bits, args.token) for j in images]

        phases = [("query by id", id_requests, args.concurrency_id),
                  ("query by image", image_requests, args.concurrency_image)]
        results = []
        for name, requests, concurrency in phases:
            if args.warmup:
                await run_phase(name + " (warm-up)", "127.0.0.1", port, requests, args.warmup,
                                concurrency, args.max_seconds, want, args.timeout, proc.pid)
            r = await run_phase(name, "127.0.0.1", port, requests, args.requests, concurrency,
                                args.max_seconds, want, args.timeout, proc.pid)
            report(r)
            results.append(r)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    by_id, by_image = results
    print(f"serve_id_qps={by_id.qps():.1f} serve_id_p99_ms={by_id.pct(99):.2f} "
          f"serve_image_qps={by_image.qps():.1f} serve_image_p50_ms={by_image.pct(50):.2f} "
          f"serve_image_p99_ms={by_image.pct(99):.2f} errors={by_id.errors + by_image.errors}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--index", type=Path, help="collection directory to serve")
    src.add_argument("--fake", action="store_true",
                     help="serve the tests' FakeCollection (measures the HTTP layer)")
    p.add_argument("--requests", type=int, default=2000, help="requests per phase (default 2000)")
    p.add_argument("--concurrency-id", type=int, default=16)
    p.add_argument("--concurrency-image", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="time cap of each phase (default 60)")
    p.add_argument("--warmup", type=int, default=50, help="uncounted requests before each phase")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--bits", type=int, default=None, help="code length (default: the longest)")
    p.add_argument("--images", type=int, default=500, help="distinct query images (default 500)")
    p.add_argument("--images-from", choices=["auto", "npz", "thumbnails"], default="auto",
                   help="query JPEGs: the packed CIFAR-10 npz (default for --index when present)"
                        " or the collection's thumbnails")
    p.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    p.add_argument("--token", default=None, help="API token (passed to the server as well)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--batch-window-ms", type=float, default=None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fake-items", type=int, default=200)
    p.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.serve_fake and not args.fake and args.index is None:
        p.error("give --index DIR (a collection directory) or --fake")
    if args.index is not None and not args.index.is_dir():
        p.error(f"--index {args.index}: not a directory")
    for name in ("requests", "concurrency_id", "concurrency_image", "k", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fake:
        serve_fake(args.port, args.fake_items, args.batch_window_ms)
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
