"""The benchmark grid: methods × code lengths × seeds on one protocol, one command.

A grid file (YAML) names a shared base config and the rows of the paper's table::

    name: cifar10-1
    description: frozen EfficientNet-Lite0, CIFAR-10 protocol 1   # optional, printed
    base:                 # any TrainConfig keys (the schema of `contrahash train` configs)
      data: {source: cifar10, protocol: cifar10-1}
      backbone: {name: efficientnet_lite0}
      bits: [16, 32, 64]
    seeds: [0, 1, 2]      # training seeds (the split stays fixed: data.seed comes from base)
    methods:              # table rows, in order: label -> overrides (dotted or nested keys)
      fdbh: {method: fdbh, backbone.finetune_blocks: 6}
      cibhash: {method: cibhash}
      itq: {method: itq}
      lsh:                # empty row: method = the label
    quick:                # the --quick preset, applied on top of every row
      backbone.image_size: 64
      optim.epochs: 10
    quick_skip: [fdbh-ft] # rows --quick leaves out (e.g. they only differ by what it turns off)
    out_dir: results/cifar10-1   # optional default for --out

A *cell* is one row × one seed; one training run covers every code length of its row (the
methods train multi-bit heads). Each cell's config is, in order of precedence::

    TrainConfig defaults ← base ← the row ← quick (with --quick) ← command-line key=value

Every cell runs in ``OUT/runs/<label>-seed<s>/`` (a normal run directory) and all cells share
one :class:`~contrahash.features.FeatureCache` (``base.cache.dir`` or ``OUT/cache``), so
frozen-backbone cells compute the backbone features once. Re-running the same command resumes
the grid: a cell whose run directory holds ``results.json`` is read back, not recomputed; one
with a checkpoint but no results continues with ``resume=True``; a cell whose existing run was
made with a different config stops the grid with a message naming the differing keys.

Outputs in OUT (all written atomically, tables rewritten after every cell):

* ``results.json`` — the grid, every cell (status, cost, full per-bits reports) and the
  summary (mean/std over seeds); ``results.csv`` — one row per cell × code length.
* ``results.md`` — the paper-style mAP table (rows = labels, columns = code lengths, best per
  column in bold, ``mean ± std`` over seeds when there are several), a P@1000 / P@r≤2 table
  and a cost table, under a header stating dataset, protocol, backbone, resolution, epochs,
  device and whether ``--quick`` was used.
* ``pr_<bits>.png``, ``pn_<bits>.png`` (PR and P@N curves, all rows), ``bit_balance.png``
  (fraction of +1 per bit, longest code, every row); the curves are those of each row's
  lowest seed.
* ``environment.json`` — versions, device, git commit, the split-list hashes of every cell
  (they must agree: one protocol, one split), the grid file's sha256 and the exact command.

Cost measurements per cell: training seconds and images/s come from the run's own results
(training loop only; for a resumed cell the per-epoch seconds of ``metrics.jsonl`` are
summed so the whole training is counted); ``wall_seconds`` is the cell's wall-clock time in
this process (feature extraction and evaluation included; a reused cell keeps the value
measured when it ran). Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` (tensor memory, not the caching allocator's reserve); on the CPU
the resident-set high-water mark ``VmHWM`` of this process, reset per cell through
``/proc/self/clear_refs`` (Linux); where that reset is unavailable, ``ru_maxrss`` — the
lifetime peak of the process, an upper bound for later cells — and the kind is recorded
(``peak_memory_kind``) so a reader knows which one a number is.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrahash.config import (
    _FREE_FORM,
    ConfigError,
    TrainConfig,
    _merge,
    config_to_dict,
    load_yaml,
    parse_override,
    resolve_config,
)
from contrahash.io import atomic_write, sha256_file, write_json, write_text


class GridError(ConfigError):
    """A grid file or grid option is invalid; the message names the file and the key."""


#: top-level keys a grid file may hold
GRID_KEYS = ("name", "description", "base", "seeds", "methods", "quick", "quick_skip", "out_dir")
#: P@N cut-offs reported in the CSV (when the run's report has them)
PRECISION_NS = (100, 500, 1000)
#: config keys that locate or merely batch a run rather than define it (ignored when comparing
#: configs)
_LOCATION_KEYS = ("name", "out_dir", "cache.dir", "eval_batch_size")
#: keys the grid sets per cell; a key=value override of them is refused with this reason
_GRID_OWNED = {
    "seed": "seeds come from the grid file's 'seeds' list",
    "name": "each cell's run is named <label>-seed<s> by the grid",
    "out_dir": "use --out to choose where the grid writes",
}
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
CHECKPOINT = "checkpoint.safetensors"
CELL_FILE = "bench_cell.json"


# ----------------------------------------------------------------------------- the grid
@dataclass
class Grid:
    """A parsed grid file: base config, table rows (label → overrides), seeds, quick preset."""

    name: str
    base: dict[str, Any]
    methods: dict[str, list[tuple[list[str], Any]]]
    seeds: list[int] = field(default_factory=lambda: [0])
    quick: list[tuple[list[str], Any]] = field(default_factory=list)
    #: rows --quick leaves out (a row given to --only still runs)
    quick_skip: list[str] = field(default_factory=list)
    description: str = ""
    out_dir: str | None = None
    source: Path | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.methods)


@dataclass
class Cell:
    """One row × one seed: a single training run covering all code lengths of the row."""

    label: str
    seed: int
    config: TrainConfig
    run_dir: Path

    @property
    def id(self) -> str:
        return f"{self.label}-seed{self.seed}"


def load_grid(path: str | os.PathLike) -> Grid:
    """Read and validate a grid YAML file; errors name the file and the offending key."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        raise GridError(str(exc)) from None
    return parse_grid(data, source=path)


