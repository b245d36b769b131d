"""Image sources: one loader per on-disk format, and :func:`load_source` to pick among them.

| spec | loader | store |
|---|---|---|
| ``"digits"`` | scikit-learn's 1,797 8×8 digits | in memory, 8×8 |
| ``path/to/file.npz`` | packed-JPEG CIFAR-10 (decoded once, cached) | in memory, 32×32 |
| ``"cifar10"`` / ``…/cifar-10-batches-py`` (or its parent) | torchvision's python pickles | in memory, 32×32 |
| ``ROOT/`` (files at any depth; sub-folders are albums) | photo folder, unlabelled | see below |
| the same with ``labels="folders"``: ``ROOT/<class>/<file>`` or ``ROOT/<split>/<class>/<file>`` | class folders, labelled | see below |
| ``list.txt`` (``rel/path.jpg l1 … lC``, 0/1 multi-hot) | list file, paths under ``image_root`` | see below |

Folder and list sources load into memory when they hold at most :data:`LAZY_THRESHOLD` images
(and would take at most :data:`MEMORY_BUDGET` bytes); larger ones (or ``lazy=True``) become a
:class:`LazyImages` store decoding on access. In memory, images that all share one size keep it
(unless ``store_size`` asks for another); mixed sizes are resized to ``store_size`` (default
256) squared. Lazy stores always resize to ``store_size`` (default 256).

A folder is a photo library unless the caller says its folders are classes: every image at
every depth is an item, its folder (relative to ``ROOT``) is its *album*, and there are no
labels. Hidden and system files (dot-files such as ``._IMG_1.jpg`` and ``.DS_Store``,
``Thumbs.db``, ``desktop.ini``, ``@eaDir``/``__MACOSX`` folders) are skipped silently. Large
photos are stored at ``store_size`` (default 256) squared, like mixed sizes.

Bad files (zero bytes, not an image, undecodable, truncated, missing) are skipped, counted in
``dataset.skipped`` and summarised in one ``UserWarning``. For lazy stores the load-time check
is a header read plus ``Image.verify()``; a file that still fails when accessed gives a gray
placeholder (see :class:`LazyImages`). Structural problems raise :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from contrahash.data.dataset import ImageDataset, one_hot
from contrahash.data.errors import DataError
from contrahash.data.folders import (  # noqa: F401 - re-exported: the public names of data.sources
    DEFAULT_STORE_SIZE,
    FOLDER_LABELS,
    IMAGE_SUFFIXES,
    LAZY_THRESHOLD,
    LIST_SUFFIXES,
    MAX_NATIVE_SIDE,
    MEMORY_BUDGET,
    SPLIT_NAMES,
    SYSTEM_FILES,
    SYSTEM_FOLDERS,
    NoReadableImages,
    hash_parts,
    is_system_file,
    load_files,
    load_image_file,
    load_image_folder,
    load_list_file,
    packed_decoding,
    parse_list_file,
    tensor_store,
    walk_image_files,
    warn_skipped,
)
from contrahash.data.images import describe_error
from contrahash.io import default_cache_dir

CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def load_source(
    spec: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    store_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    workers: int | None = None,
    lazy: bool | None = None,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    labels: str = "albums",
) -> ImageDataset:
    """Load a dataset from a spec (see the module docstring for what a spec can be).

    ``labels`` says how an image folder's sub-folders are read: ``"albums"`` (default: a
    photo library, every image at every depth, no labels) or ``"folders"`` (class folders).

    ``store_size`` resizes stored images to ``store_size²`` (default: keep a common native
    size, else 256); ``cache_dir`` (default :func:`default_cache_dir`) holds decoded packed
    JPEGs and downloaded CIFAR-10; ``download`` lets a missing CIFAR-10 be fetched through
    torchvision; ``workers`` bounds decoding parallelism (default: all cores); ``lazy`` forces
    (True) or forbids (False) a decode-on-access store for folder and list sources;
    ``class_names`` (a list, or a file with one name per line) names list-file columns.

    >>> ds = load_source("digits")
    >>> len(ds), ds.images.image_size, ds.class_names[:3]
    (1797, (8, 8), ['0', '1', '2'])
    """
    if store_size is not None and int(store_size) <= 0:
        raise DataError(f"store_size must be a positive number of pixels, got {store_size}")
    if labels not in FOLDER_LABELS:
        raise DataError(f"labels must be one of {', '.join(FOLDER_LABELS)}, got {labels!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = os.fspath(spec)
    if text == "digits":
        return load_digits(store_size=store_size)
    path = Path(text).expanduser()
    if text == "cifar10" and not path.exists():
        return load_cifar_pickles(cache, download=download, store_size=store_size)
    if not path.exists():
        if path.name == CIFAR_DIR:
            return load_cifar_pickles(path, download=download, store_size=store_size)
        raise DataError(
            f"data source '{text}' does not exist (expected 'digits', 'cifar10', a packed-JPEG "
            ".npz, a .txt list file, a cifar-10-batches-py folder or an image folder)"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return load_packed_npz(path, cache_dir=cache, workers=workers, store_size=store_size)
        if suffix in LIST_SUFFIXES:
            return load_list_file(
                path,
                image_root=image_root,
                class_names=class_names,
                store_size=store_size,
                workers=workers,
                lazy=lazy,
            )
        if suffix in IMAGE_SUFFIXES:
            return load_image_file(path, store_size=store_size)
        raise DataError(
            f"{path}: unsupported file type '{suffix}' (a source file is an image, a "
            "packed-JPEG .npz or a .txt list file)"
        )
    if _cifar_dir(path) is not None:
        return load_cifar_pickles(path, download=download, store_size=store_size)
    return load_image_folder(path, store_size=store_size, workers=workers, lazy=lazy,
                             labels=labels)


# --- digits ---------------------------------------------------------------------------------


def load_digits(store_size: int | None = None) -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits: 8×8 gray 0..16 → RGB uint8 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    gray = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = np.repeat(gray[..., None], 3, axis=3)
    labels = one_hot(bunch.target, 10)
    fp = hash_parts("digits", images.tobytes(), labels.tobytes(), store_size)
    return ImageDataset(
        images=tensor_store(torch.from_numpy(np.ascontiguousarray(images)), store_size),
        labels=labels,
        class_names=[str(i) for i in range(10)],
        name="digits",
        fingerprint=fp,
    )


# --- packed JPEG npz ------------------------------------------------------------------------


def load_packed_npz(
    path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    store_size: int | None = None,
    use_cache: bool = True,
) -> ImageDataset:
    """CIFAR-10 packed as JPEGs in one .npz (see :mod:`contrahash.data.packed`).

    ``groups`` holds the official ``train``/``test`` membership (from ``is_test``).
    """
    from contrahash.data.packed import load_decoded, read_packed

    packed = read_packed(path)
    cache = (
        (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    )
    images, kept, failures, _ = load_decoded(packed, cache, workers)
    paths_all = packed.relative_paths()
    skipped = [
        (paths_all[i] if paths_all else f"{packed.path}#{i}", reason)
        for i, reason in sorted(failures.items())
    ]
    warn_skipped(skipped, len(packed), str(packed.path))
    if len(kept) == 0:
        raise DataError(f"{packed.path}: none of the {len(packed)} files decodes; empty dataset")
    labels = one_hot(packed.labels[kept], len(packed.class_names))
    groups = None
    if packed.is_test is not None:
        is_test = packed.is_test[kept]
        groups = {"train": ~is_test, "test": is_test}
    fp = hash_parts(
        "packed-jpeg", packed.cache_key(), kept.tobytes(), labels.tobytes(), store_size
    )
    return ImageDataset(
        images=tensor_store(torch.from_numpy(images), store_size),
        labels=labels,
        class_names=list(packed.class_names),
        name=packed.path.stem,
        fingerprint=fp,
        skipped=skipped,
        groups=groups,
        paths=[paths_all[i] for i in kept] if paths_all else None,
        decoding=packed_decoding(store_size),
    )


# --- CIFAR-10 python pickles ----------------------------------------------------------------


def _cifar_dir(path: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or directly under ``path``, if there is one."""
    for cand in (path, path / CIFAR_DIR):
        if cand.is_dir() and (
            cand.name == CIFAR_DIR
            or (cand / "data_batch_1").is_file()
            or (cand / _CIFAR_TEST).is_file()
        ):
            return cand
    return None


