"""One writer per output directory: an advisory ``flock`` on a lock file inside it.

A run directory, an index directory or a benchmark output folder is written by one process
at a time. :class:`DirectoryLock` takes an exclusive, non-blocking ``fcntl.flock`` on
``<dir>/.contrahash.lock`` and writes the holder's pid, host, command line and start time
into it (JSON). A second process asking for the same directory is refused at once with a
:class:`LockedError` naming the directory and the holder::

    runs/dual is in use by pid 1234 (contrahash train configs/x.yaml, started 2025-01-02
    12:03:04); wait for it or choose another --run-dir

Semantics worth knowing:

* **Crashes.** The kernel drops a ``flock`` when its holder exits, however it exits
  (``kill -9`` included), so a lock left by a dead process is simply free: the next
  :meth:`~DirectoryLock.acquire` takes it, overwrites the holder information and reports the
  old holder in :attr:`DirectoryLock.previous_holder` (for a "taking over" log line).
* **Same process twice.** Acquiring a directory this process already holds (through another
  :class:`DirectoryLock` object) raises :class:`LockedError` saying so; locks are not
  re-entrant. Calling :meth:`~DirectoryLock.acquire` twice on the *same* object also raises.
* **Release.** :meth:`~DirectoryLock.release` removes the lock file by default, so the file
  exists only while a writer holds the directory (or after a crash); with ``remove=True`` it
  also removes the directory itself when this lock created it (``create=True``) and it is
  empty by then — a failed start leaves nothing behind. ``release(remove=False)`` keeps the
  file with the last holder's information.
* **Children.** The descriptor is close-on-exec, so programs started with ``subprocess`` do
  not inherit the lock. A child made by a bare ``os.fork`` (multiprocessing's ``fork``
  start method) shares it until it exits; only the parent should release.
* **Scope.** ``flock`` locks are advisory (only cooperating processes are stopped) and are
  local to a host on most network file systems; two hosts writing one NFS directory are not
  guaranteed to see each other's lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

#: the lock file's name inside the locked directory
LOCK_NAME = ".contrahash.lock"

#: directories this process holds (resolved path → what), to refuse a second acquire clearly
_held: dict[Path, str] = {}
_held_guard = threading.Lock()


class LockedError(RuntimeError):
    """Another writer holds the directory; the message names it and how to proceed."""

    def __init__(self, message: str, path: Path, holder: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.path = path
        #: the holder's information as read from the lock file (None when unreadable)
        self.holder = holder


def _holder_info(what: str, command: str | None) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command if command is not None else shlex.join(sys.argv) or sys.executable,
        "what": what,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "started_unix": round(now, 3),
    }


def _read_holder(path: Path, attempts: int = 20) -> dict[str, Any] | None:
    """The JSON in a lock file; retried briefly, since its holder may be writing it right now."""
    for _ in range(attempts):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        try:
            info = json.loads(text)
        except ValueError:
            time.sleep(0.01)
            continue
        return info if isinstance(info, dict) else None
    return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``pid 1234 (contrahash train x.yaml, started 2025-01-02 12:03:04)``, or a fallback."""
    if not holder:
        return "another process (its lock file gives no details)"
    where = ""
    if holder.get("host") and holder.get("host") != socket.gethostname():
        where = f" on {holder['host']}"
    details = ", ".join(str(x) for x in (holder.get("command"),
                                          f"started {holder['started']}" if holder.get("started")
                                          else None) if x)
    return f"pid {holder.get('pid', '?')}{where}" + (f" ({details})" if details else "")


