"""contrahash train / encode / evaluate through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from contrahash.cli import app

runner = CliRunner()
BASE = ["method=itq", "data.source=digits", "backbone.name=pixels", "backbone.image_size=8",
        "bits=[8,16]", "data.protocol_options={query: 0.1, train: 200}"]


def test_train_encode_evaluate(tmp_path):
    res = runner.invoke(app, ["train", *BASE, f"out_dir={tmp_path}", "name=r",
                              f"cache.dir={tmp_path / 'c'}"])
    assert res.exit_code == 0, res.output
    assert "mAP" in res.output
    out = tmp_path / "codes.npy"
    res = runner.invoke(app, ["encode", str(tmp_path / "r"), "--out", str(out), "--bits", "8"])
    assert res.exit_code == 0, res.output
    codes = np.load(out)
    assert codes.shape == (1797, 8)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert json.loads(res.stdout)["8"]["map"] == pytest.approx(saved["bits"]["8"]["map"])


def test_bad_key_and_bad_resume_are_clean_errors(tmp_path):
    res = runner.invoke(app, ["train", "methd=fdbh"])
    assert res.exit_code == 2 and "unknown config key" in res.output
    res = runner.invoke(app, ["train", "--resume", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = runner.invoke(app, ["train", *BASE, "data.source=/nonexistent/x.npz", f"out_dir={tmp_path}"])
    assert res.exit_code == 2 and "/nonexistent/x.npz" in res.output


def test_demo_directories_never_collide(tmp_path, monkeypatch):
    from contrahash import demo

    monkeypatch.chdir(tmp_path)
    first = demo.default_demo_dir()
    first.mkdir(parents=True)
    second = demo.default_demo_dir()  # same second: still a new directory
    assert first != second and not second.exists()
    assert first.parent == second.parent == Path("runs")


def test_every_progress_option_reads_the_same():
    """``--progress/--no-progress`` is one declaration: the same flags, default and help in
    every command with long phases."""
    from conftest import cli_commands

    seen = {}
    for words, command in cli_commands().items():
        for param in command.params:
            if param.name == "progress":
                seen[words] = (tuple(param.opts), tuple(param.secondary_opts), param.default,
                               param.help)
    assert {"train", "encode", "benchmark", "index build", "index add", "index sync"} <= set(seen)
    assert set(seen.values()) == {(("--progress",), ("--no-progress",), True,
                                   "show progress of long phases (stderr)")}
