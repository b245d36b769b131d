"""The grid's reports: results.json/.csv/.md (paper-style tables) and environment.json."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrahash.bench.grid import LOCATION_KEYS, CellOutcome, Grid
from contrahash.config import ConfigError, TrainConfig, parse_override
from contrahash.io import sha256_file, write_json, write_text
from contrahash.training.rundir import RunDirectory

__all__ = [
    "BenchReport",
    "flat_rows",
    "format_value",
    "metric_table",
    "render_markdown",
    "summarize",
    "write_reports",
]

#: P@N cut-offs reported in the CSV (when the run's report has them)
PRECISION_NS = (100, 500, 1000)


@dataclass
class BenchReport:
    """The grid's aggregated results, as written to OUT."""

    out_dir: Path
    outcomes: list[CellOutcome]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    markdown: str
    files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "missing")]


def _metric_at(mapping: Any, n: int) -> float | None:
    if not isinstance(mapping, Mapping):
        return None
    value = mapping.get(str(n), mapping.get(n))
    return None if value is None else float(value)


def precision_at_n_of(report: Mapping[str, Any]) -> Any:
    """The P@N cut-offs of a run's per-bits report ({} when it has none)."""
    for key in ("precision_at_n", "p_at_n", "precision_at"):
        if key in report:
            return report[key]
    return {}


def _radius2(report: Mapping[str, Any]) -> float | None:
    for key in ("precision_radius_2", "precision_at_radius_2", "p_r2"):
        value = report.get(key)
        if value is not None:
            return float(value)
    return None


def flat_rows(outcomes: Sequence[CellOutcome]) -> list[dict[str, Any]]:
    """One dict per finished cell × code length (the CSV's rows)."""
    rows = []
    for o in outcomes:
        res, m = o.results, o.measure
        if o.status in ("failed", "missing") or not res.get("bits"):
            continue
        train_seconds = m.get("train_seconds", res.get("train_seconds"))
        for bits in sorted(res["bits"], key=int):
            rep = res["bits"][bits]
            pn = precision_at_n_of(rep)
            row = {
                "label": o.cell.label, "method": res.get("method", o.cell.config.method),
                "seed": o.cell.seed, "bits": int(bits),
                "protocol": res.get("protocol", o.cell.config.data.protocol),
                "topk": res.get("topk"),
                "map": _float(rep.get("map")),
                "map_best": _float(rep.get("map_best")),
                "map_worst": _float(rep.get("map_worst")),
                **{f"p_at_{n}": _metric_at(pn, n) for n in PRECISION_NS},
                "p_r2": _radius2(rep),
                "train_seconds": _float(train_seconds),
                # training-free methods report 0 images/s: no rate, not a zero rate
                "images_per_second": _float(res.get("images_per_second")) or None,
                "total_seconds": _float(res.get("total_seconds")),
                "wall_seconds": _float(m.get("wall_seconds")),
                "peak_memory_mb": _mib(m.get("peak_memory_bytes")),
                "peak_memory_kind": m.get("peak_memory_kind"),
                "device": m.get("device"),
                "status": o.status,
                "run_dir": str(o.cell.run_dir),
            }
            rows.append(row)
    return rows


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _mib(value: Any) -> float | None:
    return None if value is None else round(float(value) / 2**20, 1)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else None  # sample std (ddof=1)
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


