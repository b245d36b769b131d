"""``contrahash demo``: FDBH vs ITQ and LSH on the embedded digits, on the CPU in minutes.

Everything is real: the 1,797 scikit-learn digits are split (10% query, rest database, 1,000
training images from the database), FDBH trains its 16/32/64-bit heads from a feature cache
of augmented views, ITQ and LSH are fitted on the same features, all three are evaluated with
the project's mAP, and a PNG shows queries with their top results (green = same digit). The
demo is a small benchmark grid (:data:`DEMO_GRID`, run by :mod:`contrahash.bench`), so its
rows are configs, not code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

#: the demo as a benchmark grid: three rows on the embedded digits, one seed
DEMO_GRID: dict[str, Any] = {
    "name": "demo",
    "description": "FDBH vs ITQ and LSH on scikit-learn's digits (CPU, minutes), mAP@ALL.",
    "base": {
        "bits": [16, 32, 64],
        "data": {
            "source": "digits",
            "protocol": "custom",
            "protocol_options": {"query": 0.1, "train": 1000, "train_in_database": True},
        },
        "backbone": {"name": "pixels", "image_size": 16},
        "cache": {"mode": "on", "views": 8},
        # digits are not mirror-symmetric and are tiny: gentle crops, no flips, no colour
        "augment": {"scale": [0.7, 1.0], "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0},
        "optim": {"epochs": 40, "batch_size": 64},
        "eval_batch_size": 512,
    },
    "seeds": [0],
    "methods": {
        # the digits pool is small: mine neighbours within the training images
        "fdbh": {"method": "fdbh", "method_config": {"neighbour_pool": "train"}},
        "itq": {"method": "itq"},
        "lsh": {"method": "lsh"},
    },
}


def default_demo_dir() -> Path:
    """A new ``runs/demo-<time>`` directory name (``-2``, ``-3``… within the same second)."""
    base = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_demo(out_dir: Path | None = None, epochs: int = 40, console: Console | None = None
             ) -> dict[str, dict[str, Any]]:
    """Run the demo grid, print the table, draw the retrieval picture; returns results."""
    from contrahash.bench import parse_grid, run_grid

    console = console or Console()
    out_dir = Path(out_dir) if out_dir is not None else default_demo_dir()
    grid = parse_grid(DEMO_GRID)
    report = run_grid(grid, out_dir, overrides=[f"optim.epochs={epochs}"], plots=False,
                      command=f"contrahash demo --epochs {epochs}",
                      log=lambda msg: console.print(msg, highlight=False))
    if report.failed:
        failed = report.failed[0]
        raise RuntimeError(f"demo cell {failed.cell.id} failed: {failed.error}")
    results = {o.cell.label: o.results for o in report.outcomes}
    table = Table(title=f"digits (embedded), mAP@ALL, {out_dir}")
    table.add_column("method")
    bits = [str(b) for b in DEMO_GRID["base"]["bits"]]
    for b in bits:
        table.add_column(f"{b} bits", justify="right")
    for method, res in results.items():
        table.add_row(method, *[f"{res['bits'][b]['map']:.4f}" for b in bits])
    console.print(table)
    first = report.outcomes[0]  # the grid's first row: FDBH
    picture = draw_retrievals(first.cell.run_dir, out_dir / "retrievals.png")
    console.print(f"query grid: {picture}")
    return results


def draw_retrievals(run_dir: Path, path: Path, bits: int | None = None, n_queries: int = 8,
                    top: int = 10) -> Path:
    """PNG grid: each row a query then its top results, green frame = relevant, red = not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from contrahash.config import resolve_config
    from contrahash.data import load_source
    from contrahash.io import atomic_write
    from contrahash.retrieval.index import HammingIndex

    cfg = resolve_config(run_dir / "config.yaml")
    bits = bits or max(cfg.bits)
    z = np.load(run_dir / "codes" / f"{bits}.npz")
    images = load_source(cfg.data.source).images
    index = HammingIndex(bits)
    index.add(z["database"])
    q = np.linspace(0, len(z["query"]) - 1, n_queries).astype(int)
    _, ids = index.search(z["query"][q], top)
    fig, axes = plt.subplots(n_queries, top + 1, figsize=(1.1 * (top + 1), 1.2 * n_queries))
    for r, qi in enumerate(q):
        q_label = z["query_labels"][qi].astype(bool)
        panels = [(z["query_index"][qi], None)] + [
            (z["database_index"][j], bool((z["database_labels"][j].astype(bool) & q_label).any()))
            for j in ids[r]
        ]
        for c, (img_index, relevant) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.asarray(images[int(img_index)]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if relevant is None else ("limegreen" if relevant else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            if r == 0:
                ax.set_title("query" if c == 0 else f"#{c}", fontsize=8)
    fig.suptitle(f"FDBH {bits}-bit: top-{top} Hamming neighbours (green = same class)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    plt.close(fig)
    return path
