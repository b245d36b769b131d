"""DirectoryLock with real second processes: refusal naming the holder, take-over after exit
and after ``kill -9``, the lock file's JSON, in-process double acquire, clean-up on release."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from contrahash.locks import LOCK_NAME, DirectoryLock, LockedError

# A holder process: takes the lock, says "locked <pid>", then holds it until stdin closes.
HOLDER = textwrap.dedent("""
    import sys
    from contrahash.locks import DirectoryLock, LockedError
    lock = DirectoryLock(sys.argv[1], what="run", hint="choose another --run-dir",
                         command=sys.argv[2])
    try:
        lock.acquire()
    except LockedError as exc:
        print("refused", exc, flush=True)
        sys.exit(3)
    print("locked", flush=True)
    sys.stdin.read()
    lock.release(remove=sys.argv[3] == "remove")
    print("released", flush=True)
""")


def start_holder(directory: Path, command: str = "contrahash train cfg.yaml",
                 remove: bool = True) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), command, "remove" if remove else "keep"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "locked", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate("", timeout=60)
    assert proc.returncode == 0, err
    return out


def test_second_process_refused_with_holder_named(tmp_path: Path) -> None:
    run_dir = tmp_path / "dual"
    holder = start_holder(run_dir, command="contrahash train configs/dual.yaml")
    try:
        # another real process is refused, at once, with the holder named
        other = subprocess.run([sys.executable, "-c", HOLDER, str(run_dir), "x", "remove"],
                               input="", capture_output=True, text=True, timeout=60)
        assert other.returncode == 3, other.stderr
        message = other.stdout
        assert f"{run_dir} is in use by pid {holder.pid}" in message
        assert "contrahash train configs/dual.yaml" in message
        assert "started " in message and "choose another --run-dir" in message
        # and so is this process, with the holder's details on the exception
        with pytest.raises(LockedError) as info:
            DirectoryLock(run_dir).acquire()
        assert info.value.holder is not None and info.value.holder["pid"] == holder.pid
        assert info.value.path == run_dir
        assert str(run_dir) in str(info.value)
    finally:
        finish(holder)


def test_lock_file_is_json_with_holder_details(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, command="contrahash index build x", remove=False)
    try:
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == holder.pid
        assert info["command"] == "contrahash index build x"
        assert info["what"] == "run"
        assert isinstance(info["host"], str) and info["host"]
        assert abs(info["started_unix"] - os.path.getmtime(tmp_path / LOCK_NAME)) < 60
    finally:
        finish(holder)
    # release(remove=False) kept the file and its last holder
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid


def test_taken_over_after_holder_exits(tmp_path: Path) -> None:
    finish(start_holder(tmp_path))
    assert not (tmp_path / LOCK_NAME).exists()  # release removed it
    with DirectoryLock(tmp_path) as lock:
        assert lock.previous_holder is None
        assert json.loads(lock.lock_file.read_text())["pid"] == os.getpid()


def test_taken_over_after_kill_9(tmp_path: Path) -> None:
    holder = start_holder(tmp_path, command="contrahash train doomed.yaml")
    with pytest.raises(LockedError):
        DirectoryLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # left behind
    lock = DirectoryLock(tmp_path, command="contrahash train again.yaml").acquire()
    try:
        assert lock.previous_holder is not None
        assert lock.previous_holder["pid"] == holder.pid
        assert lock.previous_holder["command"] == "contrahash train doomed.yaml"
        info = json.loads(lock.lock_file.read_text())  # replaced, still valid JSON
        assert info["pid"] == os.getpid() and info["command"] == "contrahash train again.yaml"
        # and now the other way round: a real process is refused, naming this one
        other = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "x", "remove"],
                               input="", capture_output=True, text=True, timeout=60)
        assert other.returncode == 3 and f"pid {os.getpid()}" in other.stdout
    finally:
        lock.release()


def test_exactly_one_of_many_concurrent_processes_wins(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), f"p{i}", "remove"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    first_lines = []
    for p in procs:
        assert p.stdout is not None
        first_lines.append(p.stdout.readline().split(" ")[0].strip())
    for p in procs:
        p.communicate("", timeout=60)
    assert sorted(first_lines) == ["locked", "refused", "refused", "refused"]


def test_same_directory_twice_in_one_process_fails_clearly(tmp_path: Path) -> None:
    alias = tmp_path.parent / f"{tmp_path.name}-alias"
    alias.symlink_to(tmp_path)
    with DirectoryLock(tmp_path, what="index") as lock:
        with pytest.raises(LockedError, match="already locked by this process"):
            DirectoryLock(alias, what="run").acquire()
        with pytest.raises(LockedError, match="already holds it"):
            lock.acquire()
    with DirectoryLock(tmp_path):  # released: free again
        pass


def test_subprocesses_do_not_inherit_the_lock(tmp_path: Path) -> None:
    lock = DirectoryLock(tmp_path).acquire()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, text=True)
    try:
        lock.release()
        # the child (still running) must not keep the directory locked
        finish(start_holder(tmp_path))
    finally:
        child.communicate("", timeout=60)


def test_release_remove_cleans_up_what_the_lock_created(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "new"
    lock = DirectoryLock(target).acquire()
    assert target.is_dir() and lock.lock_file.exists()
    lock.release(remove=True)
    assert not (tmp_path / "runs").exists()  # a failed start leaves nothing behind

    with DirectoryLock(target) as lock:  # a directory that got content stays
        (target / "config.yaml").write_text("x: 1\n")
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml"]


def test_release_is_idempotent_and_context_manager_releases_on_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError), DirectoryLock(tmp_path) as lock:
        raise KeyError("boom")
    assert not lock.locked and not lock.lock_file.exists()
    lock.release()
    lock.release(remove=False)


def test_missing_or_non_directory_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DirectoryLock(tmp_path / "nope", create=False).acquire()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        DirectoryLock(tmp_path / "file").acquire()
