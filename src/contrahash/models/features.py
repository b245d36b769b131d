"""Backbone feature extraction and the frozen-backbone feature cache.

Training a hashing head on a frozen backbone only ever needs the backbone outputs of a few
augmented views per training image. :class:`FeatureCache` computes V views per image once
(a memory-mapped float16 file keyed by backbone, weights, resolution, dataset fingerprint,
augmentation and view seed) and every later run — other methods, other code lengths, other
seeds of the head — trains from it, so a CPU experiment costs minutes instead of hours.

Cost: one backbone forward per cached view, i.e. ``n_train × V`` forwards once, plus one per
evaluated image; the forward cost grows with the square of the resolution, and lower
resolutions are proportionally cheaper and weaker. Storage: ``n × V × d × 2`` bytes. The
measured costs and the effect of the resolution are in docs/results.md ("The feature cache:
cost and resolution").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrahash.io import default_cache_dir, write_json

ImageTransform = Callable[..., torch.Tensor]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays.

    On such CPUs a forward runs several times faster under bf16 autocast than in fp32
    (docs/results.md); elsewhere bf16 is emulated and slower, so fp32 is kept.
    ``CONTRAHASH_CPU_BF16=0`` (or ``1``) overrides the detection.
    """
    forced = os.environ.get("CONTRAHASH_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "no", "")
    return _cpu_bf16_instructions()


@cache
def _cpu_bf16_instructions() -> bool:
    """The hardware probe behind :func:`cpu_has_native_bf16`, once per process (it is asked
    for every batch through :func:`autocast_for`)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, name)()) for name in checks if hasattr(torch.cpu, name))
    except Exception:  # a private torch helper changed: stay on fp32
        return False


def default_eval_batch_size(device: torch.device | str) -> int:
    """Images per forward for feature extraction/encoding when not configured: 512 on CUDA,
    64 on CPU (smaller batches stay in the CPU's caches: faster there, docs/results.md)."""
    return 512 if torch.device(device).type == "cuda" else 64


def autocast_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype a forward on ``device`` uses: bf16 on CUDA and on CPUs with native
    bf16 (see :func:`cpu_has_native_bf16`), None (fp32) otherwise or when ``enabled`` is False."""
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast_for(device: torch.device | str, enabled: bool = True):
    """bf16 autocast where it is native (CUDA, CPUs with AVX512-BF16/AMX), else nothing."""
    dtype = autocast_dtype(device, enabled)
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype=dtype)


def backbone_inputs(
    backbone: Any,
    images_uint8: torch.Tensor,
    transform: ImageTransform,
    device: torch.device,
    channels_last: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 [B,H,W,3] → transformed, normalised float [B,3,S,S] on ``device``.

    Channels-last when asked, on CUDA and CPU alike: oneDNN's CPU convolutions are faster in
    that layout than on a contiguous NCHW input (docs/results.md).
    """
    x = images_uint8.to(device, non_blocking=True)
    x = transform(x, generator=generator) if generator is not None else transform(x)
    x = backbone.normalize(x)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def backbone_outputs(backbone: Any, x: torch.Tensor, device: torch.device, *, amp: bool = True,
                     tokens: bool = False, engine: Callable[[np.ndarray], np.ndarray] | None = None
                     ) -> np.ndarray:
    """Backbone outputs of prepared inputs ``x`` as float16 rows (what caches store and what
    codes are computed from): the one forward of extraction, encoding and query encoding.

    ``engine`` (a compiled frozen forward, :mod:`contrahash.models.engine`) replaces the torch
    forward when given; it takes the same normalised inputs as float32 NCHW.
    """
    if engine is not None:
        return engine(x.float().contiguous().cpu().numpy()).astype(np.float16)
    with autocast_for(device, amp):
        f = backbone.forward_tokens(x) if tokens else backbone(x)
    return f.float().cpu().numpy().astype(np.float16)


@torch.no_grad()
def extract_features(
    backbone: Any,
    images: Any,
    indices: Sequence[int] | np.ndarray,
    transform: ImageTransform,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    amp: bool = True,
    tokens: bool = False,
    generator: torch.Generator | None = None,
    out: np.ndarray | None = None,
    start: int = 0,
    on_batch: Callable[[int], None] | None = None,
    engine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Backbone outputs of ``images[indices]`` under ``transform``, as float16 rows.

    Writes into ``out`` (e.g. a memmap) from row ``start`` when given, so long extractions can
    resume; returns the filled array. ``engine``: see :func:`backbone_outputs`.
    """
    device = torch.device(device)
    indices = np.asarray(indices, dtype=np.int64)
    was_training = backbone.training
    backbone.eval()
    try:
        for lo in range(start, len(indices), batch_size):
            hi = min(lo + batch_size, len(indices))
            batch = images[indices[lo:hi]]
            x = backbone_inputs(backbone, batch, transform, device, generator=generator,
                                channels_last=engine is None)
            f = backbone_outputs(backbone, x, device, amp=amp, tokens=tokens, engine=engine)
            if out is None:
                out = np.empty((len(indices), *f.shape[1:]), dtype=np.float16)
            out[lo:hi] = f
            if on_batch is not None:
                on_batch(hi - lo)
    finally:
        backbone.train(was_training)
    if out is None:
        raise ValueError("extract_features: no images to process")
    return out


class FeatureCache:
    """A folder of memory-mapped feature arrays, one per key, computed once and resumable.

    >>> import tempfile
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> arr = cache.get_or_compute({"x": 1}, (4, 2), lambda out, start: out.fill(1) or out)
    >>> float(arr.sum())
    8.0
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir() / "features"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        """Stable short hash of the parts that define a feature array."""
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:24]

    def path(self, parts: dict[str, Any]) -> Path:
        """Final .npy path for these key parts."""
        return self.root / f"{self.key(parts)}.npy"

    def get_or_compute(
        self,
        parts: dict[str, Any],
        shape: tuple[int, ...],
        compute: Callable[[np.ndarray, int], np.ndarray],
        dtype: Any = np.float16,
    ) -> np.ndarray:
        """Return the cached array, or compute it with ``compute(out_memmap, start_row)``.

        Progress is kept in a ``.partial.npy`` + ``.progress`` pair so an interrupted
        computation restarts where it stopped (``compute`` must honour ``start_row`` and may
        call :meth:`mark_progress`).
        """
        final = self.path(parts)
        if final.exists():
            arr = np.load(final, mmap_mode="r")
            if arr.shape == tuple(shape):
                return arr
            final.unlink()  # stale shape: recompute
        partial = final.with_suffix(".partial.npy")
        progress = final.with_suffix(".progress")
        start = 0
        if partial.exists() and progress.exists():
            out = np.lib.format.open_memmap(partial, mode="r+")
            start = int(progress.read_text() or 0) if out.shape == tuple(shape) else 0
            if out.shape != tuple(shape):
                del out
                partial.unlink()
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        else:
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        self._progress_file = progress
        compute(out, start)
        out.flush()
        del out
        os.replace(partial, final)
        if progress.exists():
            progress.unlink()
        write_json(final.with_suffix(".json"), parts)
        return np.load(final, mmap_mode="r")

    def get_or_compute_parts(
        self,
        parts: dict[str, Any],
        shape: tuple[int, ...],
        pieces: Sequence[tuple[Any, ...]],
        compute_piece: Callable[[int], np.ndarray],
        rows_done: Callable[[int], int],
        ctx: Any = None,
        dtype: Any = np.float16,
    ) -> np.ndarray:
        """Like :meth:`get_or_compute`, for an array made of pieces: ``out[pieces[p]] =
        compute_piece(p)``, in order; ``rows_done(p)`` is the progress after piece p (the
        pieces fill a growing prefix of rows, so an interrupted computation restarts at the
        first missing piece).

        With a distributed context of several processes (:mod:`contrahash.training.distributed`)
        every process computes the pieces ``p ≡ rank (mod world)`` at the same time, the
        pieces travel to rank 0 (broadcasts, so any file system will do), and rank 0 writes
        the array — N processes build it about N times faster. A distributed computation that
        is interrupted starts again from the beginning.
        """
        if ctx is None or ctx.world_size == 1:
            def compute(out: np.ndarray, start: int) -> np.ndarray:
                first = next((p for p in range(len(pieces)) if rows_done(p) > start), len(pieces))
                for p in range(first, len(pieces)):
                    out[pieces[p]] = compute_piece(p)
                    self.mark_progress(rows_done(p))
                return out

            return self.get_or_compute(parts, shape, compute, dtype)
        return self._compute_together(parts, shape, pieces, compute_piece, ctx, dtype)

    def _compute_together(self, parts: dict[str, Any], shape: tuple[int, ...],
                          pieces: Sequence[tuple[Any, ...]],
                          compute_piece: Callable[[int], np.ndarray], ctx: Any,
                          dtype: Any) -> np.ndarray:
        import torch.distributed as dist

        from contrahash.training.distributed import share_pieces

        final = self.path(parts)
        found = torch.tensor(int(ctx.is_main and final.exists()
                                 and np.load(final, mmap_mode="r").shape == tuple(shape)))
        dist.broadcast(found, src=0)
        if not bool(found):
            partial = final.with_suffix(".partial.npy")
            out = (np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
                   if ctx.is_main else None)

            def write(p: int, values: np.ndarray) -> None:
                out[pieces[p]] = values

            share_pieces(ctx, pieces, shape, dtype, compute_piece,
                         write if out is not None else None)
            if out is not None:
                out.flush()
                del out
                os.replace(partial, final)
                write_json(final.with_suffix(".json"), parts)
        ctx.barrier()
        return np.load(final, mmap_mode="r")

    def mark_progress(self, rows_done: int) -> None:
        """Record that the first ``rows_done`` rows of the array being computed are final."""
        progress = getattr(self, "_progress_file", None)
        if progress is not None:
            progress.write_text(str(rows_done))
