"""Running a grid: each cell trained, resumed or reused, its cost measured, reports rewritten."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from contrahash.bench.grid import (
    LOCATION_KEYS,
    Cell,
    CellOutcome,
    Grid,
    GridError,
    cache_dir_for,
    enumerate_cells,
)
from contrahash.bench.memory import PeakMemory
from contrahash.bench.plots import write_plots
from contrahash.bench.report import BenchReport, write_reports
from contrahash.config import ConfigError, config_to_dict, resolve_config
from contrahash.io import write_json
from contrahash.progress import ProgressCallback
from contrahash.training.rundir import RunDirectory

__all__ = ["CELL_FILE", "cell_state", "check_same_config", "collect_cell", "run_cell", "run_grid"]


TrainFn = Callable[..., Any]
#: per-cell measurements (cost, peak memory, device) kept beside the cell's run
CELL_FILE = "bench_cell.json"


def cell_state(run_dir: Path) -> str:
    """'finished' (results.json), 'partial' (checkpoint, no results) or 'new'."""
    return RunDirectory(run_dir).state()


def check_same_config(cell: Cell) -> None:
    """Refuse to reuse or resume a run made with another config (names the differing keys)."""
    path = cell.run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        old = config_to_dict(resolve_config(path))
    except ConfigError as exc:
        raise GridError(f"{path}: cannot read the existing run's config ({exc})") from None
    new = config_to_dict(cell.config)
    diffs = [k for k in _diff_keys(old, new) if k not in LOCATION_KEYS]
    if diffs and all(k.startswith("method_config.") for k in diffs) and (
        _same_effective_method_config(cell)
    ):
        diffs = []  # spelled differently (e.g. a default written out), same hyper-parameters
    if diffs:
        shown = ", ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in diffs[:6])
        raise GridError(
            f"cell {cell.id}: {cell.run_dir} holds a run made with a different config "
            f"({shown}); delete that directory to recompute it, or choose another --out"
        )


def _same_effective_method_config(cell: Cell) -> bool:
    """Whether the run recorded (results.json or its start event) the very method
    hyper-parameters, defaults included, that the cell's config resolves to now."""
    from dataclasses import asdict  # noqa: PLC0415

    from contrahash.methods import METHODS
    from contrahash.methods.base import make_config

    run = RunDirectory(cell.run_dir)
    recorded = run.read_json("results.json").get("method_config")
    if recorded is None:
        recorded = next(iter(run.events("start")), {}).get("method_config")
    if recorded is None or cell.config.method not in METHODS:
        return False  # runs from before effective configs were recorded: compare as written
    try:
        effective = asdict(make_config(METHODS[cell.config.method], cell.config.method_config))
    except (TypeError, ValueError):
        return False
    return json.loads(json.dumps(effective)) == recorded


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _diff_keys(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix]


def _get(d: dict, dotted: str) -> Any:
    node: Any = d
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _resolve_device(name: str) -> str:
    from contrahash.models.model import select_device

    return str(select_device(name)) if name == "auto" else name


def _device_label(run_dir: Path, fallback: str) -> str:
    env = RunDirectory(run_dir).read_json("environment.json")
    device = str(env.get("device") or fallback)
    if device.startswith("cuda") and env.get("cuda_device"):
        return f"{env['cuda_device']} ({device})"
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                return f"{torch.cuda.get_device_name(0)} ({device})"
        except Exception:  # noqa: BLE001 - informational only
            pass
    return device


def _train_seconds_from_log(run_dir: Path) -> float | None:
    """Sum of per-epoch seconds in metrics.jsonl (the last record of each epoch counts)."""
    records = RunDirectory(run_dir).epoch_records()
    return round(sum(float(r["seconds"]) for r in records), 3) if records else None


