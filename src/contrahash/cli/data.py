"""``contrahash data …``: look at a data source and write protocol splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from contrahash.data import ImageDataset, load_source
from contrahash.data.protocols import PROTOCOLS, make_split, save_split

data_app = typer.Typer(
    name="data",
    help="Inspect data sources and write retrieval splits (query/database/train lists).",
    no_args_is_help=True,
)

_SOURCE_HELP = (
    "'digits', 'cifar10', a packed-JPEG .npz, a cifar-10-batches-py folder, an image folder "
    "(ROOT/<class>/ or ROOT/<split>/<class>/) or a .txt list file"
)


_LABELS_HELP = ("How an image folder's sub-folders are read: albums (a photo library, no "
                "labels) or folders (class folders).")


def _load(source: str, image_root: str | None, cache_dir: str | None, download: bool,
          labels: str = "albums"):
    """Load a source (its warnings — skipped files — show as one line each on stderr)."""
    return load_source(source, image_root=image_root, cache_dir=cache_dir, download=download,
                       labels=labels)


def info(
    source: str = typer.Argument(..., help=_SOURCE_HELP),
    image_root: str | None = typer.Option(None, help="Image folder for a list file's paths."),
    cache_dir: str | None = typer.Option(None, help="Cache folder (default $CONTRAHASH_CACHE)."),
    download: bool = typer.Option(False, help="Allow downloading CIFAR-10 when missing."),
    labels: str = typer.Option("albums", "--labels", help=_LABELS_HELP),
) -> None:
    """Counts per class and per group (official split), image size and skipped files."""
    ds = _load(source, image_root, cache_dir, download, labels)
    console = Console()
    h, w = ds.image_size
    console.print(
        f"[bold]{ds.name}[/]: {len(ds):,} images, {ds.num_classes} classes, {h}×{w} stored "
        f"({type(ds.images).__name__}), skipped files: {ds.n_skipped}",
        highlight=False,
    )
    labels_per_image = ds.labels.sum(axis=1)
    if ds.single_label() is None:
        console.print(
            f"multi-label: {labels_per_image.mean():.2f} labels per image, "
            f"{int((labels_per_image == 0).sum()):,} images without a label",
            highlight=False,
        )
    console.print(f"fingerprint: {ds.fingerprint}", highlight=False)
    console.print(_class_table(ds))
    for path, reason in ds.skipped[:10]:
        console.print(f"  skipped {path}: {reason}", highlight=False)
    if ds.n_skipped > 10:
        console.print(f"  … {ds.n_skipped - 10} more skipped", highlight=False)


def _class_table(ds: ImageDataset) -> Table:
    groups = ds.groups or {}
    table = Table(title="images per class" + (" and group" if groups else ""))
    table.add_column("class")
    table.add_column("all", justify="right")
    for g in groups:
        table.add_column(g, justify="right")
    columns = [ds.labels.sum(axis=0, dtype=np.int64)]
    columns += [ds.labels[mask].sum(axis=0, dtype=np.int64) for mask in groups.values()]
    for c, name in enumerate(ds.class_names):
        table.add_row(name, *(f"{int(col[c]):,}" for col in columns))
    table.add_row(
        "[bold]images[/]", f"{len(ds):,}", *(f"{int(m.sum()):,}" for m in groups.values())
    )
    return table


def split(
    protocol: str = typer.Argument(..., help=f"One of: {', '.join(PROTOCOLS)}."),
    source: str = typer.Option(..., "--source", help=_SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for query/database/train lists."),
    image_root: str | None = typer.Option(None, help="Image folder for a list file's paths."),
    seed: int = typer.Option(0, help="Seed of the split's permutation."),
    scale: float = typer.Option(1.0, help="Multiply every protocol count (small test sets)."),
    val_size: float | None = typer.Option(
        None, help="Validation images carved from the database: a count, or a fraction < 1."
    ),
    cache_dir: str | None = typer.Option(None, help="Cache folder (default $CONTRAHASH_CACHE)."),
    download: bool = typer.Option(False, help="Allow downloading CIFAR-10 when missing."),
    labels: str | None = typer.Option(
        None, "--labels", help=_LABELS_HELP + " Default: folders for a benchmark protocol, "
        "albums for custom."),
) -> None:
    """Split a source by a protocol and write the index lists + split.json (with hashes)."""
    if labels is None:
        labels = "albums" if protocol == "custom" else "folders"
    ds = _load(source, image_root, cache_dir, download, labels)
    options = {"scale": scale}
    if val_size is not None:
        options["val_size"] = int(val_size) if val_size >= 1 else float(val_size)
    result = make_split(protocol, ds, seed=seed, **options)
    hashes = save_split(result, out)
    console = Console()
    topk = "ALL" if result.topk is None else f"{result.topk:,}"
    console.print(
        f"[bold]{protocol}[/] on {ds.name} ({len(ds):,} images), seed {seed}, mAP@{topk} → {out}",
        highlight=False,
    )
    table = Table(title="split")
    table.add_column("part")
    table.add_column("images", justify="right")
    table.add_column("sha256 of list (full hash in split.json)")
    for part, idx in result.parts().items():
        table.add_row(part, f"{len(idx):,}", hashes[f"{part}.txt"][:16] + "…")
    console.print(table)
    if ds.num_classes <= 30 and result.class_counts:
        per_class = Table(title="images per class (label counts for multi-label data)")
        per_class.add_column("class")
        parts = list(result.parts())
        for part in parts:
            per_class.add_column(part, justify="right")
        for c, name in enumerate(ds.class_names):
            per_class.add_row(name, *(f"{result.class_counts[p][c]:,}" for p in parts))
        console.print(per_class)
