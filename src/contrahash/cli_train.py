"""CLI: ``contrahash train``, ``contrahash encode`` and ``contrahash demo``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def train_command(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. bits=[16,32] backbone.finetune_blocks=6")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in this directory")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="where to write the run (default runs/<name>)")] = None,
) -> None:
    """Train a hashing method and evaluate it; writes a complete run directory."""
    from contrahash.config import ConfigError, resolve_config
    from contrahash.train import TrainingError, train_run

    # `contrahash train key=value ...` without a YAML file is allowed too
    args = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        args.insert(0, str(config))
        config = None
    command = " ".join(shlex.quote(a) for a in ["contrahash", *sys.argv[1:]])
    try:
        if resume is not None:
            cfg = resolve_config(resume / "config.yaml") if (resume / "config.yaml").is_file() else None
            if cfg is None:
                _fail(f"--resume {resume}: no config.yaml there (not a run directory)")
            result = train_run(cfg, resume, resume=True, command=command)
        else:
            cfg = resolve_config(config, args)
            result = train_run(cfg, run_dir, command=command)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, TrainingError) as exc:
        _fail(str(exc))
        return
    print_results(result.results, title=f"{result.results.get('method')} — {result.run_dir}")


def print_results(results: dict, title: str = "results") -> None:
    """A rich table of a run's metrics per code length."""
    bits = results.get("bits", results)
    topk = results.get("topk")
    table = Table(title=title)
    table.add_column("bits", justify="right")
    table.add_column(f"mAP@{topk if topk else 'ALL'}", justify="right")
    table.add_column("P@1000", justify="right")
    table.add_column("P@r≤2", justify="right")
    for k, rep in bits.items():
        p_at = rep.get("precision_at_n", {})
        p1000 = p_at.get("1000", p_at.get(1000))
        table.add_row(str(k), _fmt(rep.get("map")), _fmt(p1000), _fmt(rep.get("precision_radius_2")))
    console.print(table)


def _fmt(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def encode_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    out: Annotated[Path, typer.Option("--out", help="codes file (.npy, ±1 int8 rows)")],
    data: Annotated[str | None, typer.Option("--data", help="image source (default: the run's own)")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root")] = None,
    bits: Annotated[int | None, typer.Option("--bits", help="code length (default: the longest)")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
) -> None:
    """Encode every image of a source with a trained run; writes ±1 codes as .npy."""
    from contrahash.io import write_npy
    from contrahash.runs import encode_run

    try:
        codes, dataset = encode_run(run_dir, data, str(image_root) if image_root else None, device)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    k = bits if bits is not None else max(codes)
    if k not in codes:
        _fail(f"--bits {k}: the run has code lengths {sorted(codes)}")
    write_npy(out, codes[k])
    labels_path = out.with_name(out.stem + "_labels.npy")
    write_npy(labels_path, np.asarray(dataset.labels))
    console.print(f"wrote {codes[k].shape[0]} × {k}-bit codes to {out} (labels: {labels_path})")


def demo_command(
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="where runs and the picture go (default: a new runs/demo-<time>)")] = None,
    epochs: Annotated[int, typer.Option(help="FDBH epochs")] = 40,
) -> None:
    """Train FDBH on the embedded digits (CPU, minutes), compare with ITQ and LSH, draw results."""
    from contrahash.demo import run_demo

    run_demo(out_dir, epochs=epochs, console=console)


def register(app: typer.Typer) -> None:
    """Add train / encode / demo to the main app."""
    app.command("train")(train_command)
    app.command("encode")(encode_command)
    app.command("demo")(demo_command)
