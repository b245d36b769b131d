"""Reading a collection: :class:`Collection` loads the model and every segment once, keeps
each id's newest row that is not removed, and searches through the
:class:`~contrahash.retrieval.search_index.SearchIndex` its manifest's backend opens
(:func:`contrahash.retrieval.backends.open_index`); :meth:`Collection.reload` swaps in a new
snapshot after a change while searches in flight finish on the old one.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contrahash.retrieval.backends import backend_of, open_index
from contrahash.retrieval.collection.manifest import (
    CollectionError,
    load_model,
    read_manifest,
)
from contrahash.retrieval.index import HammingIndex
from contrahash.retrieval.search_index import SearchIndex

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class _Snapshot:
    """Everything one version of the collection serves (replaced whole by a reload)."""

    manifest: dict[str, Any]
    stamp: str
    indexes: dict[int, SearchIndex]  # what searches run on, opened by the manifest's backend
    local: dict[int, HammingIndex]  # the live codes from the directory, sorted by id
    ids: np.ndarray  # live ids, sorted
    items: dict[int, dict[str, Any]]  # live id -> its item row
    where: dict[int, tuple[int, int]]  # live id -> (segment position, row in the segment)
    thumb_data: list[np.ndarray]
    thumb_offsets: list[np.ndarray]
    perceptual: np.ndarray  # packed perceptual codes of ``ids``, in the same order
    has_perceptual: np.ndarray  # which of ``ids`` have one (older segments may not)


def _stamp(manifest: dict[str, Any]) -> str:
    return (f"{manifest.get('updated_at')}|{manifest.get('generation', 0)}|{manifest['count']}|"
            f"{len(manifest['segments'])}")


class Collection:
    """The read side of a collection directory (see :mod:`contrahash.retrieval.collection`).

    Thread safety: :meth:`encode` runs on worker threads, one call at a time per model (a
    lock); searches read one immutable snapshot reference, which :meth:`reload` replaces.
    """

    def __init__(self, directory: str | os.PathLike, device: str | None = None,
                 backend: str = "auto") -> None:
        self.directory = Path(directory)
        self._backend = backend
        manifest = read_manifest(self.directory)
        self.cfg, self.model = load_model(self.directory, device)
        self.model.method.eval()
        self._encode_lock = threading.Lock()
        self._snapshot = self._load(manifest)

    # -- loading --------------------------------------------------------------------------
    def _load(self, manifest: dict[str, Any]) -> _Snapshot:
        segments = manifest["segments"]
        removed = np.asarray(sorted(manifest.get("removed", [])), dtype=np.int64)
        rows_items: list[list[dict[str, Any]]] = []
        data, offsets, perceptual = [], [], []
        packed: dict[int, list[np.ndarray]] = {k: [] for k in manifest["bits"]}
        seg_ids = []
        for seg in segments:
            folder = self.directory / "segments" / seg["name"]
            if not folder.is_dir():
                raise CollectionError(f"{folder} is missing: the collection is damaged")
            for k in manifest["bits"]:
                part = HammingIndex.load(folder / f"codes_{k}.index")
                packed[k].append(part.packed_codes)
                if k == manifest["bits"][0]:
                    seg_ids.append(part.ids)
            rows_items.append([json.loads(line) for line in
                               (folder / "items.jsonl").read_text().splitlines()])
            thumbs = folder / "thumbnails.bin"
            data.append(np.memmap(thumbs, dtype=np.uint8, mode="r") if thumbs.stat().st_size
                        else np.zeros(0, np.uint8))
            offsets.append(np.load(folder / "thumbnails.npy"))
            pfile = folder / "perceptual.npy"
            perceptual.append(np.load(pfile) if pfile.is_file() else
                              np.zeros((len(seg_ids[-1]), 0), np.uint8))
        # every row's (id, segment, row); an id's newest row wins, removed ids are dropped
        all_ids = np.concatenate(seg_ids) if seg_ids else np.zeros(0, np.int64)
        seg_of = np.concatenate([np.full(len(x), i) for i, x in enumerate(seg_ids)]) if seg_ids \
            else np.zeros(0, np.int64)
        row_of = np.concatenate([np.arange(len(x)) for x in seg_ids]) if seg_ids \
            else np.zeros(0, np.int64)
        flat = np.arange(len(all_ids))
        rev_ids = all_ids[::-1]
        uniq, first_rev = np.unique(rev_ids, return_index=True)  # sorted ids, newest row
        newest = flat[::-1][first_rev]
        live = ~np.isin(uniq, removed)
        ids, newest = uniq[live], newest[live]
        where = {int(i): (int(seg_of[j]), int(row_of[j])) for i, j in zip(
            ids.tolist(), newest.tolist(), strict=True)}
        items = {i: rows_items[s][r] for i, (s, r) in where.items()}
        local: dict[int, HammingIndex] = {}
        for k, parts in packed.items():
            codes = np.concatenate(parts) if parts else np.zeros((0, (k + 7) // 8), np.uint8)
            index = HammingIndex(k, backend=self._backend)
            index.add(codes[newest], ids=ids, packed=True)  # insertion order = id order
            local[k] = index
        width = max((p.shape[1] for p in perceptual), default=0)
        percep = (np.concatenate([p if p.shape[1] == width else
                                  np.zeros((len(p), width), np.uint8) for p in perceptual])[newest]
                  if perceptual else np.zeros((0, 0), np.uint8))
        has_code = (np.concatenate([np.full(len(p), p.shape[1] == width and width > 0)
                                    for p in perceptual])[newest]
                    if perceptual else np.zeros(0, bool))  # segments written before the codes
        indexes = self._open_indexes(manifest, local)
        if len(items) != manifest["count"]:
            raise CollectionError(f"{self.directory}: the manifest counts {manifest['count']} "
                                  f"items, the segments hold {len(items)} live ones")
        return _Snapshot(manifest, _stamp(manifest), indexes, local, ids, items, where, data,
                         offsets, percep, has_code)

    def _open_indexes(self, manifest: dict[str, Any], local: dict[int, SearchIndex]
                      ) -> dict[int, SearchIndex]:
        """What searches run on, per code length, opened by the manifest's backend. An
        external backend's indexes already open are kept while its record is unchanged (a
        reload sees what ``index add`` wrote through them); the others are opened."""
        record = manifest["backend"]
        previous = getattr(self, "_snapshot", None)
        kept: dict[int, SearchIndex] = {}
        if (previous is not None and backend_of(record).external
                and previous.manifest["backend"] == record):
            kept = previous.indexes
        return {k: kept[k] if k in kept else open_index(record, k, local[k])
                for k in manifest["bits"]}

    def close(self) -> None:
        """Release what searches hold outside the process (an external backend's connections;
        an embedded Milvus Lite server stops with its last user). Idempotent."""
        for index in self._snapshot.indexes.values():
            index.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload(self) -> bool:
        """Re-read the directory after an ``index add``/``sync``/``remove``; True when it
        changed."""
        manifest = read_manifest(self.directory)
        if _stamp(manifest) == self._snapshot.stamp:
            return False
        self._snapshot = self._load(manifest)
        return True

    # -- what the service and the CLI ask ----------------------------------------------
    @property
    def bits(self) -> list[int]:
        return list(self._snapshot.manifest["bits"])

    @property
    def default_bits(self) -> int:
        return max(self.bits)

    def __len__(self) -> int:
        return len(self._snapshot.ids)

    def live_ids(self) -> np.ndarray:
        """Ids of every item the collection serves, sorted."""
        return self._snapshot.ids.copy()

    def info(self) -> dict[str, Any]:
        m = self._snapshot.manifest
        return {"count": m["count"], "bits": m["bits"], "run_id": m["run"]["run_id"],
                "method": m["run"]["method"], "backbone": m["run"]["backbone"],
                "created_at": m["created_at"], "updated_at": m.get("updated_at"),
                "segments": len(m["segments"]), "backend": m["backend"]["kind"]}

    def item(self, item_id: int):
        """The item with ``item_id`` (:class:`~contrahash.serve.types.UnknownItemError` when
        there is none, or it was removed)."""
        from contrahash.serve.types import Item

        raw = self._item(item_id)
        return Item(id=raw["id"], name=raw["name"], path=raw["path"], labels=list(raw["labels"]),
                    album=raw.get("album"), sha256=raw.get("sha256"), width=raw.get("width"),
                    height=raw.get("height"))

    def _item(self, item_id: int) -> dict[str, Any]:
        from contrahash.serve.types import UnknownItemError

        try:
            return self._snapshot.items[int(item_id)]
        except KeyError:
            raise UnknownItemError(item_id) from None

    def original_path(self, item_id: int) -> Path:
        """The file an item was indexed from (``UnknownItemError`` for an unknown or removed
        id, ``FileNotFoundError`` for an item that has no file here)."""
        path = self._item(item_id).get("path")
        if not path or not Path(path).is_file():
            raise FileNotFoundError(f"item {item_id} has no original file on this machine")
        return Path(path)

    def thumbnail(self, item_id: int) -> bytes:
        """The item's thumbnail (JPEG bytes)."""
        snap = self._snapshot
        self._item(item_id)
        seg, row = snap.where[int(item_id)]
        lo, hi = snap.thumb_offsets[seg][row], snap.thumb_offsets[seg][row + 1]
        return bytes(snap.thumb_data[seg][lo:hi])

    def perceptual_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(live ids, their packed perceptual codes ``uint8 [n, bytes]``) for near-duplicate
        search — the items that have one (segments written before perceptual codes existed
        have none and are left out, never matched as all-zero codes)."""
        snap = self._snapshot
        keep = snap.has_perceptual
        return snap.ids[keep], snap.perceptual[keep]

    def random_id(self) -> int:
        ids = self._snapshot.ids
        if not len(ids):
            from contrahash.serve.types import UnknownItemError

            raise UnknownItemError(None, "the collection is empty")
        return int(ids[random.randrange(len(ids))])

    def decode_image(self, data: bytes) -> np.ndarray:
        """An uploaded file → uint8 [H, W, 3], decoded like the collection's first source."""
        from contrahash.data.images import decode_like_source
        from contrahash.serve.types import InvalidImageError

        try:
            return decode_like_source(data, self._snapshot.manifest.get("query_decoding"))
        except ValueError as exc:
            raise InvalidImageError(str(exc)) from None

    def encode(self, images: list[np.ndarray]) -> dict[int, np.ndarray]:
        """±1 int8 codes of decoded images, exactly as the collection's items were encoded."""
        with self._encode_lock:
            return self.model.encode_images(images)

    def prepare_query(self, pixels: np.ndarray) -> torch.Tensor:
        """The encoder's input of one decoded image (resized, normalised): CPU work that needs
        no lock, done on the caller's thread."""
        return self.model.prepare_images([pixels])

    def encode_prepared(self, prepared: list[torch.Tensor]) -> dict[int, np.ndarray]:
        """Codes of :meth:`prepare_query` results, encoded as one batch: the codes
        :meth:`encode` gives for the same images."""
        import torch

        x = torch.cat(prepared)
        with self._encode_lock:
            return self.model.encode_prepared(x)

    def _check(self, k: int, bits: int) -> Any:
        if bits not in self._snapshot.indexes:
            raise ValueError(f"bits={bits}: the collection has code lengths {self.bits}")
        if not 1 <= int(k):
            raise ValueError(f"k must be >= 1, got {k}")
        return self._snapshot.indexes[bits]

    def search_codes(self, codes: np.ndarray, k: int, bits: int) -> list[list[Any]]:
        """The k nearest items of each ±1 query code, ranked by (distance, id); removed items
        never appear."""
        from contrahash.serve.types import Hit

        snap = self._snapshot
        index = self._check(k, bits)
        kk = min(int(k), len(snap.ids))
        if kk == 0:
            return [[] for _ in range(len(np.asarray(codes)))]
        distances, ids = index.search(np.asarray(codes), kk)
        return [[Hit(int(i), int(d)) for d, i in zip(drow, irow, strict=True)
                 if i >= 0 and int(i) in snap.items]
                for drow, irow in zip(distances, ids, strict=True)]

    def codes_of(self, ids: Sequence[int], bits: int) -> np.ndarray:
        """Stored items' ±1 codes."""
        from contrahash.retrieval.hamming import unpack_codes

        self._check(1, bits)
        snap = self._snapshot
        for i in ids:
            self._item(i)
        rows = np.searchsorted(snap.ids, np.asarray(ids, dtype=np.int64))
        packed = snap.local[bits].packed_codes[rows]
        return unpack_codes(packed, bits)

    def search_ids(self, ids: list[int], k: int, bits: int) -> list[list[Any]]:
        """The k nearest items of stored items (each finds itself first, at distance 0)."""
        return self.search_codes(self.codes_of(ids, bits), k, bits)


def open_collection(directory: str | os.PathLike, device: str | None = None) -> Collection:
    """Open a collection directory for searching (``contrahash search``, ``serve``)."""
    return Collection(directory, device=device)

