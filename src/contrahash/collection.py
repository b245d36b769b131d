"""A searchable collection: a source's images encoded by a trained run, indexed, ready to serve.

``contrahash index build RUN --data SOURCE --out DIR`` writes one self-contained directory::

    DIR/manifest.json        format, the run (directory, run id, config hash), code lengths,
                             item count, backend, how queries are decoded, the segments
    DIR/model/               config.yaml + model.safetensors: everything that encodes a query
                             exactly as the database was encoded (backbone spec, weights,
                             method, resolution, precision, the test-time transform)
    DIR/segments/000000/     one per build or ``index add``, never rewritten:
        codes_<bits>.index   packed codes and item ids (the HammingIndex file format)
        items.jsonl          one line per item: id, name, path, source index, labels
        thumbnails.bin       every item's thumbnail (JPEG), concatenated in one file
        thumbnails.npy       their byte offsets [n + 1]

Adding images (``index add``) writes a new segment under a temporary name, renames it into
place, then replaces the manifest — the commit point, one atomic rename. An interrupted add
leaves the manifest, hence the collection, as it was; leftovers of it are swept by the next
writer. Ids keep growing: a new segment's ids start at the collection's count. One writer at
a time holds the directory's lock (:mod:`contrahash.locks`).

:class:`Collection` is the read side (``contrahash search DIR``, ``contrahash serve DIR``): it
loads the model and every segment once; :meth:`Collection.reload` swaps in a new snapshot
after an ``index add`` while searches in flight finish on the old one. An uploaded image is
decoded the way the collection's first source decoded its own files
(:func:`contrahash.data.images.decode_like_source`) and encoded by the same model, so a
collection image uploaded as its original file finds itself at Hamming distance 0.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.io import sha256_file, write_json, write_text
from contrahash.progress import Progress, ProgressCallback, as_progress

__all__ = [
    "FORMAT",
    "Collection",
    "CollectionError",
    "add_to_collection",
    "build_collection",
    "collection_info",
    "open_collection",
    "read_manifest",
]

FORMAT = "contrahash-collection/1"
MANIFEST = "manifest.json"
THUMBNAIL_SIZE = 128  # longest side, pixels
THUMBNAIL_QUALITY = 85
#: images encoded per chunk while building (features of one chunk in memory at a time)
CHUNK = 2048


class CollectionError(ValueError):
    """A collection directory is missing, damaged or asked for something it does not hold."""


# ----------------------------------------------------------------------------- writing
def build_collection(run_dir: str | os.PathLike, data: str, out: str | os.PathLike, *,
                     bits: Sequence[int] | None = None, image_root: str | None = None,
                     device: str | None = None, backend: dict[str, Any] | None = None,
                     progress: Progress | ProgressCallback | None = None,
                     command: str | None = None) -> dict[str, Any]:
    """Encode every image of ``data`` with the run in ``run_dir`` into a new collection
    ``out`` (code lengths ``bits``, default all of the run's); returns the manifest."""
    from contrahash.config import resolve_config
    from contrahash.locks import DirectoryLock

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise CollectionError(f"{run_dir} is not a run directory (no config.yaml)")
    if not (run_dir / "model.safetensors").is_file():
        raise CollectionError(f"{run_dir} has no model.safetensors: the run did not finish")
    run_bits = resolve_config(run_dir / "config.yaml").bits
    chosen = sorted(int(b) for b in (bits or run_bits))
    unknown = [b for b in chosen if b not in run_bits]
    if unknown:
        raise CollectionError(f"--bits {unknown}: the run {run_dir} has code lengths {run_bits}")
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a collection; add images with "
                              f"`contrahash index add {out} --data SOURCE`")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a directory")
    backend = _check_backend(backend)
    ctx = _join(device)
    lock = (DirectoryLock(out, what="index", create=True, command=command)
            if ctx.is_main else nullcontext())
    with lock:
        try:
            return _build(run_dir, data, out, chosen, image_root, device, backend,
                          as_progress(progress), ctx)
        except Exception:  # a failed build leaves nothing behind
            if ctx.is_main and not (out / MANIFEST).exists():
                for name in ("model", "segments"):
                    shutil.rmtree(out / name, ignore_errors=True)
            raise


