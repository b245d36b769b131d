"""The one dataset type every source returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contrahash.data.errors import DataError
from contrahash.data.images import ImageStore


@dataclass
class ImageDataset:
    """Images, multi-hot labels and where they came from.

    ``labels`` is ``uint8 [N, C]`` multi-hot (one-hot for single-label sets); ``groups`` holds
    the official split membership when the source has one (``{"train": mask, "test": mask}``
    for CIFAR-10, the split folders of a ``ROOT/<split>/<class>/`` tree); ``fingerprint`` is a
    stable content identity (it changes when the files, labels or stored image size change)
    used to key feature caches and to check that a saved split belongs to this dataset;
    ``skipped`` lists ``(path, reason)`` of files left out because they could not be read;
    ``paths`` names each image's file (None for sources without files); ``decoding`` says how
    one of the source's files becomes its stored image (:func:`contrahash.data.images.
    decode_like_source`), so a file from outside can be decoded exactly alike. A source without
    labels (a photo folder, a single image, a list of paths) has ``C = 0`` label columns;
    ``albums`` names each image's folder relative to ``root`` for a photo folder ("" at its
    top; None for other sources).
    """

    images: ImageStore
    labels: np.ndarray
    class_names: list[str]
    name: str
    fingerprint: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    groups: dict[str, np.ndarray] | None = None
    paths: list[str] | None = None
    decoding: dict | None = None
    albums: list[str] | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 2:
            raise DataError(f"dataset '{self.name}': labels must be [N, C], got {labels.shape}")
        self.labels = labels.astype(np.uint8, copy=False)
        n = len(self.images)
        if self.labels.shape[0] != n:
            raise DataError(
                f"dataset '{self.name}': {n} images but {self.labels.shape[0]} label rows"
            )
        if self.labels.shape[1] != len(self.class_names):
            raise DataError(
                f"dataset '{self.name}': labels have {self.labels.shape[1]} columns but there "
                f"are {len(self.class_names)} class names"
            )
        if self.groups is not None:
            groups = {}
            for key, mask in self.groups.items():
                mask = np.asarray(mask, dtype=bool)
                if mask.shape != (n,):
                    raise DataError(
                        f"dataset '{self.name}': group '{key}' has shape {mask.shape}, "
                        f"expected ({n},)"
                    )
                groups[key] = mask
            self.groups = groups
        if self.paths is not None and len(self.paths) != n:
            raise DataError(f"dataset '{self.name}': {len(self.paths)} paths for {n} images")
        if self.albums is not None and len(self.albums) != n:
            raise DataError(f"dataset '{self.name}': {len(self.albums)} albums for {n} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of label columns ``C``."""
        return int(self.labels.shape[1])

    @property
    def n_skipped(self) -> int:
        """How many files were left out as unreadable."""
        return len(self.skipped)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the stored images."""
        return self.images.image_size

    def single_label(self) -> np.ndarray | None:
        """Class ids ``int64 [N]`` when every image has exactly one label, else ``None``."""
        return single_label(self.labels)

    def class_counts(self) -> np.ndarray:
        """Images per class (per concept for multi-label sets), ``int64 [C]``."""
        return self.labels.sum(axis=0, dtype=np.int64)

    def __repr__(self) -> str:
        h, w = self.image_size
        groups = ", ".join(f"{k}={int(v.sum())}" for k, v in (self.groups or {}).items())
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, classes={self.num_classes}, "
            f"size={h}x{w}, store={type(self.images).__name__}, skipped={self.n_skipped}"
            + (f", groups[{groups}]" if groups else "")
            + ")"
        )


def single_label(labels: np.ndarray) -> np.ndarray | None:
    """Class ids when every row of a multi-hot array has exactly one 1, else ``None``."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels.astype(np.int64)
    if labels.shape[0] == 0 or not np.all(labels.sum(axis=1) == 1):
        return None
    return labels.argmax(axis=1).astype(np.int64)


def one_hot(class_ids: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``int [N]`` class ids → ``uint8 [N, C]`` one-hot."""
    ids = np.asarray(class_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise DataError(f"class ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.min() < 0:
        raise DataError(f"class ids must be >= 0, found {int(ids.min())}")
    c = int(num_classes if num_classes is not None else (ids.max() + 1 if ids.size else 0))
    if ids.size and ids.max() >= c:
        raise DataError(f"class id {int(ids.max())} out of range for {c} classes")
    out = np.zeros((ids.size, c), dtype=np.uint8)
    out[np.arange(ids.size), ids] = 1
    return out
