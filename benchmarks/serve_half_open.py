"""Half-open connections against the service: how many are still open after a while.

Starts the service (the test FakeCollection, 20 items) in a subprocess on 127.0.0.1, opens
``--connections`` TCP connections to it — half send nothing, half send a request line and
one header but never the blank line that ends the head — waits ``--wait`` seconds, and
counts the connections the server has not closed; then checks that a new request is still
answered. Run once with uvicorn's plain h11 protocol (``--timeout none``, what ``serve`` used
before) and once with the request-head deadline (``--timeout 10``, the default).

Final line: ``half_open_left_<timeout>=<count> ...`` for each timeout given.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER = """
import resource, sys
sys.path.insert(0, {tests!r})
resource.setrlimit(resource.RLIMIT_NOFILE, ({fds}, {fds}))
import uvicorn
from serve_fakes import FakeCollection
from contrahash.serve.app import create_app
from contrahash.serve.connections import head_timeout_protocol
http = 'h11' if {timeout!r} == 'none' else head_timeout_protocol(float({timeout!r}))
uvicorn.run(create_app(FakeCollection(n=20)), host='127.0.0.1', port={port}, log_level='warning',
            http=http)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(16))
    except BlockingIOError:
        return True
    except OSError:
        return False


def measure(timeout: str, connections: int, wait_s: float) -> int:
    port = free_port()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    fds = connections + 1024
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(
        tests=tests, fds=fds, timeout=timeout, port=port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        socks = []
        for k in range(connections):
            s = socket.create_connection(("127.0.0.1", port))
            if k % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(wait_s)
        left = sum(still_open(s) for s in socks)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as ok:
            ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answered = ok.recv(12).startswith(b"HTTP/1.1 200")
        for s in socks:
            s.close()
        print(f"timeout {timeout}: {connections} connections, {left} still open after "
              f"{wait_s:.0f} s; a new request answered: {answered}", flush=True)
        return left
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--wait", type=float, default=12.0)
    parser.add_argument("--timeout", nargs="+", default=["none", "10"])
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    left = {t: measure(t, args.connections, args.wait) for t in args.timeout}
    print(" ".join(f"half_open_left_{t}={n}" for t, n in left.items()))


if __name__ == "__main__":
    main()