def _join(device: str | None) -> Any:
    """This process's distributed context (several processes encode together)."""
    from contrahash.distributed import init_from_env
    from contrahash.model import select_device

    return init_from_env(select_device(device or "auto"))


def _build(run_dir: Path, data: str, out: Path, chosen: list[int], image_root: str | None,
           device: str | None, backend: dict[str, Any], progress: Progress,
           ctx: Any) -> dict[str, Any]:
    if ctx.is_main:  # no manifest yet: whatever is here is an interrupted build's leftover
        _sweep(out)
        for leftover in ("model", "segments"):
            shutil.rmtree(out / leftover, ignore_errors=True)
        _stage_dir(out / "model", lambda tmp: _copy_model(run_dir, tmp))
    ctx.barrier()
    cfg, model = _load_model(out, device)
    manifest = {
        "format": FORMAT,
        "created_at": _now(),
        "run": {"dir": str(run_dir.resolve()), "run_id": sha256_file(
            run_dir / "model.safetensors")[:16],
            "config_sha256": sha256_file(run_dir / "config.yaml"),
            "method": cfg.method, "backbone": cfg.backbone.name,
            "image_size": model.image_size, "precision": model.precision},
        "bits": chosen,
        "count": 0,
        "backend": backend,
        "thumbnail": {"size": THUMBNAIL_SIZE, "format": "JPEG", "quality": THUMBNAIL_QUALITY},
        "segments": [],
    }
    return _append_segment(out, manifest, model, data, image_root, progress, ctx)


def add_to_collection(directory: str | os.PathLike, data: str, *,
                      image_root: str | None = None, device: str | None = None,
                      allow_duplicates: bool = False,
                      progress: Progress | ProgressCallback | None = None,
                      command: str | None = None) -> dict[str, Any]:
    """Append the images of ``data`` to the collection (ids continue); returns the manifest."""
    from contrahash.locks import DirectoryLock

    directory = Path(directory)
    manifest = read_manifest(directory)
    ctx = _join(device)
    lock = DirectoryLock(directory, what="index", command=command) if ctx.is_main else (
        nullcontext())
    with lock:
        manifest = read_manifest(directory)  # under the lock: the latest commit
        if ctx.is_main:
            _sweep(directory, keep={s["name"] for s in manifest["segments"]})
        _, model = _load_model(directory, device)
        return _append_segment(directory, manifest, model, data, image_root,
                               as_progress(progress), ctx, allow_duplicates=allow_duplicates)


def _append_segment(directory: Path, manifest: dict[str, Any], model: Any, data: str,
                    image_root: str | None, progress: Progress, ctx: Any,
                    allow_duplicates: bool = False) -> dict[str, Any]:
    from contrahash.config import expand_source
    from contrahash.data import load_source
    from contrahash.encode import encode_dataset

    with progress.phase("data loading", None, unit="source", source=data):
        dataset = load_source(expand_source(data), image_root=image_root)
    if not allow_duplicates:
        for seg in manifest["segments"]:
            if seg["fingerprint"] == dataset.fingerprint:
                raise CollectionError(
                    f"{data} is already in {directory} (segment {seg['name']}, ids "
                    f"{seg['first_id']}..{seg['first_id'] + seg['count'] - 1}); pass "
                    "--allow-duplicates to add it again")
    first_id = int(manifest["count"])
    n = len(dataset)
    name = f"{len(manifest['segments']):06d}"
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    codes = encode_dataset(model, dataset.images, progress=progress)  # every process a share
    backend = manifest["backend"]
    segment = {"name": name, "first_id": first_id, "count": n, "source": str(data),
               "dataset": dataset.name, "fingerprint": dataset.fingerprint,
               "skipped_files": dataset.n_skipped, "decoding": dataset.decoding,
               "class_names": list(dataset.class_names), "added_at": _now()}
    manifest = {**manifest, "count": first_id + n, "updated_at": _now(),
                "segments": [*manifest["segments"], segment]}
    manifest.setdefault("query_decoding", dataset.decoding)
    if not ctx.is_main:  # rank 0 writes
        ctx.barrier()
        return manifest

    def write(tmp: Path) -> None:
        from contrahash.index import HammingIndex

        for k in manifest["bits"]:
            index = HammingIndex(k, backend="numpy")
            index.add(codes[k], ids=ids)
            index.save(tmp / f"codes_{k}.index")
        write_text(tmp / "items.jsonl", "".join(
            json.dumps(item) + "\n" for item in _items(dataset, ids)))
        _write_thumbnails(tmp, dataset, progress)

    _stage_dir(directory / "segments" / name, write)
    if backend["kind"] == "milvus":
        _milvus_add(backend, manifest["bits"], codes, ids)
    write_json(directory / MANIFEST, manifest)  # the commit point
    ctx.barrier()
    return manifest