def load_cifar_pickles(
    path: str | os.PathLike, *, download: bool = False, store_size: int | None = None
) -> ImageDataset:
    """CIFAR-10 in torchvision's python format, read from the pickles directly.

    ``path`` is the ``cifar-10-batches-py`` folder or its parent. When it is missing,
    ``download=True`` fetches it through ``torchvision.datasets.CIFAR10`` (into the parent);
    otherwise a :class:`DataError` says so. ``groups`` = official ``train`` (50,000) and
    ``test`` (10,000). The pickles are trusted input, as in torchvision.
    """
    path = Path(path)
    folder = _cifar_dir(path) if path.exists() else None
    if folder is None:
        parent = path.parent if path.name == CIFAR_DIR else path
        if not download:
            raise DataError(
                f"CIFAR-10 not found: no {CIFAR_DIR} folder at {parent}. Pass download=True "
                "(CLI: --download) to fetch it with torchvision, or give the folder's path"
            )
        from torchvision.datasets import CIFAR10

        parent.mkdir(parents=True, exist_ok=True)
        try:
            CIFAR10(root=str(parent), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - offline machines fail in many ways
            raise DataError(f"could not download CIFAR-10 into {parent}: {exc}") from exc
        folder = parent / CIFAR_DIR
    missing = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{folder}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    parts, ids, is_test = [], [], []
    digest = hashlib.sha256(b"cifar10-pickle")
    for name in (*_CIFAR_TRAIN, _CIFAR_TEST):
        data, labels = _read_cifar_batch(folder / name)
        parts.append(data)
        ids.append(labels)
        is_test.append(np.full(len(labels), name == _CIFAR_TEST))
        digest.update(data.tobytes())
        digest.update(labels.astype(np.int64).tobytes())
    names = _cifar_names(folder)
    class_ids = np.concatenate(ids)
    if class_ids.max() >= len(names):
        raise DataError(f"{folder}: label {class_ids.max()} but only {len(names)} class names")
    images = np.ascontiguousarray(
        np.concatenate(parts).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )
    test_mask = np.concatenate(is_test)
    digest.update(str(store_size).encode())
    return ImageDataset(
        images=tensor_store(torch.from_numpy(images), store_size),
        labels=one_hot(class_ids, len(names)),
        class_names=names,
        name="cifar10",
        fingerprint=digest.hexdigest(),
        groups={"train": ~test_mask, "test": test_mask},
    )


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(file, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as exc:
        raise DataError(f"{file}: not a readable CIFAR-10 batch ({describe_error(exc)})") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"{file}: expected 'data' [n, 3072] and n labels, got {data.shape} and {labels.shape}"
        )
    return data, labels


def _cifar_names(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as f:
                names = pickle.load(f, encoding="bytes")[b"label_names"]
            return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as exc:
            raise DataError(f"{meta}: not a readable CIFAR-10 meta file ({exc})") from exc
    return "airplane automobile bird cat deer dog frog horse ship truck".split()


