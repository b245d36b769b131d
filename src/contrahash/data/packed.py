"""The packed-JPEG ``.npz`` (CIFAR-10 as 60,000 JPEG files sharing one header).

Format (see the dataset's README): ``jpeg_header`` uint8 (bytes every file starts with),
``jpeg_scans`` uint8 (the rest of each file, concatenated), ``offsets`` int64 [N+1] (file i is
``header + scans[offsets[i]:offsets[i+1]]``), ``labels`` uint8 [N], and optionally ``is_test``
bool [N], ``file_number`` int32 [N], ``class_names`` str [C], ``files_sha256`` (sha256 over all
files' bytes in array order).

Decoding: forked worker processes each decode a contiguous range straight into one shared
anonymous memory map (no pickling of pixels), with torchvision's libjpeg-turbo decoder
(faster than Pillow on small files) or Pillow where torchvision cannot. The parent
meanwhile checks ``files_sha256``. A worker that dies leaves its range to the parent; a file
either decoder rejects is skipped and reported. Without ``fork`` (Windows, macOS spawn) the
parent decodes alone.

The decoded array is cached as ``<cache_dir>/decoded/<key>.npy`` (+ ``.json``), the key being
the file's ``files_sha256`` field and size (or the sha256 of the whole file when the field is
absent), so a second load only reads the decoded array.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import multiprocessing as mp
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrahash.data.errors import DataError
from contrahash.data.images import DECODE_ERRORS, decode_image, default_workers, describe_error
from contrahash.io import sha256_file, write_json, write_npy

log = logging.getLogger(__name__)

REQUIRED_ARRAYS = ("jpeg_header", "jpeg_scans", "offsets", "labels")
CACHE_FORMAT = "contrahash-decoded-jpeg/1"

# status codes in the shared status array
_PENDING, _OK, _FAILED = 0, 1, 2


@dataclass
class PackedJpeg:
    """The arrays of a packed-JPEG npz (pixels not decoded yet)."""

    path: Path
    header: np.ndarray
    scans: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    is_test: np.ndarray | None
    file_number: np.ndarray | None
    files_sha256: str | None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def file_bytes(self, i: int) -> bytes:
        """The original bytes of file ``i``."""
        return self.header.tobytes() + self.scans[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def cache_key(self) -> str:
        """Content identity: ``files_sha256`` + file size (whole-file sha256 when absent)."""
        content = self.files_sha256 or sha256_file(self.path)
        blob = f"{CACHE_FORMAT}:{content}:{self.path.stat().st_size}"
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def relative_paths(self) -> list[str] | None:
        """``train/<class>/NNNN.jpg`` names of the original tree, when the npz records them."""
        if self.is_test is None or self.file_number is None:
            return None
        names = self.class_names
        return [
            f"{'test' if t else 'train'}/{names[c]}/{int(k):04d}.jpg"
            for t, c, k in zip(self.is_test, self.labels, self.file_number, strict=True)
        ]


def read_packed(path: str | os.PathLike) -> PackedJpeg:
    """Open and check a packed-JPEG npz; :class:`DataError` for anything structural."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read it as an .npz archive ({exc})") from exc
    if not hasattr(z, "files"):
        raise DataError(f"{path}: holds a single array, expected an .npz archive")
    missing = [k for k in REQUIRED_ARRAYS if k not in z.files]
    if missing:
        raise DataError(
            f"{path}: missing array(s) {', '.join(missing)} of the packed-JPEG format "
            f"(needs {', '.join(REQUIRED_ARRAYS)}; found {', '.join(z.files) or 'none'})"
        )
    try:
        header = np.asarray(z["jpeg_header"], dtype=np.uint8).ravel()
        scans = np.asarray(z["jpeg_scans"], dtype=np.uint8).ravel()
        offsets = np.asarray(z["offsets"]).astype(np.int64).ravel()
        labels = np.asarray(z["labels"]).astype(np.int64).ravel()
        is_test = np.asarray(z["is_test"], dtype=bool).ravel() if "is_test" in z.files else None
        number = np.asarray(z["file_number"]).ravel() if "file_number" in z.files else None
        names = [str(c) for c in z["class_names"]] if "class_names" in z.files else None
        sha = str(z["files_sha256"]) if "files_sha256" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: an array is damaged or holds Python objects ({exc})") from exc
    n = labels.shape[0]
    if n == 0:
        raise DataError(f"{path}: 'labels' is empty, the dataset has no images")
    if offsets.shape != (n + 1,):
        raise DataError(f"{path}: 'offsets' has {offsets.shape[0]} entries, expected N+1 = {n + 1}")
    if offsets[0] != 0 or offsets[-1] != scans.shape[0] or np.any(np.diff(offsets) < 0):
        raise DataError(
            f"{path}: 'offsets' must rise from 0 to len(jpeg_scans) = {scans.shape[0]} "
            f"(found {offsets[0]} .. {offsets[-1]})"
        )
    if labels.min() < 0:
        raise DataError(f"{path}: 'labels' holds a negative class id {labels.min()}")
    if names is None:
        names = [f"c{i}" for i in range(int(labels.max()) + 1)]
    if labels.max() >= len(names):
        raise DataError(
            f"{path}: label {labels.max()} has no entry in 'class_names' ({len(names)} names)"
        )
    for key, arr in (("is_test", is_test), ("file_number", number)):
        if arr is not None and arr.shape != (n,):
            raise DataError(f"{path}: '{key}' has shape {arr.shape}, expected ({n},)")
    return PackedJpeg(path, header, scans, offsets, labels, names, is_test, number, sha)