def parse_grid(data: Mapping[str, Any], source: str | os.PathLike | None = None) -> Grid:
    """Validate a grid dict (the YAML file's content); see the module docstring for keys."""
    where = str(source) if source is not None else "grid"
    if not isinstance(data, Mapping):
        raise GridError(f"{where}: the top level must be a mapping of keys to values")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise GridError(
            f"{where}: unknown top-level key(s) {unknown}; known keys: {list(GRID_KEYS)}"
        )
    base = data.get("base") or {}
    if not isinstance(base, Mapping):
        raise GridError(f"{where}: 'base' must be a mapping of TrainConfig keys")
    methods_raw = data.get("methods")
    if not isinstance(methods_raw, Mapping) or not methods_raw:
        raise GridError(
            f"{where}: 'methods' must be a non-empty mapping of row label -> overrides, "
            "e.g. methods: {{fdbh: {{method: fdbh}}, itq: {{method: itq}}}}"
        )
    methods: dict[str, list[tuple[list[str], Any]]] = {}
    for label, row in methods_raw.items():
        label = str(label)
        if not _LABEL_RE.match(label):
            raise GridError(
                f"{where}: methods.{label}: a row label names a directory; use letters, "
                "digits and _ . + - only"
            )
        if row is None:
            row = {}
        if isinstance(row, str):
            row = {"method": row}
        if not isinstance(row, Mapping):
            raise GridError(f"{where}: methods.{label}: expected a mapping of overrides, got {row!r}")
        items = list(_expand(row, f"methods.{label}", where))
        if not any(keys == ["method"] for keys, _ in items):
            items.insert(0, (["method"], label))
        methods[label] = items
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise GridError(f"{where}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where}: 'seeds' lists a seed twice: {seeds}")
    quick = data.get("quick") or {}
    if not isinstance(quick, Mapping):
        raise GridError(f"{where}: 'quick' must be a mapping of overrides")
    quick_skip = data.get("quick_skip") or []
    if isinstance(quick_skip, str):
        quick_skip = [quick_skip]
    if not isinstance(quick_skip, list) or not all(isinstance(lab, str) for lab in quick_skip):
        raise GridError(f"{where}: 'quick_skip' must be a list of row labels, got {quick_skip!r}")
    unknown_skip = [lab for lab in quick_skip if lab not in methods]
    if unknown_skip:
        raise GridError(f"{where}: quick_skip: unknown row(s) {unknown_skip}; rows: {list(methods)}")
    sections = [("base", list(_expand(base, "base", where))), ("quick", list(_expand(quick, "quick", where))),
                *((f"methods.{lab}", items) for lab, items in methods.items())]
    for section, items in sections:
        for keys, _ in items:
            if ".".join(keys) in _GRID_OWNED:
                raise GridError(f"{where}: {section}: '{'.'.join(keys)}' cannot be set here: "
                                f"{_GRID_OWNED['.'.join(keys)]}")
    name = data.get("name") or (Path(source).stem if source is not None else "grid")
    out_dir = data.get("out_dir")
    return Grid(
        name=str(name), base=dict(base), methods=methods, seeds=list(seeds),
        quick=list(_expand(quick, "quick", where)), quick_skip=list(quick_skip),
        description=str(data.get("description") or ""),
        out_dir=str(out_dir) if out_dir else None,
        source=Path(source) if source is not None else None,
    )


