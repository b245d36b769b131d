"""``contrahash index build``, ``search`` and ``evaluate`` through typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from contrahash.cli import app
from contrahash.evaluation.metrics import retrieval_report
from contrahash.retrieval.index import HammingIndex, pack_codes

runner = CliRunner()


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    db = np.where(rng.random((300, 16)) < 0.5, 1, -1).astype(np.int8)
    q = np.where(rng.random((12, 16)) < 0.5, 1, -1).astype(np.int8)
    out = {
        "db": db, "q": q, "dl": rng.integers(0, 4, 300), "ql": rng.integers(0, 4, 12),
        "ids": rng.permutation(1000)[:300].astype(np.int64),
    }
    for name, array in out.items():
        np.save(tmp_path / f"{name}.npy", array)
    np.save(tmp_path / "packed.npy", pack_codes(db))
    np.save(tmp_path / "bad.npy", np.zeros((3, 7)))
    return tmp_path, out


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def test_build_search_roundtrip(files):
    path, data = files
    result = run("index", "build", path / "db.npy", "--out", path / "db.idx", "--ids",
                 path / "ids.npy")
    assert result.exit_code == 0, result.output
    assert "300 codes of 16 bits" in result.output
    result = run("search", path / "db.idx", path / "q.npy", "-k", 4, "--out", path / "res.npz")
    assert result.exit_code == 0, result.output
    assert "distance" in result.output
    saved = np.load(path / "res.npz")
    index = HammingIndex(16, backend="numpy")
    index.add(data["db"], ids=data["ids"])
    want_d, want_i = index.search(data["q"], 4)
    assert (saved["ids"] == want_i).all() and (saved["distances"] == want_d).all()
    result = run("search", path / "db.idx", path / "q.npy", "-k", 4, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["ids"] == want_i.tolist() and payload["k"] == 4


def test_build_from_packed_codes(files):
    path, data = files
    result = run("index", "build", path / "packed.npy", "--bits", 16, "--out", path / "p.idx")
    assert result.exit_code == 0, result.output
    loaded = HammingIndex.load(path / "p.idx")
    assert (loaded.packed_codes == pack_codes(data["db"])).all()
    result = run("index", "build", path / "packed.npy", "--bits", 12, "--out", path / "x.idx")
    assert result.exit_code != 0 and "padding" in result.output


def test_evaluate_files_table_and_json(files):
    path, data = files
    common = ["--query-codes", path / "q.npy", "--db-codes", path / "db.npy",
              "--query-labels", path / "ql.npy", "--db-labels", path / "dl.npy", "--topk", 100]
    result = run("evaluate", *common, "--bounds")
    assert result.exit_code == 0, result.output
    assert "mAP@100" in result.output and "P@r≤2" in result.output and "worst" in result.output
    result = run("evaluate", *common, "--json")
    assert result.exit_code == 0
    got = json.loads(result.stdout)
    want = retrieval_report(data["q"], data["db"], data["ql"], data["dl"], topk=100)
    assert got["map"] == pytest.approx(want["map"])
    assert got["precision_at_n"] == pytest.approx(want["precision_at_n"])


def test_evaluate_run_dir_reproduces_the_runs_numbers(tmp_path):
    from contrahash.config import resolve_config
    from contrahash.training.train import train_run

    cfg = resolve_config(None, ["method=itq", "data.source=digits", "backbone.name=pixels",
                                "backbone.image_size=8", "bits=[8,16]",
                                "data.protocol_options={query: 0.1, train: 200}",
                                f"cache.dir={tmp_path / 'cache'}"])
    done = train_run(cfg, tmp_path / "run").results
    result = run("evaluate", tmp_path / "run", "--topk", 100)
    assert result.exit_code == 0, result.output
    result = run("evaluate", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert set(reports) == {"8", "16"}
    for bits in ("8", "16"):  # the saved codes give back the run's own numbers
        assert reports[bits]["map"] == pytest.approx(done["bits"][bits]["map"])
        assert reports[bits]["precision_at_n"] == pytest.approx(done["bits"][bits]["precision_at_n"])


def test_user_errors_exit_cleanly(files, tmp_path):
    path, _ = files
    assert run("index", "build", path / "db.npy", "--out", path / "db.idx").exit_code == 0
    cases = [
        ("search", path / "missing.idx", path / "q.npy"),
        ("search", path / "db.idx", path / "missing.npy"),
        ("search", path / "db.idx", path / "bad.npy"),  # 7-bit queries, 16-bit index
        ("evaluate", "--query-codes", path / "q.npy", "--db-codes", path / "db.npy",
         "--query-labels", path / "dl.npy", "--db-labels", path / "dl.npy"),  # shape mismatch
        ("evaluate", "--query-codes", path / "q.npy"),  # incomplete
        ("evaluate", tmp_path / "no-such-run"),
        ("index", "build", path / "bad.npy", "--out", path / "b.idx", "--bits", 3),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code != 0, (args, result.output)
    broken = path / "broken.idx"
    broken.write_bytes((path / "db.idx").read_bytes()[:100])
    result = run("search", broken, path / "q.npy")
    assert result.exit_code != 0 and "truncated" in result.output
