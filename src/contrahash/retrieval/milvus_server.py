"""A standalone Milvus server on this machine, on 127.0.0.1: :class:`LocalMilvusServer`.

For tests and benchmarks of the Milvus backend against a real server (not Milvus Lite,
which has only the exact ``BIN_FLAT`` index). It runs the ``milvus run standalone`` binary of
the PyPI package ``milvus`` 2.3.5 (extra ``milvus-server``; the last release of that package
with a Linux x86-64 wheel), with embedded etcd and local storage, every file under one
directory:

* ``bin/`` the binary (unpacked from the package on first start), ``configs/milvus.yaml``,
  ``data/`` (etcd, rocksmq, segments), ``logs/`` (the server's own logs and stdout/stderr),
  ``tmp/`` (its ``TMPDIR``), ``server.pid``. One file escapes: Milvus 2.3 hard-codes
  ``/tmp/milvus/server_id_<pid>``; :meth:`LocalMilvusServer.stop` deletes it (and the
  folder when it is then empty).
* every component advertises 127.0.0.1 (``<component>.ip``), so all of the server's
  connections, between its own components and to clients, stay on the loopback interface;
  Milvus' own default is the machine's first network address. Milvus 2.3 binds its gRPC and
  metrics listeners to every interface whatever the configuration (milvus-io/milvus#26538);
  the embedded etcd listens on 127.0.0.1 only.
* the embedded etcd always takes ports 2379 and 2380: a second server on one machine cannot
  start (and the package's own ``start()`` then waits 180 s for a health check that never
  passes), so :meth:`LocalMilvusServer.start` checks those ports first and refuses at once.

The server is a child process of the caller, stopped by its pid (SIGTERM, then SIGKILL);
``kill_with_parent=True`` also makes the kernel kill it when the caller dies (Linux).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ETCD_PORTS", "LocalMilvusServer", "MilvusServerError", "port_in_use"]

#: Ports the embedded etcd of Milvus 2.3 always listens on (client, peer).
ETCD_PORTS = (2379, 2380)
#: Components whose advertised address is set to 127.0.0.1.
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
              "dataNode")
_INSTALL_HINT = "pip install 'contrahash[milvus-server]'"


class MilvusServerError(RuntimeError):
    """The local Milvus server cannot start (package missing, ports taken, no health)."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` cannot be bound (another listener holds it)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a user
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _milvus_package() -> Any:
    try:
        import milvus  # noqa: PLC0415 - optional dependency (extra milvus-server)
    except ImportError as exc:
        raise MilvusServerError(f"a local Milvus server needs the milvus package ({exc}): "
                                f"{_INSTALL_HINT}") from None
    if getattr(milvus, "__version__", "") != "2.3.5":
        raise MilvusServerError(f"the milvus package is {milvus.__version__}, 2.3.5 is needed: "
                                f"{_INSTALL_HINT}")
    return milvus


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes  # noqa: PLC0415

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


#: where the Milvus 2.3 binary writes ``server_id_<pid>`` whatever its configuration or
#: ``TMPDIR`` says (a path fixed inside that binary, not one of ours): cleaned up on stop
MILVUS_SERVER_ID_DIR = Path("/tmp/milvus")