def _items(dataset: Any, ids: np.ndarray) -> list[dict[str, Any]]:
    names = dataset.class_names
    labels = dataset.labels
    out = []
    for i, item_id in enumerate(ids):
        path = dataset.paths[i] if dataset.paths else None
        out.append({"id": int(item_id), "name": Path(path).name if path else
                    f"{dataset.name}[{i}]", "path": path, "source_index": i,
                    "labels": [names[c] for c in np.flatnonzero(labels[i])]})
    return out


def _write_thumbnails(folder: Path, dataset: Any, progress: Progress, chunk: int = 512) -> None:
    from PIL import Image

    offsets = [0]
    with open(folder / "thumbnails.bin", "wb") as f, progress.phase(
            "thumbnails", len(dataset)) as phase:
        for lo in range(0, len(dataset), chunk):
            block = np.asarray(dataset.images[np.arange(lo, min(lo + chunk, len(dataset)))])
            for img in block:
                pic = Image.fromarray(img)
                pic.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                buf = io.BytesIO()
                pic.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
                f.write(buf.getvalue())
                offsets.append(offsets[-1] + buf.tell())
            phase.advance(len(block))
        f.flush()
        os.fsync(f.fileno())
    np.save(folder / "thumbnails.npy", np.asarray(offsets, dtype=np.int64))


def _stage_dir(final: Path, fill: Any) -> None:
    """Fill a temporary sibling of ``final``, then rename it into place (all or nothing)."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sweep(directory: Path, keep: set[str] | None = None) -> None:
    """Remove what an interrupted writer left: temporary folders, uncommitted segments."""
    for parent in (directory, directory / "segments"):
        if parent.is_dir():
            for tmp in parent.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None and (directory / "segments").is_dir():
        for seg in (directory / "segments").iterdir():
            if seg.is_dir() and seg.name not in keep:
                shutil.rmtree(seg, ignore_errors=True)


def _copy_model(run_dir: Path, target: Path) -> None:
    for name in ("config.yaml", "model.safetensors"):
        shutil.copyfile(run_dir / name, target / name)


def _load_model(directory: Path, device: str | None) -> Any:
    from contrahash.model import load_trained

    return load_trained(directory / "model", device)


def _check_backend(backend: dict[str, Any] | None) -> dict[str, Any]:
    backend = dict(backend or {"kind": "faiss"})
    if backend["kind"] not in ("faiss", "milvus"):
        raise CollectionError(f"backend must be faiss or milvus, got {backend['kind']!r}")
    if backend["kind"] == "milvus" and not backend.get("uri"):
        raise CollectionError("--backend milvus needs --milvus-uri (a .db file or http://host:port)")
    if backend["kind"] == "milvus":
        backend.setdefault("collection", "contrahash")
    return backend


def _milvus_add(backend: dict[str, Any], bits: list[int], codes: dict[int, np.ndarray],
                ids: np.ndarray) -> None:
    from contrahash.milvus import MilvusIndex

    for k in bits:
        with MilvusIndex(backend["uri"], k, f"{backend['collection']}_{k}") as index:
            index.add(codes[k], ids=ids)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- reading
def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """A collection's manifest, checked; a clear error for anything else."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CollectionError(f"{directory} is not a directory (a collection is made by "
                              "`contrahash index build RUN --data SOURCE --out DIR`)")
    if not path.is_file():
        raise CollectionError(f"{directory} holds no {MANIFEST}: not a collection (or its "
                              "first build did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CollectionError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise CollectionError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}")
    return manifest


