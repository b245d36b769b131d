"""Encoding images with a trained run: any source the data layer reads, in batches.

The images go through exactly what the run's evaluation used — the test-time transform at
the run's resolution, its precision and the trained weights — so codes of the same image
agree between ``contrahash encode``, the run's own ``codes/`` and a collection index.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from contrahash.config import expand_source
from contrahash.model import HashingModel, load_trained
from contrahash.progress import Progress, ProgressCallback, as_progress

__all__ = ["encode_dataset", "encode_run"]


def encode_dataset(model: HashingModel, images: Any, indices: np.ndarray | None = None, *,
                   progress: Progress | ProgressCallback | None = None, chunk: int = 4096) -> dict[int, np.ndarray]:
    """±1 int8 codes per code length of ``images[indices]`` (all images by default), in
    chunks so that features never all sit in memory at once."""
    indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    parts: dict[int, list[np.ndarray]] = {k: [] for k in model.method.bits}
    with as_progress(progress).phase("encoding", len(indices)) as phase:
        for lo in range(0, len(indices), chunk):
            features = model.extract(images, indices[lo:lo + chunk], on_batch=phase.advance)
            for k, codes in model.encode(features).items():
                parts[k].append(codes)
    if not len(indices):
        return {k: np.zeros((0, k), dtype=np.int8) for k in model.method.bits}
    return {k: np.concatenate(v) for k, v in parts.items()}


def encode_run(run_dir: str | os.PathLike, data: str | None = None, image_root: str | None = None,
               device: str | None = None, progress: Progress | ProgressCallback | None = None
               ) -> tuple[dict[int, np.ndarray], Any]:
    """Codes of every image of ``data`` (default: the run's own source) with a trained run;
    returns (codes per code length, the dataset)."""
    from contrahash.data import load_source

    cfg, model = load_trained(run_dir, device)
    source = data if data is not None else cfg.data.source
    root = image_root if data is not None else cfg.data.image_root
    with as_progress(progress).phase("data loading", None, unit="source", source=source):
        dataset = load_source(expand_source(source), image_root=root)
    return encode_dataset(model, dataset.images, progress=progress), dataset
