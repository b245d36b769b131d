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
from contrahash.models.model import HashingModel, load_trained
from contrahash.progress import Progress, ProgressCallback, as_progress

__all__ = ["encode_dataset", "encode_run"]


def encode_dataset(model: HashingModel, images: Any, indices: np.ndarray | None = None, *,
                   progress: Progress | ProgressCallback | None = None, chunk: int = 4096
                   ) -> dict[int, np.ndarray]:
    """±1 int8 codes per code length of ``images[indices]`` (all images by default), in
    chunks so that features never all sit in memory at once. In a distributed job every
    process encodes a share of the chunks and every process receives all codes."""
    from contrahash.training.distributed import context, share_pieces

    indices = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    bits = model.method.bits
    if not len(indices):
        return {k: np.zeros((0, k), dtype=np.int8) for k in bits}
    pieces = [(slice(lo, min(len(indices), lo + chunk)),) for lo in range(0, len(indices), chunk)]
    total = sum(bits)
    out = np.empty((len(indices), total), dtype=np.int8)  # every code length side by side
    ctx = context()
    with as_progress(progress).phase("encoding", len(indices)) as phase:

        def piece(p: int) -> np.ndarray:
            features = model.extract(images, indices[pieces[p][0]], on_batch=phase.advance)
            codes = model.encode(features)
            return np.concatenate([codes[k] for k in bits], axis=1)

        if ctx.world_size == 1:
            for p, index in enumerate(pieces):
                out[index] = piece(p)
        else:
            share_pieces(ctx, pieces, out.shape, np.int8, piece,
                         lambda p, values: out.__setitem__(pieces[p], values))
    ends = np.cumsum([0, *bits])
    return {k: np.ascontiguousarray(out[:, ends[i]:ends[i + 1]]) for i, k in enumerate(bits)}


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