class LocalMilvusServer:
    """One ``milvus run standalone`` process whose files all live under ``base_dir``.

    ``port``: the client (proxy) port; ``None`` takes the first free one from 19530. The
    other component ports are chosen free the same way on the first start and kept for
    restarts, so :attr:`uri` stays the same. ``settings``: more ``milvus.yaml`` values by
    dotted key (``{"proxy.timeTickInterval": 50}``), keys the template already has. Use as a
    context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, base_dir: str | os.PathLike, port: int | None = None, *,
                 kill_with_parent: bool = False, settings: dict[str, Any] | None = None
                 ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.settings = dict(settings or {})
        self.kill_with_parent = kill_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: dict[str, int] = {} if port is None else {"proxy_port": int(port)}
        self._health_port: int | None = None

    # ---- state -----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def port(self) -> int:
        if "proxy_port" not in self._ports:
            raise MilvusServerError("the server has not been started yet")
        return self._ports["proxy_port"]

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's stderr and stdout (for error messages)."""
        out = []
        for name in ("milvus-stderr.log", "milvus-stdout.log"):
            path = self.base_dir / "logs" / name
            if path.is_file():
                out += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out[-lines:])

    # ---- start / stop ----------------------------------------------------------------------

    def _config(self, milvus: Any) -> Any:
        """The package's config writer with 127.0.0.1 everywhere and our ports."""

        class Config(milvus.MilvusServerConfig):
            def try_bind_port(self, port: int) -> socket.socket | None:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                    sock.listen()
                except OSError:
                    sock.close()
                    return None
                return sock

        config = Config(data_dir=str(self.base_dir), **self._ports)
        for component in COMPONENTS:
            config.set(f"{component}.ip", "127.0.0.1")
        for key, value in self.settings.items():
            config.set(key, value)
        return config

    def start(self, timeout: float = 120.0) -> str:
        """Start the server and wait until it answers its health check; returns :attr:`uri`.

        Raises :class:`MilvusServerError` at once when etcd's ports 2379/2380 are taken (a
        Milvus server already runs here), and when the server exits or is not healthy within
        ``timeout`` seconds (it is killed then).
        """
        if self.pid is not None:
            return self.uri
        milvus = _milvus_package()
        taken = [p for p in ETCD_PORTS if port_in_use(p)]
        if taken:
            raise MilvusServerError(
                f"port(s) {', '.join(map(str, taken))} on 127.0.0.1 are in use: Milvus' embedded "
                "etcd needs 2379 and 2380, so another Milvus server probably runs on this "
                "machine (stop it, or use it through its URI)")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "tmp", "run"):
            (self.base_dir / sub).mkdir(exist_ok=True)
        config = self._config(milvus)
        try:
            config.resolve()  # picks free ports, writes configs/milvus.yaml
        except RuntimeError as exc:
            raise MilvusServerError(f"Milvus server in {self.base_dir}: {exc}") from None
        self._ports = {key: int(config.get(key)) for key in config.configurable_items
                       if key.endswith("_port")}
        if self._health_port is None:
            self._health_port, sock = config.resolve_port(9091)
            sock.close()
        milvus._initialize_data_files(str(self.base_dir))  # unpacks bin/ once (md5-checked)
        exe = self.base_dir / "bin" / "milvus"
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(self._health_port),
               "MILVUS_RUN_DIR": str(self.base_dir / "run"), "TMPDIR": str(self.base_dir / "tmp"),
               "LD_LIBRARY_PATH": ":".join(filter(None, [str(exe.parent),
                                                         os.environ.get("LD_LIBRARY_PATH")]))}
        with open(self.base_dir / "logs" / "milvus-stdout.log", "ab") as out, \
                open(self.base_dir / "logs" / "milvus-stderr.log", "ab") as err:
            self._proc = subprocess.Popen(
                [str(exe), "run", "standalone"], cwd=self.base_dir, env=env, stdout=out,
                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if self.kill_with_parent else None)
        (self.base_dir / "server.pid").write_text(f"{self._proc.pid}\n")
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self.uri

    def _wait_healthy(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self._health_port}/healthz"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise MilvusServerError(f"the Milvus server in {self.base_dir} exited (code "
                                        f"{code}) while starting:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if b"OK" in resp.read():
                        return
            if time.monotonic() > deadline:
                raise MilvusServerError(f"the Milvus server in {self.base_dir} was not healthy "
                                        f"within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM the server by its pid, SIGKILL after ``timeout`` s; idempotent.

        Milvus 2.3's graceful stop takes longer than 15 s; it needs none: an acknowledged
        insert is in its write-ahead log (rocksmq) and is replayed on the next start.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        if proc is not None:
            with contextlib.suppress(OSError):
                (MILVUS_SERVER_ID_DIR / f"server_id_{proc.pid}").unlink()
            with contextlib.suppress(OSError):
                MILVUS_SERVER_ID_DIR.rmdir()  # only when empty: another server's files stay
        with contextlib.suppress(FileNotFoundError):
            (self.base_dir / "server.pid").unlink()

    def restart(self, timeout: float = 120.0) -> str:
        """Stop and start again on the same ports and data (the same :attr:`uri`)."""
        self.stop(timeout=1.0)
        return self.start(timeout)

    def __enter__(self) -> LocalMilvusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