SUMMARY_METRICS = ("map", "map_best", "map_worst", "p_at_1000", "p_r2")
COST_METRICS = ("train_seconds", "images_per_second", "wall_seconds", "peak_memory_mb")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{label: {"bits": {bits: {metric: {mean, std, n}}}, "cost": {metric: {...}}}}."""
    out: dict[str, Any] = {}
    for row in rows:
        entry = out.setdefault(row["label"], {"bits": {}, "cost": {}, "_seen": {}})
        entry["bits"].setdefault(str(row["bits"]), []).append(row)
        entry["_seen"].setdefault(row["seed"], row)  # one cost record per seed
    for entry in out.values():
        for bits, bit_rows in list(entry["bits"].items()):
            entry["bits"][bits] = {m: _mean_std([r[m] for r in bit_rows]) for m in SUMMARY_METRICS}
        seen = list(entry.pop("_seen").values())
        entry["cost"] = {m: _mean_std([r[m] for r in seen]) for m in COST_METRICS}
        entry["seeds"] = sorted(r["seed"] for r in seen)
    return out


def format_value(stat: Mapping[str, Any] | None, digits: int = 4) -> str:
    """'0.7123' or '0.7123 ± 0.0041' (several seeds) or '–' (no value)."""
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {stat['std']:.{digits}f}"
    return text


def metric_table(summary: Mapping[str, Any], labels: Sequence[str], bits: Sequence[int],
                 metric: str, digits: int = 4, header: str = "method") -> str:
    """Markdown table: rows = labels, columns = code lengths, best mean per column in bold."""
    lines = [f"| {header} | " + " | ".join(f"{b} bits" for b in bits) + " |",
             "|---|" + "---:|" * len(bits)]
    best = {}
    for b in bits:
        means = [round(summary[lab]["bits"][str(b)][metric]["mean"], digits)
                 for lab in labels
                 if str(b) in summary.get(lab, {}).get("bits", {})
                 and summary[lab]["bits"][str(b)][metric]["mean"] is not None]
        best[b] = max(means) if means else None
    for lab in labels:
        cells = []
        for b in bits:
            stat = summary.get(lab, {}).get("bits", {}).get(str(b), {}).get(metric)
            text = format_value(stat, digits)
            if (stat and stat.get("mean") is not None and best[b] is not None
                    and round(stat["mean"], digits) == best[b]):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def two_metric_table(summary: Mapping[str, Any], labels: Sequence[str], bits: Sequence[int],
                     metrics: Sequence[tuple[str, str]], digits: int = 4) -> str:
    """Columns ``<bits> <metric name>`` for each code length and metric, best in bold."""
    cols = [(b, key, name) for b in bits for key, name in metrics]
    lines = ["| method | " + " | ".join(f"{b} bits {name}" for b, _, name in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    best = {}
    for b, key, _ in cols:
        means = [round(s["mean"], digits) for lab in labels
                 if (s := summary.get(lab, {}).get("bits", {}).get(str(b), {}).get(key))
                 and s.get("mean") is not None]
        best[(b, key)] = max(means) if means else None
    for lab in labels:
        cells = []
        for b, key, _ in cols:
            stat = summary.get(lab, {}).get("bits", {}).get(str(b), {}).get(key)
            text = format_value(stat, digits)
            if stat and stat.get("mean") is not None and round(stat["mean"], digits) == best[(b, key)]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tie_range_table(summary: Mapping[str, Any], labels: Sequence[str], bits: Sequence[int],
                    digits: int = 4) -> str:
    """Markdown table of 'worst – best' mAP (means over seeds) per row and code length."""
    lines = ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |",
             "|---|" + "---:|" * len(bits)]
    for lab in labels:
        cells = []
        for b in bits:
            rep = summary.get(lab, {}).get("bits", {}).get(str(b), {})
            lo, hi = (rep.get("map_worst") or {}).get("mean"), (rep.get("map_best") or {}).get("mean")
            cells.append("–" if lo is None or hi is None else f"{lo:.{digits}f} – {hi:.{digits}f}")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _describe(values: Iterable[Any], none: str = "–") -> str:
    vals = _unique(values)
    if not vals:
        return none
    if len(vals) == 1:
        return none if vals[0] is None else str(vals[0])
    return "varies by row (see the cost table)"


def _trainable(method: str) -> bool | None:
    try:
        from contrahash.methods import METHODS

        cls = METHODS.get(method)
        return None if cls is None else bool(cls.trainable)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _epochs_of(o: CellOutcome) -> Any:
    """Epochs actually used: the run's start event, else the config, else the method default
    ('–' for training-free methods such as ITQ/LSH)."""
    if _trainable(o.cell.config.method) is False:
        return "–"
    start = next(iter(RunDirectory(o.cell.run_dir).events("start")), {})
    if isinstance(start.get("optim"), dict) and start["optim"].get("epochs") is not None:
        return start["optim"]["epochs"]
    epochs = o.cell.config.optim.get("epochs")
    if epochs is not None:
        return epochs
    try:
        from contrahash.methods import METHODS

        return METHODS[o.cell.config.method].default_optim.epochs
    except Exception:  # noqa: BLE001 - informational only
        return "default"


def _resolution(cfg: TrainConfig) -> str:
    return str(cfg.backbone.image_size) if cfg.backbone.image_size else "backbone default"


def _finetune(cfg: TrainConfig) -> str:
    n = cfg.backbone.finetune_blocks
    return "frozen" if n == 0 else ("all" if n < 0 else f"last {n} blocks")


def render_markdown(outcomes: Sequence[CellOutcome], summary: Mapping[str, Any],
                    context: Mapping[str, Any]) -> str:
    """The paper-style report: header, mAP table, P@1000/P@r≤2 table, cost table."""
    grid: Grid = context["grid"]
    labels = _unique(o.cell.label for o in outcomes)
    done = [o for o in outcomes if o.results.get("bits")]
    bits = sorted({int(b) for o in done for b in o.results["bits"]})
    cfgs = [o.cell.config for o in outcomes]
    topks = _unique(o.results.get("topk") for o in done)
    k_text = ", ".join("ALL" if k is None else str(k) for k in topks) or "K"
    protocols = _unique(o.results.get("protocol") or o.cell.config.data.protocol for o in outcomes)
    devices = _unique(o.measure.get("device") for o in outcomes if o.measure.get("device"))
    quick = bool(context.get("quick"))
    lines = [f"# Benchmark: {grid.name}{' (--quick)' if quick else ''}", ""]
    lines += _description(grid, quick, context.get("overrides") or ())
    lines += [
        f"- dataset: `{_describe(c.data.source for c in cfgs)}`, protocol "
        f"`{_describe(protocols)}` (data seed {_describe(c.data.seed for c in cfgs)})",
        f"- backbone: `{_describe(c.backbone.name for c in cfgs)}`"
        f"{' (random init)' if any(c.backbone.random_init for c in cfgs) else ''}, "
        f"fine-tuning: {_describe(_finetune(c) for c in cfgs)}, "
        f"resolution: {_describe(_resolution(c) for c in cfgs)}",
        f"- epochs: {_describe(_epochs_of(o) for o in outcomes)}, "
        f"seeds: {', '.join(str(s) for s in grid.seeds)}",
        f"- device: {', '.join(devices) or '–'}",
        f"- preset: {'**--quick** (reduced: ' + _quick_text(grid) + ')' if quick else 'full (not --quick)'}",
    ]
    skipped = [lab for lab in grid.quick_skip if lab not in labels] if quick else []
    if skipped:
        lines.append(f"- rows the quick preset leaves out (`quick_skip`): {', '.join(skipped)}")
    if context.get("overrides"):
        lines.append(f"- overrides: `{' '.join(context['overrides'])}`")
    lines += [f"- command: `{context.get('command', '')}`", ""]
    several = len(grid.seeds) > 1
    note = " Values are mean ± sample std over seeds." if several else ""
    lines += [f"## mAP@{k_text}", "", f"Best per code length in bold.{note}", "",
              metric_table(summary, labels, bits, "map"), ""]
    if any(s["bits"][b]["map_best"]["mean"] is not None
           for s in summary.values() for b in s["bits"]):
        lines += [f"### mAP@{k_text} tie range", "",
                  "Worst – best mAP over every order of database items at equal Hamming "
                  "distance (the table above breaks ties by database order).", "",
                  tie_range_table(summary, labels, bits), ""]
    lines += ["## Precision: P@1000 and P@r≤2 (Hamming radius 2)", "",
              two_metric_table(summary, labels, bits, [("p_at_1000", "P@1000"),
                                                       ("p_r2", "P@r≤2")]), ""]
    lines += ["## Cost", "", cost_table(outcomes, summary, labels), "",
              "Train s and img/s: the training loop only (backbone feature caching and "
              "evaluation excluded); wall s: the whole cell. Peak memory: CUDA tensor memory "
              "(`max_memory_allocated`) on GPU, resident-set peak on CPU (see results.json "
              "`peak_memory_kind`).", ""]
    failed = [o for o in outcomes if o.status in ("failed", "missing")]
    if failed:
        lines += ["## Missing cells", ""]
        lines += [f"- `{o.cell.id}`: {o.status}: {o.error}" for o in failed]
        lines.append("")
    return "\n".join(lines)


def _setting_overrides(overrides: Sequence[str]) -> list[str]:
    """The ``key=value`` overrides that change what a cell computes (not where it writes or
    how it batches: :data:`~contrahash.bench.grid.LOCATION_KEYS`)."""
    out = []
    for text in overrides:
        try:
            keys, _ = parse_override(text)
        except ConfigError:
            keys = []
        if ".".join(keys) not in LOCATION_KEYS:
            out.append(text)
    return out


def _description(grid: Grid, quick: bool, overrides: Sequence[str]) -> list[str]:
    """The grid file's description, said to be the full grid's when --quick or overrides
    changed the settings it describes (the header list then says what ran)."""
    if not grid.description:
        return []
    changes = []
    if quick and grid.quick:
        changes.append(f"the --quick preset ({_quick_text(grid)})")
    changed = _setting_overrides(overrides)
    if changed:
        changes.append(f"the overrides `{' '.join(changed)}`")
    if not changes:
        return [grid.description, ""]
    return [f"*Full-grid description; this run used {' and '.join(changes)}, so where they "
            f"differ the settings listed below are what ran:* {grid.description}", ""]


def _quick_text(grid: Grid) -> str:
    return ", ".join(f"{'.'.join(k)}={v}" for k, v in grid.quick) or "no quick overrides"


def cost_table(outcomes: Sequence[CellOutcome], summary: Mapping[str, Any],
               labels: Sequence[str]) -> str:
    lines = ["| method | algorithm | fine-tuning | resolution | epochs | train s | img/s | "
             "wall s | peak MiB | device |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for lab in labels:
        mine = [o for o in outcomes if o.cell.label == lab]
        cfg = mine[0].cell.config
        cost = summary.get(lab, {}).get("cost", {})
        devices = _unique(o.measure.get("device") for o in mine if o.measure.get("device"))
        epochs = _describe(_epochs_of(o) for o in mine)
        lines.append(
            f"| {lab} | {cfg.method} | {_finetune(cfg)} | {_resolution(cfg)} | {epochs} | "
            f"{format_value(cost.get('train_seconds'), 1)} | "
            f"{format_value(cost.get('images_per_second'), 0)} | "
            f"{format_value(cost.get('wall_seconds'), 1)} | "
            f"{format_value(cost.get('peak_memory_mb'), 0)} | {', '.join(devices) or '–'} |"
        )
    return "\n".join(lines)


CSV_COLUMNS = ("label", "method", "seed", "bits", "protocol", "topk", "map", "map_best",
               "map_worst",
               *(f"p_at_{n}" for n in PRECISION_NS), "p_r2", "train_seconds",
               "images_per_second", "total_seconds", "wall_seconds", "peak_memory_mb",
               "peak_memory_kind", "device", "status", "run_dir")


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def _cell_record(o: CellOutcome) -> dict[str, Any]:
    return {"id": o.cell.id, "label": o.cell.label, "seed": o.cell.seed, "status": o.status,
            "error": o.error, "run_dir": str(o.cell.run_dir), "method": o.cell.config.method,
            "measure": o.measure, "results": _slim(o.results)}


def _slim(results: Mapping[str, Any]) -> dict[str, Any]:
    """A run's results without the bulk (bit correlation matrices; the P@N curve thinned to
    n = 1, 10, 20, ...): the full record stays in the run's own results.json."""
    out = dict(results)
    bits = {}
    for b, rep in (results.get("bits") or {}).items():
        rep = dict(rep)
        if isinstance(rep.get("bit_balance"), Mapping):
            rep["bit_balance"] = {k: v for k, v in rep["bit_balance"].items() if k != "correlation"}
        curve = rep.get("precision_curve")
        if isinstance(curve, Mapping) and len(curve.get("n") or []) > 101:
            keep = [i for i, n in enumerate(curve["n"]) if n == 1 or n % 10 == 0]
            rep["precision_curve"] = {k: [v[i] for i in keep] if isinstance(v, list) else v
                                      for k, v in curve.items()}
        bits[b] = rep
    if bits:
        out["bits"] = bits
    return out


