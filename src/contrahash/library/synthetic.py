"""A phone-style photo folder made from CIFAR-10 JPEGs, for tests and benchmarks.

Real photo libraries are not benchmark arrays: large JPEGs in year folders (and deeper
albums, and loose at the top), some stored sideways with an EXIF Orientation tag, a few PNG
(with alpha), WebP, CMYK and 16-bit files, an animated GIF, and junk — system files, notes,
an empty and a truncated JPEG. :func:`make_photo_folder` writes such a folder from the
CIFAR-10 JPEG copy (each 32×32 image upscaled to ``size``) and returns what each photo is,
so that retrieval can be scored by the hidden true class. Nothing of it is committed; the
CIFAR copy is given by path.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Photo", "find_cifar10", "make_photo_folder"]

#: how the photos of a folder are stored, in proportions of every 40 photos
_KINDS = ["jpeg"] * 28 + ["rotated"] * 6 + ["png-alpha", "webp", "cmyk", "gray16", "gif",
                                            "jpeg-top"]
_ALBUMS = ["2019", "2020", "2021", "2021/trip", ""]


def find_cifar10(given: str | os.PathLike | None = None) -> Path | None:
    """The packed CIFAR-10 JPEG copy: ``given``, else ``$CONTRAHASH_CIFAR10``, else the
    ``shared/datasets/cifar10-jpeg.npz`` beside a source checkout; None when none is a file
    (tests skip, benchmarks ask for a path)."""
    checkout = Path(__file__).resolve().parents[3]
    for candidate in (given, os.environ.get("CONTRAHASH_CIFAR10"),
                      checkout.parent / "shared" / "datasets" / "cifar10-jpeg.npz"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Photo:
    """One written photo: its path, CIFAR index and class, and how it was stored."""

    path: Path
    source_index: int
    label: int
    kind: str

    @property
    def rotated(self) -> bool:
        return self.kind == "rotated"


def _exif_orientation(value: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _write(photo: Photo, pixels: np.ndarray, size: tuple[int, int], quality: int) -> None:
    from PIL import Image

    img = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
    photo.path.parent.mkdir(parents=True, exist_ok=True)
    kind = photo.kind
    if kind in ("jpeg", "jpeg-top"):
        img.save(photo.path, "JPEG", quality=quality)
    elif kind == "rotated":  # stored turned 90° counter-clockwise; Orientation 6 shows it upright
        img.transpose(Image.Transpose.ROTATE_90).save(
            photo.path, "JPEG", quality=quality, exif=_exif_orientation(6))
    elif kind == "png-alpha":
        rgba = img.convert("RGBA")
        rgba.putalpha(255)
        rgba.save(photo.path, "PNG")
    elif kind == "webp":
        img.save(photo.path, "WEBP", quality=quality)
    elif kind == "cmyk":
        img.convert("CMYK").save(photo.path, "JPEG", quality=quality)
    elif kind == "gray16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(photo.path, "PNG")
    elif kind == "gif":
        second = Image.fromarray(255 - np.asarray(img))
        img.save(photo.path, "GIF", save_all=True, append_images=[second], duration=200, loop=0)
    else:  # pragma: no cover - the kinds are listed above
        raise ValueError(kind)


_SUFFIX = {"jpeg": ".jpg", "jpeg-top": ".jpg", "rotated": ".jpg", "png-alpha": ".png",
           "webp": ".webp", "cmyk": ".jpg", "gray16": ".png", "gif": ".gif"}


def make_photo_folder(cifar: str | os.PathLike, root: str | os.PathLike, n: int, *,
                      size: tuple[int, int] = (1600, 1200), seed: int = 0, quality: int = 90,
                      junk: bool = True, offset: int = 0, workers: int | None = None,
                      write: bool = True) -> list[Photo]:
    """Write ``n`` photos (CIFAR-10 images ``offset`` onwards in a seeded random order) into
    ``root`` as described in the module docstring; returns them in writing order
    (``write=False``: only what the same call would write)."""
    from PIL import Image

    from contrahash.data.images import default_workers
    from contrahash.data.packed import read_packed

    packed = read_packed(cifar)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(packed))[offset:offset + n]
    root = Path(root)
    photos = []
    for j, idx in enumerate(order.tolist()):
        kind = _KINDS[j % len(_KINDS)]
        album = "" if kind == "jpeg-top" else _ALBUMS[j % (len(_ALBUMS) - 1)]
        name = f"IMG_{offset + j:05d}{_SUFFIX[kind]}"
        photos.append(Photo(root / album / name, int(idx), int(packed.labels[idx]), kind))
    if not write:
        return photos

    def one(photo: Photo) -> None:
        with Image.open(io.BytesIO(packed.file_bytes(photo.source_index))) as img:
            pixels = np.asarray(img.convert("RGB"))
        _write(photo, pixels, size, quality)

    with ThreadPoolExecutor(workers or default_workers()) as pool:
        list(pool.map(one, photos))
    if junk:
        root.mkdir(parents=True, exist_ok=True)
        (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / "2019").mkdir(exist_ok=True)
        (root / "2019" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (root / "2019" / "._IMG_00000.jpg").write_bytes(b"\0\5\26\7AppleDouble")
        (root / "notes.txt").write_text("holiday list\n")
        (root / "2020" / "empty.jpg").parent.mkdir(exist_ok=True)
        (root / "2020" / "empty.jpg").write_bytes(b"")
        good = photos[0].path.read_bytes()
        (root / "2020" / "truncated.jpg").write_bytes(good[: len(good) // 3])
        (root / "empty-album").mkdir(exist_ok=True)
    return photos