class DirectoryLock:
    """Exclusive lock on an output directory for the life of one writer (see the module docs).

    ``what`` names the directory's role in messages ("run", "index", "benchmark output");
    ``hint`` ends the refusal message (default: ``"choose another directory"``);
    ``command`` is recorded as the holder's command line (default: ``sys.argv``);
    ``create`` makes the directory (with parents) when missing, otherwise a missing directory
    is a ``FileNotFoundError``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, DirectoryLock(d, what="run") as lock:
    ...     lock.locked
    True
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "run", *,
                 hint: str | None = None, command: str | None = None,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.what = what
        self.hint = hint or "choose another directory"
        self.command = command
        self.create = create
        #: what a previous, finished holder left in the lock file (after a crash or a
        #: ``release(remove=False)``); None when the lock file was new
        self.previous_holder: dict[str, Any] | None = None
        self._fd: int | None = None
        self._key: Path | None = None
        self._created_dirs: list[Path] = []

    @property
    def lock_file(self) -> Path:
        """``<dir>/.contrahash.lock``."""
        return self.path / LOCK_NAME

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def _refusal(self, holder: dict[str, Any] | None) -> LockedError:
        return LockedError(f"{self.path} is in use by {describe_holder(holder)}; "
                           f"wait for it or {self.hint}", self.path, holder)

    def _make_dirs(self) -> None:
        if self.path.is_dir():
            return
        if self.path.exists():
            raise NotADirectoryError(f"{self.path}: not a directory, cannot lock it as a {self.what} "
                                     "directory")
        if not self.create:
            raise FileNotFoundError(f"{self.path}: {self.what} directory does not exist")
        missing = []
        p = self.path.absolute()
        while not p.exists():
            missing.append(p)
            p = p.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created_dirs = missing  # deepest first: the order to remove them in

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise :class:`LockedError` at once; returns self."""
        if self._fd is not None:
            raise LockedError(f"{self.path}: this DirectoryLock already holds it", self.path, None)
        self._make_dirs()
        key = self.path.resolve()
        with _held_guard:
            if key in _held:
                raise LockedError(
                    f"{self.path} is already locked by this process (as {_held[key]} directory); "
                    "a directory is written by one writer at a time", self.path,
                    _holder_info(_held[key], self.command))
            _held[key] = self.what
        try:
            self._acquire_file()
        except BaseException:
            with _held_guard:
                _held.pop(key, None)
            self._remove_created_dirs()
            raise
        self._key = key
        return self

    def _acquire_file(self) -> None:
        lock_file = self.lock_file
        for _ in range(100):
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except PermissionError as exc:
                raise PermissionError(f"{self.path}: cannot create its lock file {LOCK_NAME} "
                                      f"({exc.strerror})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._refusal(_read_holder(lock_file)) from None
                raise
            # The previous holder may have unlinked the file between our open and our flock:
            # then we locked an orphaned inode and must start over on the new path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock_file))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            break
        else:  # pragma: no cover - needs a pathological unlink storm
            raise LockedError(f"{self.path}: its lock file keeps being replaced; another process "
                              "is racing for it", self.path, None)
        try:
            old = os.read(fd, 1 << 16)
            if old.strip():
                try:
                    previous = json.loads(old)
                except ValueError:
                    previous = None
                self.previous_holder = previous if isinstance(previous, dict) else {"raw": old[:200]}
            self._write_info()
        except BaseException:
            self._unlock(remove=True)
            raise

    def _write_info(self) -> None:
        assert self._fd is not None
        data = (json.dumps(_holder_info(self.what, self.command), indent=2) + "\n").encode()
        # write first, then cut the tail: a reader never sees an empty file
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def holder(self) -> dict[str, Any] | None:
        """The information in the lock file now (this process's when it holds the lock)."""
        return _read_holder(self.lock_file)

    def release(self, remove: bool = True) -> None:
        """Give the lock up; idempotent.

        ``remove`` (default) deletes the lock file, and the directory too when this lock
        created it and nothing else was put in it; ``remove=False`` keeps the file.
        """
        if self._fd is None:
            return
        self._unlock(remove)
        if remove:
            self._remove_created_dirs()

    def _unlock(self, remove: bool) -> None:
        fd, self._fd = self._fd, None
        try:
            if remove:
                # unlink while still holding the lock; a waiter that opened the old inode
                # notices (samestat) and retries on the path
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_file)
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            if self._key is not None:
                with _held_guard:
                    _held.pop(self._key, None)
                self._key = None

    def _remove_created_dirs(self) -> None:
        for d in self._created_dirs:
            try:
                d.rmdir()  # only when empty
            except OSError:
                break
        self._created_dirs = []

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release(remove=True)

    def __del__(self) -> None:  # a forgotten lock still goes when the object does
        with contextlib.suppress(Exception):
            if self._fd is not None:
                self.release(remove=False)

    def __repr__(self) -> str:
        return f"DirectoryLock({str(self.path)!r}, what={self.what!r}, locked={self.locked})"
