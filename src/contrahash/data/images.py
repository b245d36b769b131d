"""Image decoding and the two image stores.

Every image leaves this module as RGB ``uint8`` ``[H, W, 3]``:

* grayscale (``L``, ``1``), ``CMYK``, ``YCbCr``, ``LA`` → RGB;
* ``RGBA``/``LA``/``PA`` and palette images with transparency → RGB composited over white,
  as a photo viewer shows them (dropping alpha would show whatever colour a transparent
  pixel happens to store, often black);
* 16-bit (``I;16``, ``I;16B``, …) and 32-bit integer ``I`` images → ``round(v / 257)``, i.e.
  0..65535 maps onto 0..255 (Pillow opens 16-bit PNG/TIFF as ``I;16`` or ``I``); values outside
  0..65535 are clipped;
* float ``F`` images → values in 0..1 are scaled by 255, otherwise clipped to 0..255;
* animated GIF/WebP/PNG → their first frame;
* the EXIF ``Orientation`` tag is applied (:func:`orient`): a phone photo stored sideways
  with Orientation 6 decodes upright, as every photo viewer shows it, and its size is
  reported upright by :func:`probe_image`;
* HEIC/HEIF photos decode when the optional ``pillow-heif`` package is installed
  (``contrahash[heif]``); without it they are refused with a message naming the extra.

Two stores share one interface (``len(store)``, ``store[idx]`` → ``torch.uint8``
``[B, H, W, 3]``, or ``[H, W, 3]`` for an int, and ``store.image_size``):

* :class:`TensorImages` holds one in-memory tensor (CIFAR-10, digits, small folders);
* :class:`LazyImages` decodes files on access with a thread pool (Pillow releases the GIL
  while decoding and resizing), resizing each to ``size × size``. A file that passed the
  load-time header check but fails to decode at access time (e.g. truncated) comes back as a
  gray (128) placeholder; the failure is recorded in :attr:`LazyImages.failures` and warned
  about once.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: value of every pixel of the placeholder returned for a file that fails at access time
PLACEHOLDER_VALUE = 128

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

#: the EXIF tag that says how a stored image must be turned to be shown upright
EXIF_ORIENTATION = 0x0112
#: orientations that swap width and height (a transpose is part of them)
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
#: file name endings of HEIC/HEIF photos (the iPhone default), readable with pillow-heif
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})
#: how to get HEIC/HEIF support
HEIF_HINT = "install the heif extra: pip install 'contrahash[heif]' (pillow-heif)"


class MissingHeifSupport(ValueError):
    """A HEIC/HEIF photo was met and ``pillow-heif`` is not installed."""


def heif_available() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with Pillow if it is installed; whether it is."""
    global _HEIF
    if _HEIF is None:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            _HEIF = False
        else:
            register_heif_opener()
            _HEIF = True
    return _HEIF


_HEIF: bool | None = None


def is_heif(path: str | os.PathLike) -> bool:
    """Whether a file is named like a HEIC/HEIF photo."""
    return Path(path).suffix.lower() in HEIF_SUFFIXES


def orientation(img: Image.Image) -> int:
    """The EXIF orientation of an opened image (1 = stored upright; 1 when there is none)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except DECODE_ERRORS:  # a damaged EXIF block: show the pixels as stored
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(img: Image.Image) -> Image.Image:
    """``img`` turned upright by its EXIF orientation (the same image when it has none)."""
    if orientation(img) == 1:
        return img
    try:
        return ImageOps.exif_transpose(img)
    except DECODE_ERRORS:
        return img


def upright_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as shown, its EXIF orientation applied."""
    w, h = img.size
    return (h, w) if orientation(img) in _SWAPPING_ORIENTATIONS else (w, h)