def collection_info(directory: str | os.PathLike) -> dict[str, Any]:
    """What ``contrahash index info`` prints: the manifest and the size on disk."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
    return {**manifest, "directory": str(directory), "bytes_on_disk": size}


@dataclass(frozen=True)
class _Snapshot:
    """Everything one version of the collection serves (replaced whole by a reload)."""

    manifest: dict[str, Any]
    stamp: str
    indexes: dict[int, Any]  # what searches run on: faiss in-process, or Milvus
    local: dict[int, Any]  # the codes in the directory (query by id reads them)
    items: list[dict[str, Any]]
    thumb_data: list[np.ndarray]
    thumb_offsets: list[np.ndarray]
    segment_first: np.ndarray


class Collection:
    """The read side of a collection directory (see the module docstring).

    Thread safety: :meth:`encode` runs on worker threads, one call at a time per model (a
    lock); searches read one immutable snapshot reference, which :meth:`reload` replaces.
    """

    def __init__(self, directory: str | os.PathLike, device: str | None = None,
                 backend: str = "auto") -> None:
        self.directory = Path(directory)
        self._backend = backend
        manifest = read_manifest(self.directory)
        self.cfg, self.model = _load_model(self.directory, device)
        self.model.method.eval()
        self._encode_lock = threading.Lock()
        self._snapshot = self._load(manifest)

    # -- loading --------------------------------------------------------------------------
    def _load(self, manifest: dict[str, Any]) -> _Snapshot:
        from contrahash.index import HammingIndex

        segments = manifest["segments"]
        items: list[dict[str, Any]] = []
        data, offsets = [], []
        per_bits: dict[int, list[Any]] = {k: [] for k in manifest["bits"]}
        for seg in segments:
            folder = self.directory / "segments" / seg["name"]
            if not folder.is_dir():
                raise CollectionError(f"{folder} is missing: the collection is damaged")
            for k in manifest["bits"]:
                per_bits[k].append(HammingIndex.load(folder / f"codes_{k}.index"))
            items += [json.loads(line) for line in
                      (folder / "items.jsonl").read_text().splitlines()]
            thumbs = folder / "thumbnails.bin"
            data.append(np.memmap(thumbs, dtype=np.uint8, mode="r") if thumbs.stat().st_size
                        else np.zeros(0, np.uint8))
            offsets.append(np.load(folder / "thumbnails.npy"))
        local: dict[int, Any] = {}
        for k, parts in per_bits.items():
            index = HammingIndex(k, backend=self._backend)
            for part in parts:
                index.add(part.packed_codes, ids=part.ids, packed=True)
            local[k] = index
        indexes = dict(local)
        if manifest["backend"]["kind"] == "milvus":
            indexes = self._milvus_indexes(manifest)
        if len(items) != manifest["count"]:
            raise CollectionError(f"{self.directory}: the manifest counts {manifest['count']} "
                                  f"items, the segments hold {len(items)}")
        first = np.asarray([s["first_id"] for s in segments], dtype=np.int64)
        stamp = f"{manifest.get('updated_at')}|{manifest['count']}|{len(segments)}"
        return _Snapshot(manifest, stamp, indexes, local, items, data, offsets, first)

    def _milvus_indexes(self, manifest: dict[str, Any]) -> dict[int, Any]:
        """The Milvus collections of ``manifest``: the connections already open are kept (a
        reload sees what ``index add`` inserted through them), the others opened."""
        from contrahash.milvus import MilvusIndex

        backend = manifest["backend"]
        previous = getattr(self, "_snapshot", None)
        opened = previous.indexes if previous is not None else {}
        indexes = {}
        for k in manifest["bits"]:
            name = f"{backend['collection']}_{k}"
            old = opened.get(k)
            if isinstance(old, MilvusIndex) and old.uri == backend["uri"] and old.collection == name:
                indexes[k] = old
            else:
                indexes[k] = MilvusIndex(backend["uri"], k, name, create=False)
        return indexes

    def close(self) -> None:
        """Release what searches hold outside the process (Milvus connections; an embedded
        Milvus Lite server stops with its last user). Idempotent; in-process faiss needs none."""
        snapshot = self._snapshot
        for bits, index in snapshot.indexes.items():
            if index is not snapshot.local.get(bits):  # a remote index (Milvus), not faiss
                index.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reload(self) -> bool:
        """Re-read the directory after an ``index add``; True when it changed."""
        manifest = read_manifest(self.directory)
        stamp = f"{manifest.get('updated_at')}|{manifest['count']}|{len(manifest['segments'])}"
        if stamp == self._snapshot.stamp:
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
        return len(self._snapshot.items)

    def info(self) -> dict[str, Any]:
        m = self._snapshot.manifest
        return {"count": m["count"], "bits": m["bits"], "run_id": m["run"]["run_id"],
                "method": m["run"]["method"], "backbone": m["run"]["backbone"],
                "created_at": m["created_at"], "updated_at": m.get("updated_at"),
                "segments": len(m["segments"]), "backend": m["backend"]["kind"]}

    def item(self, item_id: int):
        """The item with ``item_id`` (KeyError when there is none)."""
        from contrahash.serve.types import Item

        raw = self._item(item_id)
        return Item(id=raw["id"], name=raw["name"], path=raw["path"], labels=list(raw["labels"]))

    def _item(self, item_id: int) -> dict[str, Any]:
        items = self._snapshot.items
        item_id = int(item_id)
        if not 0 <= item_id < len(items):
            raise KeyError(f"no item {item_id} (ids are 0..{len(items) - 1})")
        return items[item_id]

    def thumbnail(self, item_id: int) -> bytes:
        """The item's thumbnail (JPEG bytes)."""
        snap = self._snapshot
        self._item(item_id)
        seg = int(np.searchsorted(snap.segment_first, int(item_id), side="right")) - 1
        row = int(item_id) - int(snap.segment_first[seg])
        lo, hi = snap.thumb_offsets[seg][row], snap.thumb_offsets[seg][row + 1]
        return bytes(snap.thumb_data[seg][lo:hi])

    def random_id(self) -> int:
        return random.randrange(len(self))

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

    def _check(self, k: int, bits: int) -> Any:
        if bits not in self._snapshot.indexes:
            raise ValueError(f"bits={bits}: the collection has code lengths {self.bits}")
        if not 1 <= int(k):
            raise ValueError(f"k must be >= 1, got {k}")
        return self._snapshot.indexes[bits]

    def search_codes(self, codes: np.ndarray, k: int, bits: int) -> list[list[Any]]:
        """The k nearest items of each ±1 query code, ranked by (distance, id)."""
        from contrahash.serve.types import Hit

        index = self._check(k, bits)
        kk = min(int(k), len(self))
        distances, ids = index.search(np.asarray(codes), kk)
        return [[Hit(int(i), int(d)) for d, i in zip(drow, irow, strict=True) if i >= 0]
                for drow, irow in zip(distances, ids, strict=True)]

    def codes_of(self, ids: Sequence[int], bits: int) -> np.ndarray:
        """Stored items' ±1 codes (ids are positions: they grow from 0 without gaps)."""
        from contrahash.hamming import unpack_codes

        self._check(1, bits)
        for i in ids:
            self._item(i)
        packed = self._snapshot.local[bits].packed_codes[np.asarray(ids, dtype=np.int64)]
        return unpack_codes(packed, bits)

    def search_ids(self, ids: list[int], k: int, bits: int) -> list[list[Any]]:
        """The k nearest items of stored items (each finds itself first, at distance 0)."""
        return self.search_codes(self.codes_of(ids, bits), k, bits)


def open_collection(directory: str | os.PathLike, device: str | None = None) -> Collection:
    """Open a collection directory for searching (``contrahash search``, ``serve``)."""
    return Collection(directory, device=device)


