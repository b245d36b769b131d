"""Progress: the library reports every phase, the CLI shows bars or plain lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contrahash.cli.progress import progress_display
from contrahash.progress import Progress, ProgressEvent

SRC = Path(__file__).resolve().parents[1] / "src"


def test_plain_lines_tick_while_a_phase_runs_and_end_once(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("contrahash.cli.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    show = progress_display(True, stream=out)  # not a terminal: plain lines
    show(ProgressEvent("encoding", 0, 100, "img", 0.0))
    for done, t in ((10, 4.0), (40, 11.0), (60, 15.0), (90, 22.0)):
        clock[0] = t
        show(ProgressEvent("encoding", done, 100, "img", t))
    show(ProgressEvent("encoding", 100, 100, "img", 24.0, finished=True))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("encoding: 40/100 img (40%)") and "about" in lines[0]
    assert lines[1].startswith("encoding: 90/100 img (90%)")
    assert lines[2] == "encoding: 100/100 img (100%), 4 img/s — done in 24.0 s"
    assert len(lines) == 3
    quick = io.StringIO()
    show = progress_display(True, stream=quick)
    show(ProgressEvent("mining", 0, 5, "img", 0.0))
    show(ProgressEvent("mining", 5, 5, "img", 0.2, finished=True))
    assert quick.getvalue() == ""  # a phase under a second costs no line


def test_the_library_reports_each_phase_of_a_run(tmp_path):
    from contrahash.config import resolve_config
    from contrahash.training.train import train_run

    events: list[ProgressEvent] = []
    cfg = resolve_config(None, ["method=fdbh", "data.source=digits", "backbone.name=pixels",
                                "backbone.image_size=8", "bits=[8]", "optim.epochs=2",
                                "data.protocol_options={query: 0.1, train: 300}",
                                "method_config.neighbour_pool=database", "cache.views=3",
                                f"cache.dir={tmp_path / 'cache'}"])
    train_run(cfg, tmp_path / "run", progress=Progress(events.append))
    finished = [e.phase for e in events if e.finished]
    for phase in ("data loading", "features of the evaluated images",
                  "augmented views of the training images", "neighbour mining", "training",
                  "evaluation"):
        assert phase in finished, (phase, finished)
    epochs = [e.info["epoch"] for e in events if e.phase == "training" and e.finished]
    assert epochs == [1, 2]


@pytest.mark.slow
def test_a_command_in_a_log_shows_progress_lines(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "CONTRAHASH_PROGRESS_SECONDS": "0"}
    done = subprocess.run([sys.executable, "-m", "contrahash.cli", "train", "method=cibhash",
                           "data.source=digits", "backbone.name=tiny_cnn",
                           "backbone.random_init=true", "backbone.image_size=32", "bits=[8]",
                           "optim.epochs=2", "data.protocol_options={query: 0.1, train: 400}",
                           f"cache.dir={tmp_path / 'cache'}", "--run-dir", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    for phase in ("features of the evaluated images", "augmented views", "training (epoch 2/2)"):
        assert phase in done.stderr, done.stderr
