"""``contrahash benchmark GRID.yaml``: the methods × code lengths × seeds grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from contrahash.cli.common import console, invoked_command
from contrahash.cli.progress import ProgressOption, progress_display


def benchmark_command(
    config: Annotated[Path, typer.Argument(help="grid YAML (see configs/benchmarks/)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides applied to every cell, e.g. device=cpu"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: the grid's out_dir or "
                                   "runs/benchmarks/<name>, with -quick for --quick)"),
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="apply the grid's quick preset")] = False,
    only: Annotated[
        str | None, typer.Option("--only", help="comma-separated row labels to run, e.g. fdbh,itq")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the cells and their run directories, run nothing")
    ] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="rebuild tables and plots from finished cells only")
    ] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="draw PR, P@N, bit-balance PNGs")] = True,
    progress: ProgressOption = True,
) -> None:
    """Run a benchmark grid (resumable) and write results.md/.csv/.json, plots, environment."""
    from contrahash.bench import cell_state, default_out_dir, enumerate_cells, load_grid, run_grid

    labels = [s for s in (only or "").split(",") if s.strip()] or None
    grid = load_grid(config)
    out_dir = out or default_out_dir(grid, quick)
    if dry_run:
        cells = enumerate_cells(grid, out_dir, quick=quick, only=labels,
                                overrides=list(overrides or []))
        for cell in cells:
            c = cell.config
            console.print(f"{cell.id:<28} {cell_state(cell.run_dir):<9} method={c.method} "
                          f"bits={c.bits} epochs={c.optim.get('epochs', 'default')} "
                          f"→ {cell.run_dir}")
        console.print(f"{len(cells)} cell(s); outputs in {out_dir}")
        return
    report = run_grid(grid, out_dir, quick=quick, only=labels, overrides=list(overrides or []),
                      command=invoked_command(), report_only=report_only, plots=plots,
                      progress=progress_display(progress),
                      log=lambda msg: console.print(msg, highlight=False))
    # the headline table only; results.md holds the precision and cost tables
    console.print(report.markdown.split("\n## Precision")[0].split("\n### ")[0], highlight=False,
                  markup=False, soft_wrap=True)
    console.print(f"wrote {out_dir}/results.md (all tables), results.csv, results.json, "
                  "environment.json" + (" and plots" if plots else ""))
    if report.failed:
        names = ", ".join(o.cell.id for o in report.failed)
        console.print(f"[red]{len(report.failed)} cell(s) did not finish:[/red] {names}")
        raise typer.Exit(1)