def run_cell(cell: Cell, *, train_fn: TrainFn, cache: Any, command: str | None,
             progress: ProgressCallback | None = None) -> CellOutcome:
    """Run, resume or reuse one cell; failures are caught and recorded (not raised)."""
    state = cell_state(cell.run_dir)
    if state != "new":
        check_same_config(cell)
    if state == "finished":
        results = RunDirectory(cell.run_dir).read_json("results.json")
        measure = RunDirectory(cell.run_dir).read_json(CELL_FILE)
        measure.setdefault("device", _device_label(cell.run_dir, _resolve_device(cell.config.device)))
        return CellOutcome(cell, "reused", results, measure)
    device = _resolve_device(cell.config.device)
    resume = state == "partial"
    t0 = time.perf_counter()
    try:
        with PeakMemory(device) as mem:
            result = train_fn(cell.config, cell.run_dir, resume=resume, command=command,
                              progress=progress, shared_cache=cache)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failed cell must not lose the others
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return CellOutcome(cell, "failed", {}, {"device": device,
                                                "wall_seconds": round(time.perf_counter() - t0, 3)},
                           error=detail)
    wall = time.perf_counter() - t0
    results = dict(getattr(result, "results", result) or {})
    if not results.get("bits"):
        return CellOutcome(cell, "failed", results, {"device": device}, error="run produced no results")
    measure = {
        **mem.values,
        "wall_seconds": round(wall, 3),
        "device": _device_label(cell.run_dir, device),
        "resumed": resume,
    }
    if resume:
        logged = _train_seconds_from_log(cell.run_dir)
        if logged is not None:
            measure["train_seconds"] = logged
    write_json(cell.run_dir / CELL_FILE, measure)
    return CellOutcome(cell, "resumed" if resume else "done", results, measure)


def collect_cell(cell: Cell) -> CellOutcome:
    """A cell's outcome read from disk only (``--report-only``)."""
    if cell_state(cell.run_dir) != "finished":
        return CellOutcome(cell, "missing", error="no results.json yet")
    check_same_config(cell)
    measure = RunDirectory(cell.run_dir).read_json(CELL_FILE)
    measure.setdefault("device", _device_label(cell.run_dir, _resolve_device(cell.config.device)))
    return CellOutcome(cell, "reused", RunDirectory(cell.run_dir).read_json("results.json"), measure)


def run_grid(
    grid: Grid,
    out_dir: str | os.PathLike,
    *,
    train_fn: TrainFn | None = None,
    quick: bool = False,
    only: Iterable[str] | None = None,
    overrides: Sequence[str] = (),
    command: str | None = None,
    report_only: bool = False,
    plots: bool = True,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run (or resume) every cell of ``grid`` and write the reports into ``out_dir``.

    ``train_fn`` defaults to :func:`contrahash.training.train.train_run` (injected in tests). Tables
    are rewritten after every cell, so an interrupted grid still leaves valid partial tables.
    """
    out = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    cells = enumerate_cells(grid, out, quick=quick, only=only, overrides=overrides)
    if train_fn is None and not report_only:
        from contrahash.training.train import train_run as train_fn
    cache = None
    if not report_only:
        from contrahash.models.features import FeatureCache

        cache = FeatureCache(cache_dir_for(grid, out, overrides))
    outcomes: list[CellOutcome] = []
    context = {"grid": grid, "quick": quick, "overrides": list(overrides), "command": command,
               "only": list(only) if only else None}
    for i, cell in enumerate(cells, 1):
        if report_only:
            outcome = collect_cell(cell)
        else:
            state = cell_state(cell.run_dir)
            if state != "finished":
                verb = "resuming" if state == "partial" else "training"
                log(f"[{i}/{len(cells)}] {cell.id}: {verb} → {cell.run_dir}")
            outcome = run_cell(cell, train_fn=train_fn, cache=cache, command=command,
                               progress=progress)
            log(f"[{i}/{len(cells)}] {cell.id}: {outcome.status}"
                + (f" ({outcome.error})" if outcome.error else "")
                + (f" in {outcome.measure['wall_seconds']:.1f} s"
                   if outcome.status in ("done", "resumed") else ""))
        outcomes.append(outcome)
        if not report_only:
            write_reports(out, outcomes, context)
    report = write_reports(out, outcomes, context)
    if plots:
        report.files += write_plots(out, outcomes)
    return report