# --- decoding -------------------------------------------------------------------------------


def _tv_decoder():
    """torchvision's JPEG decoder, or None when this torchvision has none."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - any import problem means "use Pillow"
        return None

    def decode(data: np.ndarray) -> np.ndarray:
        t = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        return t.permute(1, 2, 0).numpy()

    return decode


def _decode_range(
    packed: PackedJpeg, out: np.ndarray, status: np.ndarray, lo: int, hi: int, decode=None
) -> None:
    """Decode files ``lo..hi-1`` into ``out`` and mark each in ``status`` (Pillow if no decode)."""
    header, scans, offsets = packed.header, packed.scans, packed.offsets
    shape = out.shape[1:]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image decoders (Pillow takes over where they go)
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
        for i in range(lo, hi):
            data = np.concatenate((header, scans[offsets[i] : offsets[i + 1]]))
            try:
                img = decode(data) if decode is not None else decode_image(data.tobytes())
            except (RuntimeError, *DECODE_ERRORS):
                status[i] = _FAILED
                continue
            if img.shape != shape:
                status[i] = _FAILED
                continue
            out[i] = img
            status[i] = _OK


def _worker_main(packed, out_buf, status_buf, shape, lo, hi, decode) -> None:  # pragma: no cover
    torch.set_num_threads(1)
    out = np.frombuffer(out_buf, dtype=np.uint8)[: int(np.prod(shape))].reshape(shape)
    status = np.frombuffer(status_buf, dtype=np.uint8)[: shape[0]]
    _decode_range(packed, out, status, lo, hi, decode)


def _files_sha256(packed: PackedJpeg) -> str:
    digest = hashlib.sha256()
    header = packed.header.tobytes()
    scans, offsets = packed.scans, packed.offsets
    for i in range(len(packed)):
        digest.update(header)
        digest.update(scans[offsets[i] : offsets[i + 1]])
    return digest.hexdigest()


def decode_packed(
    packed: PackedJpeg, workers: int | None = None, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Decode every file; return ``(images [N,H,W,3], kept indices, {index: reason})``.

    Image size is that of the first decodable file; a file of another size is skipped.
    With ``verify`` the parent checks ``files_sha256`` while the workers decode.
    """
    n = len(packed)
    shape = _first_shape(packed)
    workers = default_workers() if workers is None else max(1, int(workers))
    out_buf = mmap.mmap(-1, max(1, n * int(np.prod(shape))))
    status_buf = mmap.mmap(-1, n)
    out = np.frombuffer(out_buf, dtype=np.uint8)[: n * int(np.prod(shape))].reshape(n, *shape)
    status = np.frombuffer(status_buf, dtype=np.uint8)[:n]

    decode = _tv_decoder()  # imported before forking, so workers do not each import it
    procs = []
    use_fork = workers > 1 and n >= 2 * workers and "fork" in mp.get_all_start_methods()
    if use_fork:
        ctx = mp.get_context("fork")
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            for k in range(workers):
                p = ctx.Process(
                    target=_worker_main,
                    args=(
                        packed,
                        out_buf,
                        status_buf,
                        (n, *shape),
                        bounds[k],
                        bounds[k + 1],
                        decode,
                    ),
                    daemon=True,
                )
                p.start()
                procs.append(p)
    digest = _files_sha256(packed) if verify and packed.files_sha256 else None
    deadline = time.monotonic() + 120 + 0.005 * n  # generous: ~1 s per 60,000 files is usual
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():  # a hung worker: stop it, its unfinished files are decoded here
            p.terminate()
            p.join()
        if p.exitcode != 0:
            log.warning("decoder worker exited with %s; decoding its range here", p.exitcode)
    pending = np.flatnonzero(status == _PENDING)
    if len(pending):  # no fork, or a dead worker: the parent decodes what is left
        for lo, hi in _runs(pending):
            _decode_range(packed, out, status, lo, hi, decode)

    if digest is not None and digest != packed.files_sha256:
        raise DataError(
            f"{packed.path}: content check failed: the files hash to {digest[:16]}…, "
            f"'files_sha256' says {packed.files_sha256[:16]}…; the file is damaged"
        )
    failures: dict[int, str] = {}
    for i in np.flatnonzero(status == _FAILED):
        reason = _retry_with_pillow(packed, int(i), shape, out)
        if reason is not None:
            failures[int(i)] = reason
    kept = np.array([i for i in range(n) if i not in failures], dtype=np.int64)
    images = out if not failures else out[kept]
    return images, kept, failures