# Errors Pillow raises for a bad file; anything else (MemoryError, KeyboardInterrupt) propagates.
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
    EOFError,
    IndexError,
    TypeError,
    KeyError,
)


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image → an ``RGB`` image with 8 bits per channel (see the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.float64)
        gray = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            arr = arr * 255.0
        gray = np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when converting such palettes straight to RGB
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(source: str | os.PathLike | bytes, size: int | None = None) -> np.ndarray:
    """Decode one file (path or bytes) to RGB ``uint8 [H, W, 3]``; resize to ``size²`` if given.

    JPEGs use Pillow's draft mode (DCT-domain downscaling) first, so a large photo that ends up
    at 256² never decodes at full resolution. The EXIF orientation is applied before resizing.
    Resizing squashes to a square (no crop), the same geometry as the test-time "resize to the
    input size" transform. Raises one of :data:`DECODE_ERRORS` for a bad file
    (:class:`MissingHeifSupport` for a HEIC/HEIF photo without pillow-heif).
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with open_image(fp) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
        rgb = to_rgb(orient(img))
        if size is not None and rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        arr = np.array(rgb, dtype=np.uint8)  # a writable copy (asarray is read-only)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"decoded to shape {arr.shape}, expected [H, W, 3]")
    return arr


def probe_image(path: str | os.PathLike, verify: bool = False) -> tuple[int, int]:
    """Cheap validity check: open the header (and ``verify()`` if asked); return ``(H, W)``.

    Raises one of :data:`DECODE_ERRORS` (or ``OSError``/``ValueError`` with a reason) for an
    empty file, a non-image or a damaged header. A truncated image body can still pass.
    """
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    if verify:  # verify() must come straight after open, and spends the image
        with open_image(path) as img:
            img.verify()
    with open_image(path) as img:
        w, h = upright_size(img)
    if w <= 0 or h <= 0:
        raise ValueError(f"image has size {w}x{h}")
    return h, w


def open_image(source: str | os.PathLike | io.BytesIO) -> Image.Image:
    """``Image.open`` that knows HEIC/HEIF: with pillow-heif installed such photos open like
    any other; without it a :class:`MissingHeifSupport` names the extra to install."""
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        if heif_available():
            raise
        head = b""
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:12]
        else:
            with open(source, "rb") as f:
                head = f.read(12)
        if is_heif(str(source)) or _looks_like_heif(head):
            raise MissingHeifSupport(f"a HEIC/HEIF photo: {HEIF_HINT}") from None
        raise


def _looks_like_heif(head: bytes) -> bool:
    """An ISO base-media file whose brand is one of HEIF's (``ftypheic``, ``ftypmif1``, …)."""
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (
        b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"hevx")


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a skipped file."""
    if isinstance(exc, MissingHeifSupport):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def normalize_index(idx, n: int) -> tuple[np.ndarray, bool]:
    """Any supported index → (int64 positions in ``[0, n)``, whether the result is one image)."""
    if isinstance(idx, torch.Tensor):
        if idx.dtype == torch.bool:
            idx = idx.cpu().numpy()
        elif idx.ndim == 0:
            idx = int(idx.item())
        else:
            idx = idx.detach().cpu().numpy()
    if isinstance(idx, int | np.integer):
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        return np.array([i % n], dtype=np.int64), True
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx], False
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise IndexError(f"boolean mask has shape {arr.shape}, expected ({n},)")
        return np.flatnonzero(arr).astype(np.int64), False
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), False
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise IndexError(f"unsupported image index of shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < -n) | (arr >= n)
    if bad.any():
        raise IndexError(f"image index {int(arr[bad][0])} out of range for {n} images")
    return np.where(arr < 0, arr + n, arr), False


class TensorImages:
    """All images in one in-memory ``uint8`` tensor ``[N, H, W, 3]``.

    >>> store = TensorImages(torch.zeros(4, 8, 8, 3, dtype=torch.uint8))
    >>> store[1].shape, store[[0, 2]].shape, store.image_size
    (torch.Size([8, 8, 3]), torch.Size([2, 8, 8, 3]), (8, 8))
    """

    def __init__(self, data: torch.Tensor | np.ndarray):
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.ascontiguousarray(data))
        if data.dtype != torch.uint8 or data.ndim != 4 or data.shape[3] != 3:
            raise ValueError(
                f"TensorImages needs uint8 [N, H, W, 3], got {data.dtype} {tuple(data.shape)}"
            )
        self.data = data

    @property
    def tensor(self) -> torch.Tensor:
        """The whole ``uint8 [N, H, W, 3]`` tensor (same object as :attr:`data`)."""
        return self.data

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return self.data[idx]
        positions, single = normalize_index(idx, len(self))
        if single:
            return self.data[int(positions[0])]
        return self.data[torch.from_numpy(positions)]

    def __repr__(self) -> str:
        h, w = self.image_size
        return f"TensorImages(n={len(self)}, size={h}x{w})"


class LazyImages:
    """Images decoded from files on access, each resized to ``size × size``.

    Batches decode in a thread pool of ``workers`` threads. A file that fails here (it passed
    the cheap header check at load time) yields a gray placeholder, is recorded in
    :attr:`failures` (index → reason) and warned about once.
    """

    def __init__(
        self, paths: Sequence[str | os.PathLike], size: int = 256, workers: int | None = None
    ):
        if size <= 0:
            raise ValueError(f"LazyImages size must be positive, got {size}")
        self.paths = [str(p) for p in paths]
        self.size = int(size)
        self.workers = workers if workers is not None else default_workers()
        self.failures: dict[int, str] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of every returned image."""
        return self.size, self.size

    def __len__(self) -> int:
        return len(self.paths)

    def _decode_into(self, out: np.ndarray, row: int, index: int) -> None:
        try:
            out[row] = decode_image(self.paths[index], self.size)
        except DECODE_ERRORS as exc:
            out[row] = PLACEHOLDER_VALUE
            reason = describe_error(exc)
            with self._lock:
                first = index not in self.failures
                self.failures[index] = reason
            if first:
                warnings.warn(
                    f"could not decode {self.paths[index]} ({reason}); using a gray placeholder",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _decode_rows(self, out: np.ndarray, positions: np.ndarray, lo: int, hi: int) -> None:
        for row in range(lo, hi):
            self._decode_into(out, row, int(positions[row]))

    def __getitem__(self, idx) -> torch.Tensor:
        positions, single = normalize_index(idx, len(self))
        out = np.empty((len(positions), self.size, self.size, 3), dtype=np.uint8)
        n = len(positions)
        if n <= 1 or self.workers <= 1:
            self._decode_rows(out, positions, 0, n)
        else:
            pool = self._get_pool()
            step = max(1, -(-n // (self.workers * 4)))
            futures = [
                pool.submit(self._decode_rows, out, positions, lo, min(n, lo + step))
                for lo in range(0, n, step)
            ]
            for f in futures:
                f.result()
        tensor = torch.from_numpy(out)
        return tensor[0] if single else tensor

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="contrahash-img")
            return self._pool

    def close(self) -> None:
        """Stop the decoding threads (they restart on the next access)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __getstate__(self) -> dict:
        # picklable for DataLoader workers: drop the pool and the lock
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"LazyImages(n={len(self)}, size={self.size}x{self.size}, workers={self.workers})"


ImageStore = TensorImages | LazyImages


def resize_tensor_images(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Resize ``uint8 [N, H, W, 3]`` to ``[N, size, size, 3]`` (bilinear, antialiased)."""
    n = images.shape[0]
    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    for lo in range(0, n, chunk):
        x = images[lo : lo + chunk].permute(0, 3, 1, 2).float()
        y = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out[lo : lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def is_hidden(path: Path) -> bool:
    """Dot-files and dot-folders (``.DS_Store``, ``.ipynb_checkpoints``) are never data."""
    return path.name.startswith(".")


#: the most pixels a file decoded for a query may have (a decompression bomb is refused)
MAX_QUERY_PIXELS = 40_000_000


def decode_like_source(data: bytes, decoding: dict | None = None,
                       max_pixels: int = MAX_QUERY_PIXELS) -> np.ndarray:
    """Decode one file's bytes exactly as a source decoded its own files (its ``decoding``:
    decoder, resize method, stored size), so that a source's file decodes to the very pixels
    the source stored. Raises ``ValueError`` for a non-image, a damaged file or one with more
    than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    decoding = decoding or {}
    try:
        with open_image(io.BytesIO(data)) as probe:
            width, height = probe.size
            fmt = probe.format
            turned = orientation(probe) != 1
    except MissingHeifSupport as exc:
        raise ValueError(str(exc)) from None
    except DECODE_ERRORS as exc:
        raise ValueError(f"not an image ({describe_error(exc)})") from None
    if width * height > max_pixels:
        raise ValueError(f"image is {width}x{height} = {width * height:,} pixels, more than the "
                         f"limit of {max_pixels:,} (a decompression bomb?)")
    size, resize = decoding.get("size"), decoding.get("resize")
    try:
        if decoding.get("decoder") == "torchvision-jpeg" and fmt == "JPEG" and not turned:
            from torchvision.io import ImageReadMode, decode_jpeg

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities.*")
                tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB)
            arr = tensor.permute(1, 2, 0).numpy()
        else:
            arr = decode_image(data, size if resize == "pil" else None)
    except (RuntimeError, *DECODE_ERRORS) as exc:
        raise ValueError(f"cannot decode the image ({describe_error(exc)})") from None
    if resize == "torch" and size and arr.shape[:2] != (size, size):
        arr = resize_tensor_images(torch.from_numpy(arr)[None], int(size))[0].numpy()
    return arr


def decode_upright(source: str | os.PathLike | bytes, min_side: int | None = None
                   ) -> tuple[Image.Image, tuple[int, int]]:
    """One file as shown: an upright ``RGB`` Pillow image and its full upright ``(width,
    height)``. With ``min_side``, JPEGs decode in draft mode at the smallest DCT scale whose
    shorter side is still at least ``min_side`` (thumbnails and perceptual codes of a 12 MP
    photo need not decode 12 MP). The aspect ratio is kept. Raises one of
    :data:`DECODE_ERRORS` for a bad file.
    """
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with open_image(fp) as img:
        full = upright_size(img)
        if min_side is not None and img.format == "JPEG":
            w, h = img.size
            scale = max(1.0, min(w, h) / float(min_side))
            img.draft("RGB", (int(w / scale), int(h / scale)))
        img.load()
        rgb = to_rgb(orient(img))
        if rgb is img:  # closing the file closes the image it was opened as
            rgb = img.copy()
    return rgb, full