def _expand(d: Mapping[str, Any], context: str, where: str, prefix: list[str] | None = None):
    """(key path, value) pairs of a row: dotted keys split, nested sections descended."""
    for key, value in d.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise GridError(f"{where}: {context}: invalid key {key!r}")
        path = [*(prefix or []), *key.split(".")]
        if isinstance(value, Mapping) and path[-1] not in _FREE_FORM:
            yield from _expand(value, context, where, path)
        else:
            yield path, value


def _base_values(grid: Grid) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for keys, value in _expand(grid.base, "base", str(grid.source or "grid")):
        _merge(values, keys, value)
    return values


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """Deep copy through JSON-able containers (merges mutate)."""
    return json.loads(json.dumps(values))


def default_out_dir(grid: Grid, quick: bool = False) -> Path:
    """The grid's ``out_dir`` or ``runs/benchmarks/<name>``, with ``-quick`` for --quick."""
    base = Path(grid.out_dir) if grid.out_dir else Path("runs") / "benchmarks" / grid.name
    return base.with_name(base.name + "-quick") if quick else base


def cache_dir_for(grid: Grid, out_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> Path:
    """The shared feature cache: ``cache.dir`` of base (or a CLI override), else ``OUT/cache``."""
    values = _nested(_base_values(grid))
    for text in overrides:
        keys, value = parse_override(text)
        _merge(values, keys, value)
    cache = values.get("cache")
    explicit = cache.get("dir") if isinstance(cache, dict) else None
    return Path(explicit) if explicit else Path(out_dir) / "cache"


def cell_config(grid: Grid, label: str, seed: int, *, quick: bool = False,
                overrides: Sequence[str] = (), out_dir: str | os.PathLike = ".") -> TrainConfig:
    """The resolved TrainConfig of one cell (defaults ← base ← row ← quick ← CLI).

    ``name``, ``out_dir`` and ``cache.dir`` are set by the grid (the cell's run directory and
    the shared cache); ``seed`` is the cell's seed.
    """
    if label not in grid.methods:
        raise GridError(f"no row '{label}' in the grid; rows: {grid.labels}")
    where = grid.source or "grid"
    values = _nested(_base_values(grid))
    layers = [("row", grid.methods[label]), ("quick", grid.quick if quick else [])]
    try:
        for _, items in layers:
            for keys, value in items:
                _merge(values, keys, _nested(value) if isinstance(value, dict | list) else value)
        for text in overrides:
            keys, value = parse_override(text)
            if ".".join(keys) in _GRID_OWNED:
                raise GridError(f"override '{text}': {_GRID_OWNED['.'.join(keys)]}")
            _merge(values, keys, value)
        values["seed"] = seed
        values["name"] = f"{label}-seed{seed}"
        values["out_dir"] = str(Path(out_dir) / "runs")
        _merge(values, ["cache", "dir"], str(cache_dir_for(grid, out_dir, overrides)))
        return resolve_config(None, [], base=values)
    except ConfigError as exc:
        raise GridError(f"{where}: row '{label}' (seed {seed}): {exc}") from None


def enumerate_cells(grid: Grid, out_dir: str | os.PathLike, *, quick: bool = False,
                    only: Iterable[str] | None = None, overrides: Sequence[str] = ()) -> list[Cell]:
    """Every cell in table order (rows as in the file, then seeds), configs resolved up front.

    Resolving all configs before anything runs makes a typo in the last row fail at once.
    With ``quick``, the grid's ``quick_skip`` rows are left out unless ``only`` names them.
    """
    labels = grid.labels
    if quick and not only:
        labels = [lab for lab in labels if lab not in grid.quick_skip]
    if only:
        wanted = [s.strip() for s in only if s.strip()]
        missing = [s for s in wanted if s not in grid.methods]
        if missing:
            raise GridError(f"--only: unknown row(s) {missing}; rows of this grid: {labels}")
        labels = [lab for lab in labels if lab in wanted]
    out = Path(out_dir)
    cells = []
    for label in labels:
        for seed in grid.seeds:
            cfg = cell_config(grid, label, seed, quick=quick, overrides=overrides, out_dir=out)
            cells.append(Cell(label, seed, cfg, out / "runs" / f"{label}-seed{seed}"))
    return cells


# ----------------------------------------------------------------------------- running
TrainFn = Callable[..., Any]


@dataclass
class CellOutcome:
    """What the grid knows about one cell after running (or reusing) it."""

    cell: Cell
    status: str  # "done" | "reused" | "resumed" | "failed" | "missing"
    results: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def cell_state(run_dir: Path) -> str:
    """'finished' (results.json), 'partial' (checkpoint, no results) or 'new'."""
    if (run_dir / "results.json").is_file():
        return "finished"
    if (run_dir / CHECKPOINT).exists():
        return "partial"
    return "new"


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
    diffs = [k for k in _diff_keys(old, new) if k not in _LOCATION_KEYS]
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

    recorded = None
    results = cell.run_dir / "results.json"
    if results.is_file():
        recorded = json.loads(results.read_text()).get("method_config")
    if recorded is None:
        recorded = (_start_event(cell.run_dir) or {}).get("method_config")
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


class PeakMemory:
    """Peak memory of one cell; see the module docstring for what each kind means."""

    def __init__(self, device: str):
        self.device = device
        self.kind = ""
        self._reset_ok = False

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._rss_before = _maxrss_bytes()
        self._reset_ok = _reset_rss_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.values = self.read()

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hwm = _vm_hwm_bytes() if self._reset_ok else None
        if hwm is not None:
            out["peak_rss_bytes"], rss_kind = hwm, "rss_hwm_per_cell"
        else:
            out["peak_rss_bytes"], rss_kind = _maxrss_bytes(), "process_maxrss"
        out["rss_peak_growth_bytes"] = max(0, _maxrss_bytes() - self._rss_before)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            out["peak_memory_kind"] = "cuda_max_memory_allocated"
        else:
            out["peak_memory_bytes"] = out["peak_rss_bytes"]
            out["peak_memory_kind"] = rss_kind
        return out


def _maxrss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _device_label(run_dir: Path, fallback: str) -> str:
    env = _read_json(run_dir / "environment.json")
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
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    per_epoch: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            per_epoch[int(rec["epoch"])] = float(rec["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
    return round(sum(per_epoch.values()), 3) if per_epoch else None


def run_cell(cell: Cell, *, train_fn: TrainFn, cache: Any, command: str | None,
             progress: bool = True) -> CellOutcome:
    """Run, resume or reuse one cell; failures are caught and recorded (not raised)."""
    state = cell_state(cell.run_dir)
    if state != "new":
        check_same_config(cell)
    if state == "finished":
        results = _read_json(cell.run_dir / "results.json")
        measure = _read_json(cell.run_dir / CELL_FILE)
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
    measure = _read_json(cell.run_dir / CELL_FILE)
    measure.setdefault("device", _device_label(cell.run_dir, _resolve_device(cell.config.device)))
    return CellOutcome(cell, "reused", _read_json(cell.run_dir / "results.json"), measure)


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
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run (or resume) every cell of ``grid`` and write the reports into ``out_dir``.

    ``train_fn`` defaults to :func:`contrahash.train.train_run` (injected in tests). Tables
    are rewritten after every cell, so an interrupted grid still leaves valid partial tables.
    """
    out = Path(out_dir)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    cells = enumerate_cells(grid, out, quick=quick, only=only, overrides=overrides)
    if train_fn is None and not report_only:
        from contrahash.train import train_run as train_fn
    cache = None
    if not report_only:
        from contrahash.features import FeatureCache

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
            write_reports(out, outcomes, context, plots=False)
    report = write_reports(out, outcomes, context, plots=plots)
    return report


# ----------------------------------------------------------------------------- reports
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


def _precision_at_n(report: Mapping[str, Any]) -> Any:
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
            pn = _precision_at_n(rep)
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


def _start_event(run_dir: Path) -> dict[str, Any] | None:
    """The first readable "start" record of a run's events.jsonl (optimiser, method config)."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "start":
            return rec
    return None


def _epochs_of(o: CellOutcome) -> Any:
    """Epochs actually used: the run's start event, else the config, else the method default
    ('–' for training-free methods such as ITQ/LSH)."""
    if _trainable(o.cell.config.method) is False:
        return "–"
    start = _start_event(o.cell.run_dir) or {}
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
    if grid.description:
        lines += [grid.description, ""]
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
                  context: Mapping[str, Any], plots: bool = True) -> BenchReport:
    """Write results.json/.csv/.md, environment.json and (optionally) the plots."""
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
    if plots:
        files += write_plots(out, outcomes)
    return BenchReport(out, list(outcomes), rows, summary, markdown, files)


def grid_environment(outcomes: Sequence[CellOutcome], context: Mapping[str, Any]) -> dict[str, Any]:
    """Versions, device, git commit, split hashes of every cell, the grid file and command."""
    try:
        from contrahash.runs import environment_info

        env = environment_info()
    except Exception as exc:  # noqa: BLE001 - torch-free fallbacks in odd installs
        env = {"python": sys.version.split()[0], "environment_error": str(exc)}
    grid: Grid = context["grid"]
    split_hashes: dict[str, Any] = {}
    for o in outcomes:
        run_env = _read_json(o.cell.run_dir / "environment.json")
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


# ----------------------------------------------------------------------------- plots
def _first_seed_reports(outcomes: Sequence[CellOutcome]) -> dict[str, dict[str, Any]]:
    """label → the bits reports of the row's lowest finished seed."""
    chosen: dict[str, CellOutcome] = {}
    for o in outcomes:
        if not o.results.get("bits"):
            continue
        if o.cell.label not in chosen or o.cell.seed < chosen[o.cell.label].cell.seed:
            chosen[o.cell.label] = o
    return {lab: o.results["bits"] for lab, o in chosen.items()}


def _pr_points(report: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    curve = report.get("pr_curve")
    if isinstance(curve, Mapping) and curve.get("precision") and curve.get("recall"):
        return [float(x) for x in curve["recall"]], [float(x) for x in curve["precision"]]
    return None


def _pn_points(report: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    """(N values, precision) from a P@N curve, or from the P@N cut-offs."""
    for key in ("precision_curve", "pn_curve", "precision_at_n_curve"):
        curve = report.get(key)
        if isinstance(curve, Mapping):
            ns = curve.get("n") or curve.get("N") or curve.get("top") or curve.get("ns")
            ps = curve.get("precision")
            if ns and ps:
                return [float(x) for x in ns], [float(x) for x in ps]
    pn = _precision_at_n(report)
    if isinstance(pn, Mapping) and pn:
        items = sorted((float(k), float(v)) for k, v in pn.items() if v is not None)
        return [k for k, _ in items], [v for _, v in items]
    return None


def _ones_fraction(report: Mapping[str, Any]) -> list[float] | None:
    stats = report.get("bit_balance")
    if isinstance(stats, Mapping):
        for key in ("ones_fraction", "fraction_ones", "bit_means_01", "p_one", "ones"):
            if isinstance(stats.get(key), list | tuple):
                return [float(x) for x in stats[key]]
        means = stats.get("bit_means") or stats.get("mean")
        if isinstance(means, list | tuple):  # ±1 means → fraction of +1
            return [(float(x) + 1) / 2 for x in means]
    if isinstance(stats, list | tuple):
        return [float(x) for x in stats]
    return None


def _save_figure(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = buf.getvalue()
    return atomic_write(path, lambda f: f.write(data))


def write_plots(out_dir: Path, outcomes: Sequence[CellOutcome]) -> list[Path]:
    """pr_<bits>.png, pn_<bits>.png and bit_balance.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reports = _first_seed_reports(outcomes)
    if not reports:
        return []
    bits = sorted({int(b) for reps in reports.values() for b in reps})
    written: list[Path] = []
    for b in bits:
        for kind, getter, xlabel, ylabel in (
            ("pr", _pr_points, "recall", "precision"),
            ("pn", _pn_points, "number of retrieved items N", "precision@N"),
        ):
            fig, ax = plt.subplots(figsize=(5, 4))
            drawn = 0
            for label, reps in reports.items():
                rep = reps.get(str(b))
                pts = getter(rep) if rep else None
                if pts:
                    ax.plot(pts[0], pts[1], marker="." if len(pts[0]) < 40 else None, label=label)
                    drawn += 1
            if not drawn:
                plt.close(fig)
                continue
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{'PR curve' if kind == 'pr' else 'P@N'} — {b} bits")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(_save_figure(fig, out_dir / f"{kind}_{b}.png"))
    longest = str(max(bits))
    balance = {lab: f for lab, reps in reports.items()
               if longest in reps and (f := _ones_fraction(reps[longest])) is not None}
    if balance:  # markers, not bars: stays readable with ten rows at 64 bits
        fig, ax = plt.subplots(figsize=(max(6, int(longest) * 0.14), 4))
        for label, frac in balance.items():
            ax.plot(range(len(frac)), frac, marker="o", ms=3, lw=0.6, label=label)
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("bit")
        ax.set_ylabel("fraction of +1 over the database")
        ax.set_title(f"bit balance — {longest} bits")
        ax.legend(fontsize=8)
        written.append(_save_figure(fig, out_dir / "bit_balance.png"))
    return written


def grid_to_yaml(grid: Grid) -> str:
    """A readable dump of the parsed grid (for --dry-run)."""
    return yaml.safe_dump({
        "name": grid.name, "seeds": grid.seeds, "base": grid.base,
        "methods": {lab: {".".join(k): v for k, v in items} for lab, items in grid.methods.items()},
        "quick": {".".join(k): v for k, v in grid.quick},
    }, sort_keys=False)


__all__ = [
    "BenchReport", "Cell", "CellOutcome", "Grid", "GridError", "PeakMemory", "cell_config",
    "cell_state", "enumerate_cells", "flat_rows", "format_value", "load_grid", "metric_table",
    "parse_grid", "render_markdown", "run_grid", "summarize", "write_plots", "write_reports",
]
