"""The benchmark grid: parsing, cells, resume logic, tables, CSV/JSON and plots.

Bench logic is tested with a fake ``train_fn`` that writes a run directory the way
:func:`contrahash.training.train.train_run` does; one slow test runs a tiny real grid on digits.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from contrahash import bench
from contrahash.bench import GridError, load_grid, parse_grid, run_grid
from contrahash.config import config_to_dict
from contrahash.io import write_json, write_text

GRID = {
    "name": "toy",
    "base": {"data": {"source": "digits", "protocol": "custom"}, "backbone": {"name": "pixels"},
             "bits": [8, 16], "optim": {"lr": 0.001}, "device": "cpu"},
    "seeds": [0, 1],
    "methods": {
        "fdbh": {"method": "fdbh", "backbone.finetune_blocks": 0},
        "cib": {"method": "cibhash", "optim": {"epochs": 3}},
        "itq": None,
    },
    "quick": {"optim.epochs": 2, "backbone": {"image_size": 16}},
}

# map per label at 8/16 bits; seed s adds s * 0.01
SCORES = {"fdbh": (0.60, 0.70), "cibhash": (0.50, 0.65), "itq": (0.40, 0.45)}


def fake_report(score: float, bits: int) -> dict:
    """The shape of contrahash.evaluation.metrics.retrieval_report + bit_statistics (values made up)."""
    return {
        "map": score, "map_best": score + 0.1, "map_worst": score - 0.1, "topk": 1000,
        "precision_at_n": {"100": score + 0.05, "500": score + 0.02, "1000": score},
        "precision_curve": {"n": list(range(1, 1001)),
                            "precision": [score + 0.05 * (1 - n / 1000) for n in range(1, 1001)]},
        "precision_radius_2": score - 0.1,
        "pr_curve": {"radius": [0, 1, 2, 3], "precision": [1.0, 0.8, score, 0.1],
                     "recall": [0.0, 0.2, 0.5, 1.0], "coverage": [0.5, 0.9, 1.0, 1.0]},
        "n_query": 100, "n_database": 1000, "bits": bits,
        "bit_balance": {"bits": bits, "ones_fraction": [0.5 + 0.01 * i for i in range(bits)],
                        "correlation": [[0.0] * bits for _ in range(bits)]},
    }


class FakeTrain:
    """Stands in for train_run: writes config, environment, checkpoint/results like a run."""

    def __init__(self, fail: set[str] | None = None, stop: set[str] | None = None):
        self.calls: list[tuple[str, bool]] = []
        self.fail, self.stop = fail or set(), stop or set()

    def __call__(self, cfg, run_dir, *, resume=False, command=None, progress=True,
                 shared_cache=None):
        run_dir = Path(run_dir)
        assert shared_cache is not None
        self.calls.append((run_dir.name, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg)))
        write_json(run_dir / "environment.json",
                   {"device": "cpu", "split_hashes": {"query": "aa", "database": "bb"}})
        if run_dir.name in self.fail:
            raise RuntimeError("boom")
        if run_dir.name in self.stop:  # interrupted after a checkpoint
            (run_dir / "checkpoint.json").write_text("{}")
            raise KeyboardInterrupt
        m8, m16 = SCORES[cfg.method]
        results = {"method": cfg.method, "protocol": "custom", "topk": 1000,
                   "bits": {str(b): fake_report(m + 0.01 * cfg.seed, b)
                            for b, m in zip(cfg.bits, (m8, m16), strict=True)},
                   "train_seconds": 2.0 + cfg.seed, "images_per_second": 500.0,
                   "total_seconds": 3.0}
        write_json(run_dir / "results.json", results)

        class Result:
            pass

        out = Result()
        out.results = results
        return out


def grid_file(tmp_path: Path, data: dict | None = None) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data or GRID, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- parsing
def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = grid_file(tmp_path, {**GRID, "method": {"x": 1}})
    with pytest.raises(GridError, match=r"grid\.yaml.*unknown top-level key.*'method'"):
        load_grid(path)


def test_grid_errors_are_explicit(tmp_path):
    with pytest.raises(GridError, match="'methods' must be a non-empty mapping"):
        parse_grid({"base": {}})
    with pytest.raises(GridError, match="seeds"):
        parse_grid({"methods": {"a": None}, "seeds": "zero"})
    with pytest.raises(GridError, match="row label"):
        parse_grid({"methods": {"a/b": None}})
    with pytest.raises(GridError, match="seeds come from"):
        parse_grid({"methods": {"a": {"seed": 3}}})
    grid = load_grid(grid_file(tmp_path))
    with pytest.raises(GridError, match=r"row 'fdbh'.*unknown config key"):
        bench.enumerate_cells(grid, tmp_path / "out", overrides=["backbone.nope=1"])
    with pytest.raises(GridError, match="--only: unknown row"):
        bench.enumerate_cells(grid, tmp_path / "out", only=["nope"])
    with pytest.raises(GridError, match="--out"):
        bench.enumerate_cells(grid, tmp_path / "out", overrides=["out_dir=x"])


def test_cells_enumerate_rows_then_seeds_with_layered_config(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    cells = bench.enumerate_cells(grid, out, overrides=["amp=false"])
    assert [c.id for c in cells] == ["fdbh-seed0", "fdbh-seed1", "cib-seed0", "cib-seed1",
                                     "itq-seed0", "itq-seed1"]
    by_id = {c.id: c for c in cells}
    cib = by_id["cib-seed1"].config
    assert cib.method == "cibhash" and cib.seed == 1 and cib.amp is False
    assert cib.optim == {"lr": 0.001, "epochs": 3}  # free-form sections merge key by key
    assert by_id["itq-seed0"].config.method == "itq"  # empty row: method = label
    assert by_id["fdbh-seed0"].run_dir == out / "runs" / "fdbh-seed0"
    assert by_id["fdbh-seed0"].config.cache.dir == str(out / "cache")
    assert by_id["fdbh-seed0"].config.backbone.image_size is None
    quick = bench.enumerate_cells(grid, out, quick=True, only=["cib"])
    assert [c.id for c in quick] == ["cib-seed0", "cib-seed1"]
    assert quick[0].config.optim == {"lr": 0.001, "epochs": 2}  # quick wins over the row
    assert quick[0].config.backbone.image_size == 16
    assert bench.default_out_dir(grid, quick=True).name == "toy-quick"


# ----------------------------------------------------------------------------- running
def test_grid_runs_every_cell_once_and_resumes(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    fake = FakeTrain(stop={"cib-seed1"})
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, out, train_fn=fake, plots=False, log=lambda m: None)
    assert [name for name, _ in fake.calls] == ["fdbh-seed0", "fdbh-seed1", "cib-seed0",
                                                "cib-seed1"]
    # the tables of the finished cells exist after the interruption
    assert "fdbh" in (out / "results.md").read_text()

    fake2 = FakeTrain()
    report = run_grid(grid, out, train_fn=fake2, plots=False, log=lambda m: None)
    # finished cells are read back; the interrupted one resumes; the rest start fresh
    assert fake2.calls == [("cib-seed1", True), ("itq-seed0", False), ("itq-seed1", False)]
    status = {o.cell.id: o.status for o in report.outcomes}
    assert status == {"fdbh-seed0": "reused", "fdbh-seed1": "reused", "cib-seed0": "reused",
                      "cib-seed1": "resumed", "itq-seed0": "done", "itq-seed1": "done"}
    fake3 = FakeTrain()
    run_grid(grid, out, train_fn=fake3, plots=False, log=lambda m: None)
    assert fake3.calls == []


def test_changed_config_is_refused_not_silently_reused(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    run_grid(grid, out, train_fn=FakeTrain(), only=["itq"], plots=False, log=lambda m: None)
    with pytest.raises(GridError, match=r"itq-seed0.*different config.*bits"):
        run_grid(grid, out, train_fn=FakeTrain(), only=["itq"], overrides=["bits=[8,32]"],
                 plots=False, log=lambda m: None)


class RecordingTrain(FakeTrain):
    """Like train_run since runs record their effective method config in results.json."""

    def __call__(self, cfg, run_dir, **kwargs):
        from dataclasses import asdict

        from contrahash.methods import METHODS
        from contrahash.methods.base import make_config

        out = super().__call__(cfg, run_dir, **kwargs)
        out.results["method_config"] = asdict(make_config(METHODS[cfg.method], cfg.method_config))
        write_json(Path(run_dir) / "results.json", out.results)
        return out


def test_default_written_out_is_the_same_config(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    quiet = {"plots": False, "log": lambda m: None, "only": ["fdbh"]}
    run_grid(grid, out, train_fn=RecordingTrain(), **quiet)
    again = RecordingTrain()  # lambda_rec=0.1 is FDBH's default: same hyper-parameters
    run_grid(grid, out, train_fn=again, overrides=["method_config.lambda_rec=0.1"], **quiet)
    assert again.calls == []
    with pytest.raises(GridError, match=r"fdbh-seed0.*different config.*lambda_rec"):
        run_grid(grid, out, train_fn=RecordingTrain(), overrides=["method_config.lambda_rec=0.2"],
                 **quiet)
    # runs that did not record their effective config are compared as written
    old_out = tmp_path / "old"
    run_grid(grid, old_out, train_fn=FakeTrain(), **quiet)
    with pytest.raises(GridError, match="lambda_rec"):
        run_grid(grid, old_out, train_fn=FakeTrain(), overrides=["method_config.lambda_rec=0.1"],
                 **quiet)


def test_failed_cell_is_recorded_and_others_run(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    fake = FakeTrain(fail={"fdbh-seed1"})
    report = run_grid(grid, tmp_path / "out", train_fn=fake, plots=False, log=lambda m: None)
    assert len(fake.calls) == 6
    assert [o.cell.id for o in report.failed] == ["fdbh-seed1"]
    assert "boom" in report.failed[0].error
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Missing cells" in md and "fdbh-seed1" in md
    # the failed cell has no results: the next run retries only it
    fake2 = FakeTrain()
    run_grid(grid, tmp_path / "out", train_fn=fake2, plots=False, log=lambda m: None)
    assert fake2.calls == [("fdbh-seed1", False)]


# ----------------------------------------------------------------------------- reports
def test_tables_bold_best_and_mean_std(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    report = run_grid(grid, tmp_path / "out", train_fn=FakeTrain(), plots=False,
                      log=lambda m: None, command="contrahash benchmark grid.yaml")
    md = report.markdown
    map_section = md.split("## mAP")[1].split("## Precision")[0]
    rows = {line.split("|")[1].strip(): line for line in map_section.splitlines()
            if line.startswith("| ") and "bits" not in line}
    # seeds 0 and 1 add 0.00 / 0.01: mean +0.005, sample std 0.00707
    assert "| **0.6050 ± 0.0071** | **0.7050 ± 0.0071** |" in rows["fdbh"]
    assert "| 0.5050 ± 0.0071 | 0.6550 ± 0.0071 |" in rows["cib"]
    assert "**" not in rows["itq"]
    assert "## mAP@1000" in md and "P@r≤2" in md and "## Cost" in md
    assert "dataset: `digits`" in md and "backbone: `pixels`" in md
    assert "full (not --quick)" in md and "contrahash benchmark grid.yaml" in md
    # single seed: plain values, no ±
    table = bench.metric_table({"a": {"bits": {"8": {"map": {"mean": 0.5, "std": None, "n": 1}}}},
                                "b": {"bits": {"8": {"map": {"mean": 0.25, "std": None, "n": 1}}}}},
                               ["a", "b"], [8], "map")
    assert table.splitlines()[2:] == ["| a | **0.5000** |", "| b | 0.2500 |"]


def test_csv_and_json_contents(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    run_grid(grid, out, train_fn=FakeTrain(), plots=False, log=lambda m: None, quick=True)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2  # rows × seeds × bits
    row = next(r for r in rows if r["label"] == "cib" and r["seed"] == "1" and r["bits"] == "16")
    assert row["method"] == "cibhash" and float(row["map"]) == pytest.approx(0.66)
    assert float(row["p_at_100"]) == pytest.approx(0.71)
    assert float(row["p_at_1000"]) == pytest.approx(0.66)
    assert float(row["p_r2"]) == pytest.approx(0.56)
    assert float(row["train_seconds"]) == 3.0 and float(row["images_per_second"]) == 500.0
    assert row["device"] == "cpu" and row["peak_memory_kind"] and float(row["peak_memory_mb"]) > 0
    data = json.loads((out / "results.json").read_text())
    assert data["quick"] is True and data["seeds"] == [0, 1]
    assert data["summary"]["itq"]["bits"]["8"]["map"]["mean"] == pytest.approx(0.405)
    assert float(row["map_best"]) == pytest.approx(0.76)
    assert float(row["map_worst"]) == pytest.approx(0.56)
    assert len(data["cells"]) == 6
    kept = data["cells"][0]["results"]["bits"]["8"]
    assert kept["pr_curve"]["recall"] == [0.0, 0.2, 0.5, 1.0]
    assert "correlation" not in kept["bit_balance"]  # bulk stays in the run's results.json
    assert kept["precision_curve"]["n"][:3] == [1, 10, 20]
    assert "tie range" in (out / "results.md").read_text()
    env = json.loads((out / "environment.json").read_text())
    assert env["split_hashes"]["fdbh-seed0"] == {"query": "aa", "database": "bb"}
    assert env["split_hashes_consistent"] is True and env["grid_sha256"]
    assert "--quick" in (out / "results.md").read_text()


def test_plots_are_written(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    report = run_grid(grid, out, train_fn=FakeTrain(), log=lambda m: None)
    for name in ("pr_8.png", "pr_16.png", "pn_8.png", "pn_16.png", "bit_balance.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path in report.files


def test_report_only_reads_finished_cells(tmp_path):
    grid = load_grid(grid_file(tmp_path))
    out = tmp_path / "out"
    run_grid(grid, out, train_fn=FakeTrain(), only=["itq"], plots=False, log=lambda m: None)
    report = run_grid(grid, out, report_only=True, plots=False, log=lambda m: None)
    status = {o.cell.id: o.status for o in report.outcomes}
    assert status["itq-seed0"] == "reused" and status["fdbh-seed0"] == "missing"


def test_cli_dry_run_and_errors(tmp_path):
    from typer.testing import CliRunner

    from contrahash.cli import app

    path = grid_file(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["benchmark", str(path), "--out", str(tmp_path / "o"), "--dry-run",
                              "--only", "fdbh,itq"])
    assert res.exit_code == 0, res.output
    assert "fdbh-seed1" in res.output and "cib-seed0" not in res.output
    bad = grid_file(tmp_path, {**GRID, "metods": {}})
    res = runner.invoke(app, ["benchmark", str(bad), "--dry-run"])
    assert res.exit_code == 2 and "metods" in res.output


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_real_grid_on_digits(tmp_path):
    """Two methods, 8/16 bits, 2 epochs on digits with a random-init pixel backbone."""
    data = {
        "name": "digits-tiny",
        "base": {
            "data": {"source": "digits", "protocol": "custom",
                     "protocol_options": {"query": 0.1, "train": 300, "train_in_database": True}},
            "backbone": {"name": "tiny_cnn", "image_size": 16, "random_init": True},
            "cache": {"mode": "on", "views": 4},
            "augment": {"scale": [0.7, 1.0], "flip_p": 0.0, "jitter_p": 0.0,
                        "grayscale_p": 0.0},
            "bits": [8, 16],
            "optim": {"epochs": 2, "batch_size": 64},
            "device": "cpu",
        },
        "seeds": [0],
        "methods": {"fdbh": {"method_config": {"neighbour_pool": "train"}}, "itq": None},
    }
    out = tmp_path / "out"
    report = run_grid(load_grid(grid_file(tmp_path, data)), out,
                      log=lambda m: None)
    assert not report.failed, [o.error for o in report.failed]
    assert len(report.rows) == 4
    assert all(0.0 <= r["map"] <= 1.0 for r in report.rows)
    for name in ("results.md", "results.csv", "results.json", "environment.json", "pr_16.png",
                 "bit_balance.png"):
        assert (out / name).is_file(), name
    assert list((out / "cache").iterdir())  # the shared feature cache was used
    env = json.loads((out / "environment.json").read_text())
    assert env["split_hashes_consistent"] is True and len(env["split_hashes"]) == 2
    # the same command again reads every cell back
    again = FakeTrain()
    report = run_grid(load_grid(grid_file(tmp_path, data)), out, train_fn=again, plots=False,
                      log=lambda m: None)
    assert again.calls == [] and {o.status for o in report.outcomes} == {"reused"}


def test_peak_memory_kinds():
    import numpy as np

    with bench.PeakMemory("cpu") as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    assert block.sum() > 0
    assert mem.values["peak_memory_kind"] in ("rss_hwm_per_cell", "process_maxrss")
    assert mem.values["peak_memory_bytes"] >= 64 * 2**20


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda():
    import torch

    with bench.PeakMemory("cuda") as mem:
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del x
    assert mem.values["peak_memory_kind"] == "cuda_max_memory_allocated"
    assert mem.values["peak_memory_bytes"] >= 256 * 2**20


def test_quick_skip_leaves_rows_out_of_the_quick_grid_only(tmp_path):
    grid = parse_grid({**GRID, "quick_skip": ["cib"]}, source="grid.yaml")
    out = tmp_path / "out"
    assert [c.label for c in bench.enumerate_cells(grid, out)].count("cib") == 2
    quick = bench.enumerate_cells(grid, out, quick=True)
    assert [c.id for c in quick] == ["fdbh-seed0", "fdbh-seed1", "itq-seed0", "itq-seed1"]
    asked = bench.enumerate_cells(grid, out, quick=True, only=["cib"])  # --only wins
    assert [c.id for c in asked] == ["cib-seed0", "cib-seed1"]
    run_grid(grid, out, train_fn=FakeTrain(), plots=False, log=lambda m: None, quick=True)
    md = (out / "results.md").read_text()
    assert "leaves out (`quick_skip`): cib" in md and "| cib |" not in md
    with pytest.raises(GridError, match=r"quick_skip: unknown row\(s\) \['nope'\]"):
        parse_grid({**GRID, "quick_skip": ["nope"]}, source="grid.yaml")
    with pytest.raises(GridError, match="list of row labels"):
        parse_grid({**GRID, "quick_skip": {"cib": 1}}, source="grid.yaml")


def test_eval_batch_size_does_not_block_resume(tmp_path):
    grid = parse_grid(GRID, source="grid.yaml")
    cells = bench.enumerate_cells(grid, tmp_path / "out", only=["itq"])
    run_grid(grid, tmp_path / "out", train_fn=FakeTrain(), plots=False, log=lambda m: None,
             only=["itq"])
    again = bench.enumerate_cells(grid, tmp_path / "out", only=["itq"], overrides=["eval_batch_size=32"])
    for cell in again:
        bench.check_same_config(cell)  # no GridError: batching does not define a run
    assert cells[0].config.eval_batch_size is None


# ----------------------------------------------------------------------------- plots, drawn
def _synthetic_outcomes(labels_n: int = 10, bits: int = 64) -> list:
    """Rows of a small synthetic grid whose PR curves have empty Hamming balls at small radii
    (long codes, noisy copies of class centres): real metrics, made-up methods."""
    import numpy as np

    from contrahash.bench.grid import Cell, CellOutcome
    from contrahash.config import TrainConfig
    from contrahash.evaluation.metrics import bit_statistics, retrieval_report

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    centres = rng.choice([-1, 1], size=(5, bits))
    outcomes = []
    for i in range(labels_n):
        flip = rng.random((300, bits)) < 0.05 + 0.04 * i
        codes = np.where(flip, -centres[labels], centres[labels])
        rep = retrieval_report(codes[:50], codes[50:], labels[:50], labels[50:], topk=None,
                               ns=(100,))
        rep["bit_balance"] = bit_statistics(codes[50:])
        cell = Cell(f"row{i}", 0, TrainConfig(), Path("unused"))
        outcomes.append(CellOutcome(cell, "done", {"bits": {str(bits): rep}}))
    return outcomes


def test_pr_plot_has_no_drop_to_the_origin(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from contrahash.bench import plots

    outcomes = _synthetic_outcomes()
    raw = outcomes[-1].results["bits"]["64"]["pr_curve"]
    # the data do have radii with nothing retrieved: precision 0 at recall 0
    assert raw["recall"][:3] == [0.0] * 3 and raw["precision"][:3] == [0.0] * 3
    assert raw["coverage"][0] == 0.0
    reports = plots._first_seed_reports(outcomes)
    fig = plots._curve_figure("pr", 64, reports)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 10
    for line in lines:
        assert len(line.get_xdata()) > 3
        assert min(line.get_xdata()) > 0  # no point at recall 0, so no drop to (0, 0)
    # what is drawn is exactly the radii with recall > 0, in radius order
    keep = [i for i, r in enumerate(raw["recall"]) if r > 0]
    assert list(lines[-1].get_xdata()) == [raw["recall"][i] for i in keep]
    assert list(lines[-1].get_ydata()) == [raw["precision"][i] for i in keep]
    matplotlib.pyplot.close(fig)


def test_pr_curve_points_without_coverage_drop_recall_zero():
    from contrahash.evaluation.metrics import pr_curve_points

    curve = {"recall": [0.0, 0.0, 0.1, 0.6, 1.0], "precision": [0.0, 0.0, 0.9, 0.5, 0.1]}
    assert pr_curve_points(curve) == ([0.1, 0.6, 1.0], [0.9, 0.5, 0.1])
    curve["coverage"] = [0.0, 0.2, 0.0, 1.0, 1.0]  # a radius with coverage 0 is dropped too
    assert pr_curve_points(curve) == ([0.6, 1.0], [0.5, 0.1])
    with pytest.raises(ValueError, match="2 recall values but 1 precision"):
        pr_curve_points({"recall": [0.1, 1.0], "precision": [0.5]})


@pytest.mark.parametrize("kind", ["pr", "pn", "balance"])
def test_legends_sit_outside_the_axes(kind):
    import matplotlib

    matplotlib.use("Agg")
    from contrahash.bench import plots

    reports = plots._first_seed_reports(_synthetic_outcomes())
    if kind == "balance":
        fig = plots._balance_figure(64, {lab: plots._ones_fraction(r["64"])
                                         for lab, r in reports.items()})
    else:
        fig = plots._curve_figure(kind, 64, reports)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 10
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1  # entirely right of the axes: it hides no data
    matplotlib.pyplot.close(fig)


def test_saved_plots_keep_the_outside_legend(tmp_path):
    import struct

    from contrahash.bench import plots

    written = plots.write_plots(tmp_path, _synthetic_outcomes(labels_n=3))
    assert [p.name for p in written] == ["pr_64.png", "pn_64.png", "bit_balance.png"]
    for path in written[:2]:
        width = struct.unpack(">I", path.read_bytes()[16:20])[0]  # PNG IHDR width
        assert width > 5 * 120  # wider than the 5-inch axes figure: the legend is kept


# ----------------------------------------------------------------------------- description
DESCRIBED = {**GRID, "description": "Full settings: 224 px, 8 augmented views."}


def _markdown(tmp_path, **kwargs) -> str:
    grid = parse_grid(DESCRIBED, source="grid.yaml")
    report = run_grid(grid, tmp_path / "out", train_fn=FakeTrain(), plots=False,
                      log=lambda m: None, **kwargs)
    return report.markdown


def test_full_grid_report_shows_the_description_as_is(tmp_path):
    md = _markdown(tmp_path)
    assert "\nFull settings: 224 px, 8 augmented views.\n" in md
    assert "Full-grid description" not in md
    # overrides that only place or batch a run change nothing the description says
    md = _markdown(tmp_path / "b", overrides=["eval_batch_size=32"])
    assert "\nFull settings: 224 px" in md and "Full-grid description" not in md


def test_quick_report_says_the_description_is_the_full_grids(tmp_path):
    md = _markdown(tmp_path, quick=True)
    line = next(x for x in md.splitlines() if "224 px" in x)
    assert line.startswith("*Full-grid description; this run used the --quick preset "
                           "(optim.epochs=2, backbone.image_size=16)")
    assert line.endswith("are what ran:* Full settings: 224 px, 8 augmented views.")
    assert "resolution: 16" in md  # the settings list says what ran


def test_overridden_report_says_the_description_is_the_full_grids(tmp_path):
    md = _markdown(tmp_path, overrides=["cache.views=2", "eval_batch_size=8"])
    line = next(x for x in md.splitlines() if "224 px" in x)
    assert "this run used the overrides `cache.views=2`, so" in line
    md = _markdown(tmp_path / "q", quick=True, overrides=["cache.views=2"])
    line = next(x for x in md.splitlines() if "224 px" in x)
    assert "the --quick preset (optim.epochs=2, backbone.image_size=16) and the overrides " \
           "`cache.views=2`" in line


def test_seed_placeholder_reaches_row_values(tmp_path):
    grid = parse_grid({"base": {"data": {"source": "digits"}}, "seeds": [3, 4],
                       "methods": {"itq": {"method": "itq",
                                           "method_config": {"seed": "${seed}"}}}})
    cells = bench.enumerate_cells(grid, tmp_path)
    assert [c.config.method_config["seed"] for c in cells] == [3, 4]
    assert [c.config.seed for c in cells] == [3, 4]
