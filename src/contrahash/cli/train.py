"""``contrahash train``, ``contrahash encode`` and ``contrahash demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from contrahash.cli.common import console, fail, fmt, invoked_command, relaunch
from contrahash.cli.progress import ProgressOption, progress_display


def train_command(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(
        help="key=value overrides, e.g. bits=[16,32] backbone.finetune_blocks=6")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="continue the run in this directory")] = None,
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="where to write the run (default runs/<name>)")] = None,
    allow_thread_change: Annotated[bool, typer.Option(
        "--allow-thread-change", help="resume with another thread count than the run's "
        "(it continues, but not bit-identically)")] = False,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="processes on this machine (torch.distributed; the batch size "
        "stays the global batch); several machines: run under torchrun")] = 1,
    stop_after_epoch: Annotated[int | None, typer.Option(
        "--stop-after-epoch", hidden=True, help="(tests) stop after this many epochs")] = None,
    progress: ProgressOption = True,
) -> None:
    """Train a hashing method and evaluate it; writes a complete run directory."""
    from contrahash.config import resolve_config
    from contrahash.training.distributed import context, is_distributed
    from contrahash.training.train import train_run

    if nproc > 1 and not is_distributed():
        relaunch(nproc)  # this command again, in nproc processes
        return

    # `contrahash train key=value ...` without a YAML file is allowed too
    args = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        args.insert(0, str(config))
        config = None
    display = _with_epoch_estimate(progress_display(progress))
    if resume is not None:
        if config is not None:
            fail("--resume continues a run with its own config.yaml; give no config file with "
                 "it (key=value overrides such as optim.epochs=60 are allowed)")
        result = train_run(None, resume, resume=True, command=invoked_command(), progress=display,
                           resume_overrides=args, allow_thread_change=allow_thread_change,
                           stop_after_epoch=stop_after_epoch)
        if not context().is_main:
            return
        if result.reused:
            console.print(f"{resume} has already finished: nothing to do (its results below; "
                          f"`contrahash evaluate {resume}` re-reads them)")
    else:
        cfg = resolve_config(config, args)
        result = train_run(cfg, run_dir, command=invoked_command(), progress=display,
                           stop_after_epoch=stop_after_epoch)
    if not context().is_main or not result.results:
        return
    print_results(result.results, title=f"{result.results.get('method')} — {result.run_dir}")


def _with_epoch_estimate(display):
    """Say, once the first training epoch is done, how long all epochs will take — so that a
    run of many hours (an end-to-end fine-tuning on a CPU) is known at once, not discovered."""
    from contrahash.library.estimate import format_seconds

    told = []

    def callback(event) -> None:
        if display is not None:
            display(event)
        if event.phase == "training" and event.finished and not told:
            told.append(True)
            epochs = int(event.info.get("epochs") or 0)
            epoch = int(event.info.get("epoch") or 1)
            if epochs > epoch:
                left = event.seconds * (epochs - epoch)
                hint = (" (backbone.finetune_blocks=0 or cache.mode=blocks train far faster on "
                        "a CPU)" if left > 1800 else "")
                console.print(f"epoch {epoch} took {format_seconds(event.seconds)}: the "
                              f"{epochs - epoch} left will take about {format_seconds(left)}"
                              f"{hint}", highlight=False)

    return callback


def print_results(results: dict, title: str = "results") -> None:
    """A rich table of a run's metrics per code length."""
    bits = results.get("bits", results)
    topk = results.get("topk")
    if results.get("labels") is False:  # unlabelled images: the label-free figure, no mAP
        table = Table(title=f"{title} (no labels: augmented-view self-retrieval)")
        for name in ("bits", "self-retrieval@10", "with ties for it", "mean distance to self"):
            table.add_column(name, justify="right")
        for k, rep in bits.items():
            table.add_row(str(k), fmt(rep.get("self_retrieval_at_10")),
                          fmt(rep.get("self_retrieval_at_10_best")),
                          f"{rep.get('mean_distance_to_self', float('nan')):.2f}")
        console.print(table)
        return
    table = Table(title=title)
    table.add_column("bits", justify="right")
    table.add_column(f"mAP@{topk if topk else 'ALL'}", justify="right")
    table.add_column("P@1000", justify="right")
    table.add_column("P@r≤2", justify="right")
    for k, rep in bits.items():
        p_at = rep.get("precision_at_n", {})
        p1000 = p_at.get("1000", p_at.get(1000))
        table.add_row(str(k), fmt(rep.get("map")), fmt(p1000), fmt(rep.get("precision_radius_2")))
    console.print(table)


def encode_command(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    out: Annotated[Path, typer.Option("--out", help="codes file (.npy, ±1 int8 rows)")],
    data: Annotated[str | None, typer.Option(
        "--data", help="images: a file, a folder (flat or class folders), a list file, a "
        "packed .npz, … (default: the run's own source)")] = None,
    image_root: Annotated[Path | None, typer.Option("--image-root")] = None,
    bits: Annotated[int | None, typer.Option(
        "--bits", help="code length (default: the longest)")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    nproc: Annotated[int, typer.Option(
        "--nproc", min=1, help="processes sharing the encoding (torch.distributed)")] = 1,
    progress: ProgressOption = True,
) -> None:
    """Encode every image of a source with a trained run; writes ±1 codes as .npy."""
    from contrahash.training.distributed import context, is_distributed

    if nproc > 1 and not is_distributed():
        relaunch(nproc)
        return
    from contrahash.config import resolve_config
    from contrahash.retrieval.codes_io import check_output_path, write_codes
    from contrahash.retrieval.encode import encode_run

    if not (run_dir / "config.yaml").is_file():
        fail(f"{run_dir} is not a run directory (no config.yaml)")
    run_bits = resolve_config(run_dir / "config.yaml").bits
    if bits is not None and bits not in run_bits:
        fail(f"--bits {bits}: the run {run_dir} has code lengths {run_bits}")
    check_output_path(out)  # before any encoding: a bad --out fails at once
    codes, dataset = encode_run(run_dir, data, str(image_root) if image_root else None, device,
                                progress=progress_display(progress))
    if not context().is_main:
        return
    k = bits if bits is not None else max(codes)
    written = write_codes(out, codes[k], dataset, run_dir)
    console.print(f"wrote {codes[k].shape[0]} × {k}-bit codes to {out} "
                  f"({', '.join(str(p.name) for p in written[1:])} beside it)")


def demo_command(
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="where runs and the picture go (default: a new runs/demo-<time>)")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="FDBH epochs")] = 40,
) -> None:
    """Train FDBH on the embedded digits (CPU, minutes), compare with ITQ and LSH, draw results."""
    from contrahash.demo import run_demo
    from contrahash.runtime import apply_thread_policy, thread_settings

    if (thread_settings()["policy"] or {}).get("source", "default") == "default":
        # tiny models: one thread is fastest, idle or busy, and keeps the demo's numbers the
        # same on every machine (results at one seed depend on the thread count)
        apply_thread_policy(1)

    run_demo(out_dir, epochs=epochs, console=console)
