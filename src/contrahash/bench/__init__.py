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
    # "${seed}" as a value is replaced by each cell's seed, e.g. itq: {method_config: {seed: "${seed}"}}
    out_dir: results/cifar10-1   # optional default for --out

A *cell* is one row × one seed; one training run covers every code length of its row (the
methods train multi-bit heads). Each cell's config is, in order of precedence::

    TrainConfig defaults ← base ← the row ← quick (with --quick) ← command-line key=value

The package's modules: :mod:`.grid` (the file format and each cell's config), :mod:`.runner`
(running, resuming, reusing cells), :mod:`.report` (tables), :mod:`.plots` (curves),
:mod:`.memory` (peak memory per cell).

Every cell runs in ``OUT/runs/<label>-seed<s>/`` (a normal run directory) and all cells share
one :class:`~contrahash.models.features.FeatureCache` (``base.cache.dir`` or ``OUT/cache``), so
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
measured when it ran); peak memory as :mod:`.memory` describes.
"""

from contrahash.bench.grid import (
    Cell,
    CellOutcome,
    Grid,
    GridError,
    cell_config,
    default_out_dir,
    enumerate_cells,
    load_grid,
    parse_grid,
)
from contrahash.bench.memory import PeakMemory
from contrahash.bench.plots import write_plots
from contrahash.bench.report import (
    BenchReport,
    flat_rows,
    format_value,
    metric_table,
    render_markdown,
    summarize,
    write_reports,
)
from contrahash.bench.runner import cell_state, check_same_config, run_grid

__all__ = [
    "BenchReport",
    "Cell",
    "CellOutcome",
    "Grid",
    "GridError",
    "PeakMemory",
    "cell_config",
    "cell_state",
    "check_same_config",
    "default_out_dir",
    "enumerate_cells",
    "flat_rows",
    "format_value",
    "load_grid",
    "metric_table",
    "parse_grid",
    "render_markdown",
    "run_grid",
    "summarize",
    "write_plots",
    "write_reports",
]
