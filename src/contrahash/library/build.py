"""``contrahash index build --data FOLDER --out DIR``: a collection in one command, its model
learnt from the folder's own images.

The defaults are chosen for a laptop CPU (``docs/photos.md`` has the measurements behind
them): FDBH on a frozen EfficientNet-Lite0 with the feature cache — every training image's
augmented views go through the backbone once, after which the hashing head trains on the
cached features for 40 epochs of batches of 128 (the setting validated on CIFAR-10) — on at most :data:`MAX_TRAIN_IMAGES` images drawn from the folder (the field's
protocols train on 5,000 as well). ``finetune_blocks=N`` fine-tunes the backbone's last N
blocks from the block cache instead (better codes, several times the time), and ``epochs``
trains longer. No label is used for training; a folder's sub-folders are albums unless
``labels="folders"``.

The training run lives in ``DIR/training/`` (resumable: run the same command again after an
interruption; once the collection is built its feature cache and checkpoints are dropped
unless ``keep_cache``), the collection around it in ``DIR``; the run's own codes of every image are
the collection's codes, so no image goes through the backbone twice. A time estimate is said
before the long phases (:class:`contrahash.library.estimate.TimeEstimate`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.progress import ProgressCallback

__all__ = ["DEFAULT_BITS", "MAX_TRAIN_IMAGES", "build_library", "library_config"]

DEFAULT_BITS = (16, 32, 64)
#: images the model trains on at most (drawn at random from the collection)
MAX_TRAIN_IMAGES = 5000
#: FDBH's frozen-backbone setting validated on CIFAR-10 (results/cifar10-1-seeds): 40 epochs
#: of batches of 128
EPOCHS, BATCH_SIZE = 40, 128
#: images held out as queries of the run's own evaluation (mAP with labels; without labels
#: the label-free figure uses views of every image)
QUERY_IMAGES = 1000
TRAINING = "training"


def library_config(data: str, out: str | Path, n_images: int, *,
                   bits: Sequence[int] = DEFAULT_BITS, epochs: int | None = None,
                   finetune_blocks: int = 0, max_train: int = MAX_TRAIN_IMAGES,
                   labels: str = "albums", backbone: str = "efficientnet_lite0",
                   seed: int = 0, device: str = "auto", overrides: Sequence[str] = ()) -> Any:
    """The training config of a one-command build over ``n_images`` images; ``overrides``
    (``key=value``, as ``contrahash train`` takes them) change any field of it."""
    from contrahash.config import resolve_config

    if n_images < 2:
        raise ValueError(f"{data}: {n_images} image(s) — a model needs at least 2 to learn from")
    if finetune_blocks < 0:
        raise ValueError(f"--finetune-blocks must be >= 0, got {finetune_blocks}")
    query = max(1, min(QUERY_IMAGES, n_images // 10))
    train = min(int(max_train), n_images - query)
    out = Path(out)
    base: dict[str, Any] = {
        "method": "fdbh", "bits": [int(b) for b in bits], "seed": seed, "device": device,
        "data": {"source": data, "protocol": "custom", "labels": labels, "seed": seed,
                 "protocol_options": {"query": query, "train": train}},
        "backbone": {"name": backbone, "finetune_blocks": int(finetune_blocks)},
        "cache": {"mode": "blocks" if finetune_blocks else "auto",
                  "dir": str(out / TRAINING / "cache")},
        "optim": {"batch_size": BATCH_SIZE, "epochs": int(epochs or EPOCHS)},
        "out_dir": str(out), "name": TRAINING}
    return resolve_config(None, list(overrides), base=base)


def build_library(data: str, out: str | Path, *, bits: Sequence[int] = DEFAULT_BITS,
                  epochs: int | None = None, finetune_blocks: int = 0,
                  max_train: int = MAX_TRAIN_IMAGES, labels: str = "albums",
                  backbone: str = "efficientnet_lite0", seed: int = 0, device: str = "auto",
                  backend: dict[str, Any] | None = None, keep_cache: bool = False,
                  overrides: Sequence[str] = (), progress: ProgressCallback | None = None,
                  say: Callable[[str], None] = print, command: str | None = None
                  ) -> dict[str, Any]:
    """Learn an FDBH model from ``data``'s own images and index them into a new collection
    ``out`` (see the module docstring). Returns the manifest, with ``"training"`` (the run's
    results) and ``"estimate"`` (first estimate, actual seconds) added."""
    from contrahash.config import expand_source
    from contrahash.data import load_source
    from contrahash.library.estimate import TimeEstimate, Work
    from contrahash.methods import METHODS
    from contrahash.retrieval.collection import build_collection, check_new_collection_dir
    from contrahash.training.train import train_run

    out = Path(out)
    check_new_collection_dir(out)  # before any work: a wrong --out costs nothing
    t0 = time.perf_counter()
    source = expand_source(data)
    if Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    load_t = time.perf_counter()
    dataset = load_source(source, labels=labels)  # a bad folder fails here, before training
    load_s = time.perf_counter() - load_t
    cfg = library_config(source, out, len(dataset), bits=bits, epochs=epochs,
                         finetune_blocks=finetune_blocks, max_train=max_train, labels=labels,
                         backbone=backbone, seed=seed, device=device, overrides=overrides)
    opts = cfg.data.protocol_options
    spec = METHODS[cfg.method].default_optim
    n_epochs = int(cfg.optim.get("epochs", spec.epochs))
    n_train = int(opts["train"])
    batch = min(int(cfg.optim.get("batch_size", spec.batch_size)), n_train)
    train_images = n_epochs * (n_train // batch) * batch
    work = Work(forwards=n_train * cfg.cache.views + len(dataset) + min(1000, len(dataset)),
                train_images=train_images, scan_items=len(dataset), reload_seconds=load_s)
    if finetune_blocks:
        work.prior["train"] = 200.0
    estimate = TimeEstimate(work, say, progress)
    say(f"{len(dataset):,} images in {data}"
        + (f" ({dataset.n_skipped} files skipped)" if dataset.n_skipped else "")
        + f"; learning {cfg.method.upper()} codes of {', '.join(map(str, cfg.bits))} bits from "
        f"{n_train:,} of them ({'frozen backbone' if not finetune_blocks else f'last {finetune_blocks} blocks fine-tuned'}, "
        f"{n_epochs} epochs)")
    del dataset  # the collection reloads it; keeping it would double the memory
    run_dir = out / TRAINING
    resume = (run_dir / "config.yaml").is_file()
    result = train_run(None if resume else cfg, run_dir, resume=resume, command=command,
                       progress=estimate, resume_overrides=[f"optim.epochs={n_epochs}"]
                       if resume else ())
    codes = _codes_of_every_image(run_dir)
    manifest = build_collection(run_dir, source, out, labels=labels, backend=backend,
                                progress=estimate, command=command, codes=codes,
                                device=device if device != "auto" else None)
    if not keep_cache:  # the finished run keeps its model, codes and metrics (~1/3 the size)
        shutil.rmtree(run_dir / "cache", ignore_errors=True)
        for leftover in (*run_dir.glob("checkpoint-*"), run_dir / "checkpoint.json"):
            leftover.unlink(missing_ok=True)
    total = time.perf_counter() - t0
    return {**manifest, "training": result.results,
            "estimate": {"first_seconds": estimate.first, "actual_seconds": total,
                         "history": estimate.history}}


def _codes_of_every_image(run_dir: Path) -> dict[str, Any] | None:
    """The run's saved codes of every image of its dataset (its evaluation encoded them all),
    with the dataset fingerprint they belong to; None when they do not cover every image."""
    import json

    env = json.loads((run_dir / "environment.json").read_text())
    n = int(env["images"])
    out: dict[int, np.ndarray] = {}
    for path in sorted((run_dir / "codes").glob("*.npz")):
        z = np.load(path)
        if "self_rows" in z.files:  # label-free evaluation: database = every image
            index, codes = z["database_index"], z["database"]
        else:
            index = np.concatenate([z["query_index"], z["database_index"]])
            codes = np.concatenate([z["query"], z["database"]])
        if len(index) != n or not np.array_equal(np.sort(index), np.arange(n)):
            return None
        full = np.empty_like(codes)
        full[index] = codes
        out[int(path.stem)] = full
    return {"fingerprint": env["dataset_fingerprint"], "codes": out} if out else None
