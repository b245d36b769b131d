"""Careless input through the command line: one line ``error: …`` naming the field or array and
the bad value, exit code 2, nothing written — never a traceback, never a silent wrong result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from contrahash.cli import app

runner = CliRunner()


def _run(*args: object) -> tuple[int, list[str]]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})
    assert "Traceback" not in result.output, result.output
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def _one_error(args: list[object]) -> str:
    code, lines = _run(*args)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize("override, message", [
    ("optim.epochs=0", "optim.epochs: must be >= 1, got 0"),
    ("optim.epochs=-1", "optim.epochs: must be >= 1, got -1"),
    ("optim.epochs=abc", "optim.epochs: expected int, got 'abc'"),
    ("optim.epochs=2.5", "optim.epochs: expected an integer, got 2.5"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=1e-3x", "optim.lr: expected float, got '1e-3x'"),
    ("optim.epoch=3", "optim: unknown key(s) ['epoch']; known keys: ['backbone_lr_scale', "
                      "'batch_size', 'epochs', 'lr', 'momentum', 'name', 'schedule', "
                      "'weight_decay']"),
    ("bits=100000", "bits: code lengths must be integers in 1..4096"),
    ("cache.views=0", "cache.views: must be >= 1, got 0"),
    ("backbone.image_size=2", "backbone.image_size: must be >= 8, got 2"),
])
def test_train_refuses_bad_values_before_anything_runs(tmp_path, override, message):
    text = _one_error(["train", "method=itq", "data.source=digits", override,
                       f"out_dir={tmp_path / 'runs'}"])
    assert text.startswith(message)
    assert not (tmp_path / "runs").exists()  # nothing was started, nothing written


def test_train_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("method: itq\noptim: {epochs: 0}\n")
    assert _one_error(["train", path]) == f"{path}: optim.epochs: must be >= 1, got 0"
    (tmp_path / "base.yaml").write_text("extends: mine.yaml\n")
    path.write_text("extends: base.yaml\nmethod: itq\n")
    text = _one_error(["train", path])
    assert text == f"{tmp_path / 'base.yaml'}: extends cycle: {path} -> " \
                   f"{tmp_path / 'base.yaml'} -> {path}"


def test_benchmark_override_errors_name_the_grid_and_row(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "g", "base": {"data": {"source": "digits"}, "backbone": {"name": "pixels"}},
        "methods": {"itq": None},
    }))
    text = _one_error(["benchmark", grid, "--dry-run", "--out", tmp_path / "o", "optim.lr=0"])
    assert text == f"{grid}: row 'itq' (seed 0): optim.lr: must be > 0, got 0.0"


@pytest.fixture()
def code_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"q": np.where(rng.random((6, 16)) < 0.5, 1, -1).astype(np.int8),
              "db": np.where(rng.random((40, 16)) < 0.5, 1, -1).astype(np.int8),
              "ql": rng.integers(0, 3, 6), "dl": rng.integers(0, 3, 40)}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array)
    return tmp_path


def _evaluate(path, ql: str = "ql.npy", dl: str = "dl.npy") -> list[object]:
    return ["evaluate", "--query-codes", path / "q.npy", "--db-codes", path / "db.npy",
            "--query-labels", path / ql, "--db-labels", path / dl, "--json"]


def test_evaluate_refuses_negative_labels_instead_of_scoring_zero(code_files):
    code, lines = _run(*_evaluate(code_files))
    assert code == 0 and 0 < json.loads(lines[0])["map"] <= 1
    np.save(code_files / "neg.npy", np.array([-1, 0, 2, -1, 1, -5]))
    assert _one_error(_evaluate(code_files, ql="neg.npy")) == (
        "query_labels: class ids must be integers >= 0; found -5, -1 in 3 of 6 entries")
    hot = np.zeros((40, 3), np.int64)
    hot[:, 0], hot[3, 1] = 1, 2
    np.save(code_files / "hot.npy", hot)
    np.save(code_files / "qhot.npy", np.eye(3, dtype=np.int64)[[0, 1, 2, 0, 1, 2]])
    assert _one_error(_evaluate(code_files, ql="qhot.npy", dl="hot.npy")) == (
        "db_labels: multi-hot labels must be 0/1; found 2 in 1 of 120 entries")


def test_evaluate_refuses_labels_of_another_length(code_files):
    np.save(code_files / "short.npy", np.zeros(39, np.int64))
    assert _one_error(_evaluate(code_files, dl="short.npy")) == (
        "db_labels has 39 rows but db_codes has 40 codes; give one label (row) per code, in "
        "the same order")


def test_data_split_scale_shrinks_the_database_too(tmp_path):
    out = tmp_path / "split"
    code, _ = _run("data", "split", "cifar10-1", "--source", "digits", "--scale", "0.1",
                   "--out", out)
    assert code == 0
    counts = json.loads((out / "split.json").read_text())["counts"]
    # digits has 174..183 images per class: 10 query + 50 train per class, and the database
    # keeps train plus a tenth of the rest (not all 1,697 non-query images)
    assert counts["query"] == 100 and counts["train"] == 500
    assert 500 < counts["database"] < 500 + 0.1 * 1797
