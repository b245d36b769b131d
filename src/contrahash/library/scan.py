"""What a collection stores about each item besides its codes, read in one pass per file.

For an item with a file: the SHA-256 of the file's bytes (the content identity that ``index
sync`` and duplicate detection compare), its size and modification time (a sync re-hashes a
file only when they changed), its width and height as shown (EXIF orientation applied), a
thumbnail that keeps the aspect ratio, and a perceptual code for near-duplicate search
(:func:`contrahash.retrieval.duplicates.perceptual_code`). The file is read once; the image decodes at
the smallest JPEG scale that still gives ``min_side`` pixels on its shorter side, so a 12 MP
photo never decodes at 12 MP. Items without a file (CIFAR arrays, digits) get the same facts
from their stored pixels; their content hash is that of the pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from contrahash.progress import Progress, as_progress

__all__ = ["ItemFacts", "content_hash", "scan_items"]

#: the shorter side an image decodes at for its thumbnail and perceptual code
MIN_SIDE = 256


@dataclass(frozen=True)
class ItemFacts:
    """One item's stored facts (see the module docstring)."""

    sha256: str
    width: int
    height: int
    thumbnail: bytes
    perceptual: np.ndarray
    size_bytes: int | None = None
    mtime_ns: int | None = None


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _thumbnail(img: Any, size: int, quality: int) -> bytes:
    from PIL import Image

    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)  # fits the box: aspect kept
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _file_facts(path: str, size: int, quality: int) -> ItemFacts:
    from contrahash.data.images import decode_upright
    from contrahash.retrieval.duplicates import perceptual_code

    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    img, (width, height) = decode_upright(data, min_side=max(MIN_SIDE, size))
    return ItemFacts(hashlib.sha256(data).hexdigest(), int(width), int(height),
                     _thumbnail(img, size, quality), np.asarray(perceptual_code(img)),
                     size_bytes=int(st.st_size), mtime_ns=int(st.st_mtime_ns))


def _pixel_facts(pixels: np.ndarray, size: int, quality: int) -> ItemFacts:
    from PIL import Image

    from contrahash.retrieval.duplicates import perceptual_code

    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(b"pixels\0" + repr(pixels.shape).encode() + pixels.tobytes())
    img = Image.fromarray(pixels)
    return ItemFacts(digest.hexdigest(), int(pixels.shape[1]), int(pixels.shape[0]),
                     _thumbnail(img, size, quality), np.asarray(perceptual_code(img)))


def scan_items(dataset: Any, rows: Sequence[int] | np.ndarray, *, thumbnail_size: int,
               quality: int, progress: Progress | None = None, workers: int | None = None,
               chunk: int = 256) -> list[ItemFacts | str]:
    """The facts of ``dataset`` rows ``rows`` in order; a file that cannot be read any more
    gives its reason (a string) instead. Files are read by a thread pool (hashing, JPEG
    decoding and resizing release the GIL)."""
    from contrahash.data.images import DECODE_ERRORS, default_workers, describe_error

    rows = np.asarray(rows, dtype=np.int64)
    workers = workers or default_workers()
    paths = dataset.paths

    def one(row: int) -> ItemFacts | str:
        try:
            if paths is not None and os.path.isfile(paths[row]):
                return _file_facts(paths[row], thumbnail_size, quality)
            if paths is not None and dataset.root is not None:  # a folder's file went away
                return "file not found"
            return _pixel_facts(np.asarray(dataset.images[int(row)]), thumbnail_size, quality)
        except FileNotFoundError:
            return "file not found"
        except DECODE_ERRORS as exc:
            return describe_error(exc)

    out: list[ItemFacts | str] = []
    with as_progress(progress).phase("thumbnails and content hashes", len(rows)) as phase, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        for lo in range(0, len(rows), chunk):
            block = rows[lo:lo + chunk]
            out.extend(pool.map(one, block.tolist()))
            phase.advance(len(block))
    return out