def write_reports(out_dir: str | os.PathLike, outcomes: Sequence[CellOutcome],
                  context: Mapping[str, Any]) -> BenchReport:
    """Write results.json/.csv/.md and environment.json (the plots: :mod:`.plots`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid: Grid = context["grid"]
    rows = flat_rows(outcomes)
    summary = summarize(rows)
    markdown = render_markdown(outcomes, summary, context)
    files = [
        write_json(out / "results.json", {
            "grid": grid.name, "grid_file": str(grid.source) if grid.source else None,
            "quick": bool(context.get("quick")), "seeds": grid.seeds,
            "overrides": list(context.get("overrides") or []), "command": context.get("command"),
            "summary": summary, "rows": rows, "cells": [_cell_record(o) for o in outcomes],
        }),
        write_text(out / "results.csv", rows_to_csv(rows)),
        write_text(out / "results.md", markdown),
        write_json(out / "environment.json", grid_environment(outcomes, context)),
    ]
    return BenchReport(out, list(outcomes), rows, summary, markdown, files)


def grid_environment(outcomes: Sequence[CellOutcome], context: Mapping[str, Any]) -> dict[str, Any]:
    """Versions, device, git commit, split hashes of every cell, the grid file and command."""
    from contrahash.environment import environment_info

    env = environment_info()
    grid: Grid = context["grid"]
    split_hashes: dict[str, Any] = {}
    for o in outcomes:
        run_env = RunDirectory(o.cell.run_dir).read_json("environment.json")
        if run_env.get("split_hashes") is not None:
            split_hashes[o.cell.id] = run_env["split_hashes"]
    distinct = _unique(json.dumps(h, sort_keys=True) for h in split_hashes.values())
    env.update(
        device=", ".join(_unique(o.measure["device"] for o in outcomes
                                 if o.measure.get("device"))) or None,
        devices={o.cell.id: o.measure.get("device") for o in outcomes},
        split_hashes=split_hashes,
        split_hashes_consistent=len(distinct) <= 1,
        grid=grid.name,
        grid_file=str(grid.source) if grid.source else None,
        grid_sha256=sha256_file(grid.source) if grid.source and grid.source.is_file() else None,
        quick=bool(context.get("quick")),
        only=context.get("only"),
        overrides=list(context.get("overrides") or []),
        command=context.get("command"),
        written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    return env
