"""Reliability drills with real processes: kill -9 at random points of training, of a cache
build and of an index build, then resume; two writers at once; a read-only or full disk; and
careless command lines — each ends in a one-line error, a non-zero exit code and intact state.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from contrahash.cli import app

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[1] / "src"
#: a tiny run that still takes a few seconds: digits through a small CNN, 8 cached views
RUN = ["train", "method=fdbh", "data.source=digits",
       "data.protocol_options={query: 0.1, train: 600}", "backbone.name=tiny_cnn",
       "backbone.random_init=true", "backbone.image_size=32", "bits=[8,16]", "cache.views=8",
       "optim.epochs=6", "optim.batch_size=64", "method_config.neighbour_pool=train",
       "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "CONTRAHASH_THREADS": "1"}


def contrahash(*args: object, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "contrahash.cli", *map(str, args)],
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def killed_after(seconds: float, *args: object) -> None:
    """Start a command and kill -9 it after ``seconds`` (or let it finish first)."""
    proc = subprocess.Popen([sys.executable, "-m", "contrahash.cli", *map(str, args)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def codes(run: Path) -> list[np.ndarray]:
    return [np.load(run / "codes" / f"{k}.npz")["database"] for k in (8, 16)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("drills")
    done = contrahash(*RUN, f"cache.dir={root / 'cache'}", "--run-dir", root / "ref")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _finish(run: Path, cache: Path) -> None:
    """After a kill: resume the run, or start it again when it never got a config."""
    if (run / "config.yaml").is_file():
        done = contrahash("train", "--resume", run, "--no-progress")
    else:
        done = contrahash(*RUN, f"cache.dir={cache}", "--run-dir", run)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("phase", ["cache build", "training"])
def test_kill_at_random_points_then_resume_bit_identically(reference, tmp_path, phase):
    """Killed while the feature cache is built (fresh cache) or while it trains (warm cache),
    at seeded random moments, twice in a row: the resumed run ends with the same codes."""
    rng = random.Random(f"{phase}-drill")
    cache = tmp_path / "cache" if phase == "cache build" else reference / "cache"
    run = tmp_path / "run"
    for _ in range(2):
        killed_after(rng.uniform(3.0, 9.0), *RUN, f"cache.dir={cache}", "--run-dir", run)
        if (run / "results.json").exists():
            break
        if (run / "config.yaml").is_file():
            killed_after(rng.uniform(3.0, 6.0), "train", "--resume", run, "--no-progress")
    if not (run / "results.json").exists():
        _finish(run, cache)
    for a, b in zip(codes(reference / "ref"), codes(run), strict=True):
        assert np.array_equal(a, b)
    assert not list(cache.glob("*.partial.npy"))  # the cache finished, no leftovers


def test_kill_during_index_build_and_add(reference, tmp_path):
    rng = random.Random("index-drill")
    out = tmp_path / "coll"
    killed_after(rng.uniform(3.0, 6.0), "index", "build", reference / "ref", "--data", "digits",
                 "--out", out, "--no-progress")
    if not (out / "manifest.json").exists():  # killed before its commit point: build again
        done = contrahash("index", "build", reference / "ref", "--data", "digits", "--out", out,
                          "--no-progress")
        assert done.returncode == 0, done.stderr[-3000:]
    manifest = (out / "manifest.json").read_bytes()
    killed_after(rng.uniform(3.0, 6.0), "index", "add", out, "--data", "digits",
                 "--allow-duplicates", "--no-progress")
    after = json.loads((out / "manifest.json").read_text())
    assert after["count"] in (1797, 2 * 1797)  # before the commit point, or after it
    if after["count"] == 1797:
        assert (out / "manifest.json").read_bytes() == manifest
    done = contrahash("index", "build", reference / "ref", "--data", "digits", "--out",
                      tmp_path / "fresh", "--no-progress")
    assert done.returncode == 0
    for bits in (8, 16):
        a = (out / "segments" / "000000" / f"codes_{bits}.index").read_bytes()
        assert a == (tmp_path / "fresh" / "segments" / "000000" / f"codes_{bits}.index").read_bytes()
    found = contrahash("search", out, "--id", "7", "-k", "3", "--json")
    assert found.returncode == 0 and json.loads(found.stdout)["results"][0]["distance"] == 0


def test_two_writers_of_one_run_directory(reference, tmp_path):
    """Two trainings started together into one --run-dir: the second refuses, naming the
    holder; the first's run is intact (its config, one metrics line per epoch)."""
    run = tmp_path / "dual"
    procs = [subprocess.Popen([sys.executable, "-m", "contrahash.cli", *RUN,
                               f"cache.dir={reference / 'cache'}", f"seed={seed}",
                               "--run-dir", str(run)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes_ = [p.returncode for p in procs]
    assert sorted(codes_) == [0, 2], outs
    loser = outs[codes_.index(2)][1]
    assert "is in use by pid" in loser and "error:" in loser
    winner_seed = codes_.index(0)
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == winner_seed
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5, 6]
    assert not (run / ".contrahash.lock").exists()


# ----------------------------------------------------------------------------- full and read-only
class _Runner(CliRunner):
    """Arguments may be paths."""

    def invoke(self, cli, args=None, **kwargs):  # noqa: D102
        return super().invoke(cli, [str(a) for a in args or []], **kwargs)


runner = _Runner()
SMALL = ["train", "method=itq", "data.source=digits", "backbone.name=pixels",
         "backbone.image_size=8", "bits=[8,16]", "data.protocol_options={query: 0.1, train: 200}",
         "--no-progress"]


def _one_line(result) -> str:
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "no space left"),
                                             (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_is_one_line_and_keeps_the_last_good_state(
        tmp_path, monkeypatch, code, words):
    import contrahash.io as io_module

    base = [*SMALL, f"cache.dir={tmp_path / 'cache'}", f"out_dir={tmp_path}"]
    assert runner.invoke(app, [*base, "name=ok"]).exit_code == 0
    before = (tmp_path / "ok" / "results.json").read_bytes()
    real = io_module.os.replace

    def refuse(src, dst, *args, **kwargs):
        if str(dst).startswith(str(tmp_path)):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "replace", refuse)
    line = _one_line(runner.invoke(app, [*base, "name=new"]))
    assert words in line and str(tmp_path) in line
    line = _one_line(runner.invoke(app, ["encode", str(tmp_path / "ok"), "--out",
                                         str(tmp_path / "c.npy"), "--no-progress"]))
    assert words in line
    monkeypatch.undo()
    assert (tmp_path / "ok" / "results.json").read_bytes() == before
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporary files
    assert not (tmp_path / "new").exists()  # the failed start left nothing behind


def test_careless_search_and_index_commands(tmp_path):
    np.save(tmp_path / "db.npy", np.where(np.random.default_rng(0).random((5, 16)) > 0.5, 1, -1))
    np.save(tmp_path / "q.npy", np.ones((2, 16)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 16)))
    assert "holds no codes" in _one_line(runner.invoke(
        app, ["index", "build", tmp_path / "empty.npy", "--out", tmp_path / "e.idx"]))
    assert not (tmp_path / "e.idx").exists()
    assert runner.invoke(app, ["index", "build", tmp_path / "db.npy", "--out",
                               tmp_path / "db.idx"]).exit_code == 0
    assert "is a directory" in _one_line(
        runner.invoke(app, ["search", tmp_path, tmp_path / "q.npy"]))
    result = runner.invoke(app, ["search", tmp_path / "db.idx", tmp_path / "q.npy", "-k", "50",
                                 "--json"])
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["k"] == 5 and -1 not in sum(out["ids"], [])
    assert 2147483647 not in sum(out["distances"], [])
    assert "not a run directory" in _one_line(
        runner.invoke(app, ["encode", tmp_path, "--out", tmp_path / "x.npy"]))


def test_resume_overrides_and_finished_runs(tmp_path):
    base = [*SMALL, f"cache.dir={tmp_path / 'cache'}", f"out_dir={tmp_path}", "name=r"]
    assert runner.invoke(app, base).exit_code == 0
    stamp = (tmp_path / "r" / "results.json").stat().st_mtime_ns
    t = time.perf_counter()
    again = runner.invoke(app, ["train", "--resume", tmp_path / "r", "--no-progress"])
    assert again.exit_code == 0 and "has already finished: nothing to do" in " ".join(
        again.output.split())
    assert time.perf_counter() - t < 30
    assert (tmp_path / "r" / "results.json").stat().st_mtime_ns == stamp
    line = _one_line(runner.invoke(app, ["train", "--resume", tmp_path / "r", "bits=[8]"]))
    assert "'bits' cannot change" in line