def _first_shape(packed: PackedJpeg) -> tuple[int, int, int]:
    for i in range(min(len(packed), 100)):
        try:
            return tuple(decode_image(packed.file_bytes(i)).shape)
        except DECODE_ERRORS:
            continue
    raise DataError(f"{packed.path}: none of the first files decodes as an image")


def _retry_with_pillow(packed: PackedJpeg, i: int, shape, out: np.ndarray) -> str | None:
    """Give a file torchvision rejected to Pillow; return the reason when it is really bad."""
    try:
        img = decode_image(packed.file_bytes(i))
    except DECODE_ERRORS as exc:
        return describe_error(exc)
    if img.shape != tuple(shape):
        return f"size {img.shape[0]}x{img.shape[1]} differs from the first image's {shape[0]}x{shape[1]}"
    out[i] = img
    return None


def _runs(indices: np.ndarray):
    """Contiguous ``(lo, hi)`` runs of sorted indices."""
    start = prev = int(indices[0])
    for i in indices[1:]:
        i = int(i)
        if i != prev + 1:
            yield start, prev + 1
            start = i
        prev = i
    yield start, prev + 1


# --- cache ----------------------------------------------------------------------------------


def load_decoded(
    packed: PackedJpeg, cache_dir: Path | None, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict[int, str], bool]:
    """Decoded images from the cache, or decoded now and cached.

    Returns ``(images, kept indices, failures, from_cache)``. ``cache_dir=None`` disables the
    cache. A damaged or mismatching cache entry is ignored and rewritten.
    """
    key = packed.cache_key() if cache_dir is not None else None
    if key is not None:
        cached = _read_cache(cache_dir / "decoded", key, len(packed))
        if cached is not None:
            return (*cached, True)
    t0 = time.perf_counter()
    images, kept, failures = decode_packed(packed, workers)
    log.info("decoded %d JPEGs in %.2f s", len(packed), time.perf_counter() - t0)
    if key is not None:
        try:
            _write_cache(cache_dir / "decoded", key, packed, images, kept, failures)
        except OSError as exc:  # a read-only cache must not stop the load
            warnings.warn(
                f"could not write the decoded-image cache in {cache_dir}: {exc}", stacklevel=2
            )
    return images, kept, failures, False


def _read_cache(folder: Path, key: str, n: int):
    meta_path, arr_path = folder / f"{key}.json", folder / f"{key}.npy"
    if not (meta_path.exists() and arr_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("n_files") != n:
            return None
        # copy-on-write map: near-instant, pages come from the page cache on first touch, and
        # the array is writable (torch.from_numpy needs that); the file is only ever replaced
        # atomically, never rewritten in place, so the mapping stays valid
        images = np.load(arr_path, mmap_mode="c")
        kept = np.asarray(meta["kept"], dtype=np.int64) if meta.get("kept") is not None else None
        kept = np.arange(n, dtype=np.int64) if kept is None else kept
        if (
            images.dtype != np.uint8
            or images.shape != tuple(meta["shape"])
            or len(kept) != len(images)
        ):
            return None
        failures = {int(k): str(v) for k, v in meta.get("failures", {}).items()}
        return images, kept, failures
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring damaged decoded-image cache %s: %s", arr_path, exc)
        return None


def _write_cache(folder: Path, key: str, packed, images, kept, failures) -> None:
    write_npy(folder / f"{key}.npy", np.ascontiguousarray(images))
    write_json(
        folder / f"{key}.json",
        {
            "format": CACHE_FORMAT,
            "source": str(packed.path),
            "files_sha256": packed.files_sha256,
            "n_files": len(packed),
            "shape": list(images.shape),
            "kept": None if not failures else kept.tolist(),
            "failures": {str(k): v for k, v in failures.items()},
        },
    )
