"""What a protocol produces and what it is: :class:`Split` (sorted index arrays per part,
with what made them) and :class:`Protocol` (a named rule with its options and cut-off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contrahash.data.errors import DataError

SPLIT_FORMAT = "contrahash-split/1"
PARTS = ("query", "database", "train", "val")


@dataclass
class Split:
    """Index arrays (``int64``, sorted, into the dataset) of one protocol applied once."""

    protocol: str
    seed: int
    topk: int | None
    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    val: np.ndarray | None = None
    n_items: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    class_counts: dict[str, list[int]] | None = None
    class_names: list[str] | None = None

    def parts(self) -> dict[str, np.ndarray]:
        """The non-empty-by-definition parts: query, database, train (and val if any)."""
        out = {"query": self.query, "database": self.database, "train": self.train}
        if self.val is not None:
            out["val"] = self.val
        return out

    def counts(self) -> dict[str, int]:
        """Size of each part."""
        return {k: int(len(v)) for k, v in self.parts().items()}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per part: ``{"count": n, "per_class": [images of class c in the part, …]}``.

        Per-class counts are label-column sums (concept counts for multi-label data); they are
        computed when the split is made and saved with it.
        """
        out = {}
        for part, idx in self.parts().items():
            entry: dict[str, Any] = {"count": int(len(idx))}
            if self.class_counts is not None and part in self.class_counts:
                entry["per_class"] = list(self.class_counts[part])
            out[part] = entry
        return out

    def validate(self) -> None:
        """Indices in range and unique per part; query ∩ database = ∅; val ⊂ database."""
        for part, idx in self.parts().items():
            if idx.dtype != np.int64 or idx.ndim != 1:
                raise DataError(
                    f"split part '{part}' must be int64 [n], got {idx.dtype} {idx.shape}"
                )
            if len(idx) and (idx.min() < 0 or idx.max() >= self.n_items):
                raise DataError(f"split part '{part}' has indices outside 0..{self.n_items - 1}")
            if len(np.unique(idx)) != len(idx):
                raise DataError(f"split part '{part}' repeats indices")
        if np.intersect1d(self.query, self.database).size:
            raise DataError("split: query and database overlap")
        if self.val is not None and np.setdiff1d(self.val, self.database).size:
            raise DataError("split: val is not inside the database")


@dataclass(frozen=True)
class Protocol:
    """A named way to split a dataset, and its mAP cut-off (``topk=None``: @ALL)."""

    name: str
    topk: int | None
    split: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
    description: str
    options: tuple[str, ...] = ()


