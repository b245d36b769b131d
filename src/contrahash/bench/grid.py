"""Grid files: parsing, validation, and each cell's resolved config."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrahash.config import (
    FREE_FORM_SECTIONS,
    ConfigError,
    TrainConfig,
    load_yaml,
    merge_value,
    parse_override,
    resolve_config,
)

__all__ = [
    "Cell",
    "CellOutcome",
    "Grid",
    "GridError",
    "cache_dir_for",
    "cell_config",
    "default_out_dir",
    "enumerate_cells",
    "load_grid",
    "parse_grid",
]


class GridError(ConfigError):
    """A grid file or grid option is invalid; the message names the file and the key."""


#: top-level keys a grid file may hold
GRID_KEYS = ("name", "description", "base", "seeds", "methods", "quick", "quick_skip", "out_dir")
#: config keys that locate or merely batch a run rather than define it (ignored when comparing
#: configs)
LOCATION_KEYS = ("name", "out_dir", "cache.dir", "eval_batch_size")
#: keys the grid sets per cell; a key=value override of them is refused with this reason
_GRID_OWNED = {
    "seed": "seeds come from the grid file's 'seeds' list",
    "name": "each cell's run is named <label>-seed<s> by the grid",
    "out_dir": "use --out to choose where the grid writes",
}
#: a grid value replaced by each cell's seed
SEED_PLACEHOLDER = "${seed}"
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


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
        if isinstance(value, Mapping) and path[-1] not in FREE_FORM_SECTIONS:
            yield from _expand(value, context, where, path)
        else:
            yield path, value


def _base_values(grid: Grid) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for keys, value in _expand(grid.base, "base", str(grid.source or "grid")):
        merge_value(values, keys, value)
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
        merge_value(values, keys, value)
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
                merge_value(values, keys, _nested(value) if isinstance(value, dict | list) else value)
        for text in overrides:
            keys, value = parse_override(text)
            if ".".join(keys) in _GRID_OWNED:
                raise GridError(f"override '{text}': {_GRID_OWNED['.'.join(keys)]}")
            merge_value(values, keys, value)
        values = _with_seed(values, seed)
        values["seed"] = seed
        values["name"] = f"{label}-seed{seed}"
        values["out_dir"] = str(Path(out_dir) / "runs")
        merge_value(values, ["cache", "dir"], str(cache_dir_for(grid, out_dir, overrides)))
        return resolve_config(None, [], base=values)
    except ConfigError as exc:
        raise GridError(f"{where}: row '{label}' (seed {seed}): {exc}") from None


def _with_seed(value: Any, seed: int) -> Any:
    """``"${seed}"`` anywhere in a cell's values becomes the cell's seed (e.g. the rotation
    seed of a training-free method, which the training seed does not reach)."""
    if value == SEED_PLACEHOLDER:
        return seed
    if isinstance(value, dict):
        return {k: _with_seed(v, seed) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_seed(v, seed) for v in value]
    return value


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


@dataclass
class CellOutcome:
    """What the grid knows about one cell after running (or reusing) it."""

    cell: Cell
    status: str  # "done" | "reused" | "resumed" | "failed" | "missing"
    results: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
