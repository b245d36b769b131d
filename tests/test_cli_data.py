"""``contrahash data info`` and ``contrahash data split``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from contrahash.data.protocols import load_split

runner = CliRunner()


def _run(app, args):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    return result, " ".join(result.output.split())


@pytest.fixture
def app():
    from contrahash.cli import app

    return app


def _folder(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    (root / "train" / "ant" / "broken.png").write_bytes(os.urandom(50))
    return root


def test_info_digits(app):
    result, text = _run(app, ["data", "info", "digits"])
    assert result.exit_code == 0, result.output
    assert "1,797 images" in text and "skipped files: 0" in text
    assert "178" in text  # images of class 0


def test_info_folder_shows_groups_and_skipped(app, tmp_path):
    result, text = _run(app, ["data", "info", str(_folder(tmp_path)), "--labels", "folders"])
    assert result.exit_code == 0, result.output
    assert "skipped files: 1" in text and "broken.png" in text
    assert "│ ant │ 8 │ 2 │ 6 │" in text and "│ images │ 16 │ 4 │ 12 │" in text


def test_split_writes_lists(app, tmp_path):
    out = tmp_path / "split"
    args = ["data", "split", "cifar10-1", "--source", "digits", "--seed", "3", "--scale", "0.1"]
    result, text = _run(app, [*args, "--val-size", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "│ database │ 619 │" in text
    meta = json.loads((out / "split.json").read_text())
    assert meta["counts"] == {"query": 100, "database": 619, "train": 500, "val": 50}
    split = load_split(out)
    assert split.seed == 3 and split.protocol == "cifar10-1" and len(split.val) == 50


def test_split_error_exits_2_with_message(app, tmp_path):
    args = ["data", "split", "cifar10-1", "--source", "digits", "--out", str(tmp_path / "o")]
    result, text = _run(app, args)
    assert result.exit_code == 2
    assert "class '0' has 178 images" in text
    result, text = _run(app, ["data", "info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in text
