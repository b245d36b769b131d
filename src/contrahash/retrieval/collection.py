"""A searchable collection: a source's images encoded by a trained run, indexed, ready to serve.

``contrahash index build RUN --data SOURCE --out DIR`` writes one self-contained directory::

    DIR/manifest.json        format, the run (directory, run id, config hash), code lengths,
                             live item count, next id, removed ids, backend, how queries are
                             decoded, the segments, a generation counter
    DIR/model/               config.yaml + model.safetensors: everything that encodes a query
                             exactly as the database was encoded (backbone spec, weights,
                             method, resolution, precision, the test-time transform)
    DIR/training/            (one-command builds only) the run that learnt the model
    DIR/segments/000000/     one per build, ``index add`` or ``index sync``, never rewritten:
        codes_<bits>.index   packed codes and item ids (the HammingIndex file format)
        items.jsonl          one line per item: id, name, path, album, labels, sha256, width,
                             height, file size and mtime
        thumbnails.bin       every item's thumbnail (JPEG, aspect kept), concatenated
        thumbnails.npy       their byte offsets [n + 1]
        perceptual.npy       every item's perceptual code (near-duplicate search)

Every change — ``index add``, ``sync``, ``remove`` — writes a new segment (if it encodes
anything) under a temporary name, renames it into place, then replaces the manifest: the
commit point, one atomic rename. An interrupted writer leaves the manifest, hence the
collection, as it was; its leftovers are swept by the next writer. Ids of kept items never
change: a new item takes the next id, an item whose file changed keeps its id and its newer
row (in a later segment) supersedes the older one, a removed item's id is listed in the
manifest's ``removed`` and never served again. One writer at a time holds the directory's
lock (:mod:`contrahash.locks`).

:class:`Collection` is the read side (``contrahash search DIR``, ``contrahash serve DIR``): it
loads the model and every segment once, keeping each id's newest row that is not removed;
:meth:`Collection.reload` swaps in a new snapshot after a change while searches in flight
finish on the old one. An uploaded image is
decoded the way the collection's first source decoded its own files
(:func:`contrahash.data.images.decode_like_source`) and encoded by the same model, so a
collection image uploaded as its original file finds itself at Hamming distance 0.
"""

from __future__ import annotations

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

from contrahash.io import sha256_file, write_json, write_npy, write_text
from contrahash.progress import Progress, ProgressCallback, as_progress

__all__ = [
    "FORMAT",
    "Collection",
    "CollectionError",
    "add_to_collection",
    "build_collection",
    "check_new_collection_dir",
    "collection_info",
    "open_collection",
    "read_manifest",
    "remove_from_collection",
    "sync_collection",
]

FORMAT = "contrahash-collection/1"
MANIFEST = "manifest.json"
THUMBNAIL_SIZE = 192  # longest side, pixels (the aspect ratio is kept)
THUMBNAIL_QUALITY = 85
#: what a collection directory may hold before its first commit: an interrupted build's
#: leftovers (a one-command build also keeps its training run there)
OWN_ENTRIES = frozenset({"model", "segments", "training", ".contrahash.lock"})
#: source kinds ``index sync`` rescans
FOLDER_KINDS = frozenset({"photo-folder", "flat-folder", "folder", "file"})
#: images encoded per chunk while building (features of one chunk in memory at a time)
CHUNK = 2048


class CollectionError(ValueError):
    """A collection directory is missing, damaged or asked for something it does not hold."""


# ----------------------------------------------------------------------------- writing
def check_new_collection_dir(out: str | os.PathLike, *, allowed: frozenset[str] = OWN_ENTRIES
                             ) -> Path:
    """``--out`` of a new collection: a new or empty directory, or the leftovers of an
    interrupted build of one; anything else is refused before any work starts (nothing there
    is touched)."""
    out = Path(out)
    if (out / MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a collection; add images with "
                              f"`contrahash index add {out} --data SOURCE` or follow its "
                              f"folders with `contrahash index sync {out}`")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a directory")
    if out.is_dir():
        if (out / "config.yaml").exists() or (out / "results.json").exists():
            raise CollectionError(f"--out {out} is a run directory; give a new or empty "
                                  "directory for the collection")
        foreign = sorted(p.name for p in out.iterdir()
                         if p.name not in allowed and not p.name.startswith(".tmp-"))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                               if len(foreign) > 3 else "")
            raise CollectionError(f"--out {out} is not empty (it holds {shown}); a collection "
                                  "goes into a new or empty directory")
    return out


def build_collection(run_dir: str | os.PathLike, data: str, out: str | os.PathLike, *,
                     bits: Sequence[int] | None = None, image_root: str | None = None,
                     device: str | None = None, backend: dict[str, Any] | None = None,
                     labels: str = "albums",
                     progress: Progress | ProgressCallback | None = None,
                     command: str | None = None, codes: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Encode every image of ``data`` with the run in ``run_dir`` into a new collection
    ``out`` (code lengths ``bits``, default all of the run's); returns the manifest.
    ``labels="folders"`` reads a folder's sub-folders as classes (default: albums).
    ``codes`` (``{"fingerprint": …, "codes": {bits: [n, bits]}}``) are the run's own codes of
    every image of the same dataset: used instead of encoding again when the fingerprints
    agree."""
    from contrahash.config import resolve_config
    from contrahash.locks import DirectoryLock

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise CollectionError(f"{run_dir} is not a run directory (no config.yaml)")
    if not (run_dir / "model.safetensors").is_file():
        raise CollectionError(f"{run_dir} has no model.safetensors: the run did not finish")
    if out.resolve() == run_dir.resolve():
        raise CollectionError(f"--out {out} is the run directory; give a new or empty one")
    run_bits = resolve_config(run_dir / "config.yaml").bits
    chosen = sorted(int(b) for b in (bits or run_bits))
    unknown = [b for b in chosen if b not in run_bits]
    if unknown:
        raise CollectionError(f"--bits {unknown}: the run {run_dir} has code lengths {run_bits}")
    inside = out.resolve() in run_dir.resolve().parents or run_dir.resolve().parent == out.resolve()
    check_new_collection_dir(out, allowed=OWN_ENTRIES if inside else OWN_ENTRIES - {"training"})
    backend = _check_backend(backend)
    ctx = _join(device)
    lock = (DirectoryLock(out, what="index", create=True, command=command)
            if ctx.is_main else nullcontext())
    with lock:
        try:
            return _build(run_dir, data, out, chosen, image_root, device, backend, labels,
                          as_progress(progress), ctx, codes)
        except Exception:  # a failed build leaves nothing behind
            if ctx.is_main and not (out / MANIFEST).exists():
                for name in ("model", "segments"):
                    shutil.rmtree(out / name, ignore_errors=True)
            raise


def _join(device: str | None) -> Any:
    """This process's distributed context (several processes encode together)."""
    from contrahash.models.model import select_device
    from contrahash.training.distributed import init_from_env

    return init_from_env(select_device(device or "auto"))


def _build(run_dir: Path, data: str, out: Path, chosen: list[int], image_root: str | None,
           device: str | None, backend: dict[str, Any], labels: str, progress: Progress,
           ctx: Any, codes: dict[str, Any] | None = None) -> dict[str, Any]:
    dataset = _load(data, image_root, labels, progress)  # a bad source fails before any write
    if ctx.is_main:  # no manifest yet: whatever is here is an interrupted build's leftover
        _sweep(out)
        for leftover in ("model", "segments"):
            shutil.rmtree(out / leftover, ignore_errors=True)
        _stage_dir(out / "model", lambda tmp: _copy_model(run_dir, tmp))
    ctx.barrier()
    cfg, model = _load_model(out, device)
    check_model_fits(model, dataset, data)
    manifest = {
        "format": FORMAT,
        "created_at": _now(),
        "run": {"dir": str(run_dir.resolve()), "run_id": sha256_file(
            run_dir / "model.safetensors")[:16],
            "config_sha256": sha256_file(run_dir / "config.yaml"),
            "method": cfg.method, "backbone": cfg.backbone.name,
            "image_size": model.image_size, "precision": model.precision,
            "engine": model.engine_info()},
        "bits": chosen,
        "count": 0,
        "next_id": 0,
        "removed": [],
        "generation": 0,
        "backend": backend,
        "thumbnail": {"size": THUMBNAIL_SIZE, "format": "JPEG", "quality": THUMBNAIL_QUALITY},
        "segments": [],
    }
    plan = _Plan(rows=np.arange(len(dataset)), ids=None)
    known = None
    if codes is not None and codes.get("fingerprint") == dataset.fingerprint and all(
            k in codes["codes"] for k in chosen):
        known = codes["codes"]
    return _commit(out, manifest, model, dataset, data, plan, progress, ctx,
                   allow_duplicates=True, known_codes=known)[0]


def check_model_fits(model: Any, dataset: Any, data: str) -> None:
    """Refuse a model whose input cannot represent the source's images (a 16 px ``pixels``
    model would index photos as 16 px smudges)."""
    h, w = _typical_size(dataset)
    size = int(model.image_size)
    if size < 64 and min(h, w) >= 4 * size:
        raise CollectionError(
            f"the model sees {size}×{size} pixels, but {data} holds {w}×{h} images: they would "
            f"be indexed as {size} px thumbnails; use a model on a real backbone (`contrahash "
            f"index build --data {data} --out DIR` learns one from the images themselves)")


def _typical_size(dataset: Any, sample: int = 25) -> tuple[int, int]:
    """(H, W) of a source's typical image: the median of some files' headers (the stored size
    when the images have no files)."""
    from contrahash.data.images import DECODE_ERRORS, probe_image

    if dataset.root is None or not dataset.paths:
        return dataset.images.image_size
    step = max(1, len(dataset.paths) // sample)
    sizes = []
    for path in dataset.paths[::step][:sample]:
        try:
            sizes.append(probe_image(path))
        except (FileNotFoundError, *DECODE_ERRORS):
            continue
    if not sizes:
        return dataset.images.image_size
    h, w = np.median(np.asarray(sizes), axis=0)
    return int(h), int(w)


def _load(data: str, image_root: str | None, labels: str, progress: Progress) -> Any:
    from contrahash.config import expand_source
    from contrahash.data import load_source

    source = expand_source(data)
    path = Path(source).expanduser()
    if path.exists():  # items remember absolute paths: serve and sync run from anywhere
        source = str(path.resolve())
    with progress.phase("data loading", None, unit="source", source=data):
        return load_source(source, image_root=image_root, labels=labels)


def add_to_collection(directory: str | os.PathLike, data: str, *,
                      image_root: str | None = None, device: str | None = None,
                      allow_duplicates: bool = False, labels: str = "albums",
                      progress: Progress | ProgressCallback | None = None,
                      command: str | None = None) -> dict[str, Any]:
    """Append the images of ``data`` to the collection (new ids); returns the manifest with
    ``last_change`` saying what happened. A file whose content is already in the collection
    is reported and not stored again (``allow_duplicates`` stores it anyway)."""
    from contrahash.locks import DirectoryLock

    directory = Path(directory)
    manifest = _reachable(read_manifest(directory))
    ctx = _join(device)
    lock = DirectoryLock(directory, what="index", command=command) if ctx.is_main else (
        nullcontext())
    progress = as_progress(progress)
    with lock:
        manifest = read_manifest(directory)  # under the lock: the latest commit
        if ctx.is_main:
            _sweep(directory, keep={s["name"] for s in manifest["segments"]})
        dataset = _load(data, image_root, labels, progress)
        if not allow_duplicates:
            for seg in manifest["segments"]:
                if seg["fingerprint"] == dataset.fingerprint and seg.get("kind") not in FOLDER_KINDS:
                    raise CollectionError(
                        f"{data} is already in {directory} (segment {seg['name']}); pass "
                        "--allow-duplicates to add it again")
        _, model = _load_model(directory, device)
        check_model_fits(model, dataset, data)
        plan = _Plan(rows=np.arange(len(dataset)), ids=None)
        manifest, change = _commit(directory, manifest, model, dataset, data, plan, progress,
                                   ctx, allow_duplicates=allow_duplicates, refuse_empty=True)
        return {**manifest, "last_change": change}


@dataclass
class _Plan:
    """What one commit writes: ``rows`` of a dataset to store, under ``ids`` (None: new ids),
    and ids to drop."""

    rows: np.ndarray
    ids: np.ndarray | None
    removed: tuple[int, ...] = ()


def _live_hashes(directory: Path, manifest: dict[str, Any], skip: set[int]) -> dict[str, int]:
    """sha256 → id of the collection's live items (those in ``skip`` left out)."""
    live = _live_items(directory, manifest)
    return {it["sha256"]: i for i, it in live.items() if it.get("sha256") and i not in skip}


def _live_items(directory: Path, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """id → newest item row of every live item (the reader's rule, from items.jsonl only)."""
    removed = set(manifest.get("removed", []))
    items: dict[int, dict[str, Any]] = {}
    for seg in manifest["segments"]:
        path = directory / "segments" / seg["name"] / "items.jsonl"
        for line in path.read_text().splitlines():
            item = json.loads(line)
            items[int(item["id"])] = item
    return {i: it for i, it in items.items() if i not in removed}


def _commit(directory: Path, manifest: dict[str, Any], model: Any, dataset: Any, data: str,
            plan: _Plan, progress: Progress, ctx: Any, *, allow_duplicates: bool,
            refuse_empty: bool = False, known_codes: dict[int, np.ndarray] | None = None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scan, deduplicate, encode and write ``plan`` as one new segment, then the manifest
    (the commit point). Returns (manifest, what changed). ``known_codes`` (per code length,
    one row per dataset row) are used instead of encoding."""
    from contrahash.library.scan import ItemFacts, scan_items
    from contrahash.retrieval.encode import encode_dataset

    facts = scan_items(dataset, plan.rows, thumbnail_size=THUMBNAIL_SIZE,
                       quality=THUMBNAIL_QUALITY, progress=progress)
    keep, unreadable, duplicates = [], [], []
    seen = {} if allow_duplicates else _live_hashes(
        directory, manifest, set(int(i) for i in (plan.ids if plan.ids is not None else [])))
    for j, fact in enumerate(facts):
        if not isinstance(fact, ItemFacts):
            unreadable.append((_path_of(dataset, plan.rows[j]), fact))
            continue
        if fact.sha256 in seen:
            duplicates.append((_path_of(dataset, plan.rows[j]), seen[fact.sha256]))
            continue
        if not allow_duplicates:
            seen[fact.sha256] = -1 - j  # within this batch: the first copy is kept
        keep.append(j)
    duplicates = [(p, i if i >= 0 else None) for p, i in duplicates]
    rows = plan.rows[keep]
    if refuse_empty and not len(rows) and not plan.removed:
        why = (f"all {len(duplicates)} are already in the collection (same content)"
               if duplicates else "none of its images could be read")
        raise CollectionError(f"nothing to add from {data}: {why}")
    first_id = int(manifest.get("next_id", manifest["count"]))
    if plan.ids is None:
        ids = np.arange(first_id, first_id + len(rows), dtype=np.int64)
        next_id = first_id + len(rows)
    else:
        ids = np.asarray(plan.ids, dtype=np.int64)[keep]
        next_id = first_id
    change = {"encoded": int(len(rows)), "duplicates": [
        {"path": p, "same_as": i} for p, i in duplicates], "unreadable": [
        {"path": p, "reason": r} for p, r in unreadable]}
    if known_codes is not None:
        codes = {k: np.ascontiguousarray(known_codes[k][rows]) for k in manifest["bits"]}
    elif len(rows):
        codes = encode_dataset(model, dataset.images, rows, progress=progress)
    else:
        codes = {k: np.zeros((0, k), np.int8) for k in manifest["bits"]}
    segments = list(manifest["segments"])
    backend = manifest["backend"]
    name = _next_segment_name(segments)
    if len(rows):
        segments.append({"name": name, "first_id": int(ids.min()), "count": int(len(rows)),
                         "source": str(data), "root": dataset.root, "kind": _kind(dataset),
                         "dataset": dataset.name, "fingerprint": dataset.fingerprint,
                         "skipped_files": dataset.n_skipped + len(unreadable),
                         "decoding": dataset.decoding,
                         "class_names": list(dataset.class_names), "added_at": _now()})
    removed = sorted(set(manifest.get("removed", [])) | set(int(i) for i in plan.removed))
    live_before = int(manifest["count"])
    replaced = 0 if plan.ids is None else len(ids)
    count = live_before + (len(ids) - replaced) - (len(removed) - len(manifest.get("removed", [])))
    manifest = {**manifest, "count": int(count), "next_id": int(next_id), "removed": removed,
                "generation": int(manifest.get("generation", 0)) + 1, "updated_at": _now(),
                "segments": segments}
    manifest.setdefault("query_decoding", dataset.decoding)
    if not ctx.is_main:  # rank 0 writes
        ctx.barrier()
        return manifest, change

    def write(tmp: Path) -> None:
        from contrahash.retrieval.index import HammingIndex

        for k in manifest["bits"]:
            index = HammingIndex(k, backend="numpy")
            index.add(codes[k], ids=ids)
            index.save(tmp / f"codes_{k}.index")
        kept = [facts[j] for j in keep]
        write_text(tmp / "items.jsonl", "".join(
            json.dumps(item) + "\n" for item in _items(dataset, rows, ids, kept)))
        _write_thumbnails(tmp, [f.thumbnail for f in kept])
        write_npy(tmp / "perceptual.npy", np.stack([f.perceptual for f in kept]).astype(np.uint8)
                  if kept else np.zeros((0, 8), np.uint8))

    if len(rows):
        _stage_dir(directory / "segments" / name, write)
        crash_point("segment-renamed")
    if backend["kind"] == "milvus":  # deletes first: a re-run after a crash is idempotent
        _milvus_apply(backend, manifest["bits"], codes, ids,
                      [int(i) for i in plan.removed])
        crash_point("milvus-applied")
    write_json(directory / MANIFEST, manifest)  # the commit point
    crash_point("manifest-written")
    ctx.barrier()
    return manifest, change


#: where ``CONTRAHASH_CRASH_AT`` may kill the process (the reliability drills' fault points)
CRASH_POINTS = ("segment-filled", "segment-renamed", "milvus-applied", "manifest-written")


def crash_point(name: str) -> None:
    """``kill -9`` of this process at a named point of a commit when ``CONTRAHASH_CRASH_AT``
    names it — the drills of ``tests/test_photo_library.py`` cut a sync exactly where a
    crash hurts most (a filled segment not yet renamed, a segment not yet committed, one
    commit of a two-commit sync done). Nothing happens otherwise."""
    if os.environ.get("CONTRAHASH_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _next_segment_name(segments: list[dict[str, Any]]) -> str:
    used = [int(s["name"]) for s in segments if s["name"].isdigit()]
    return f"{(max(used) + 1) if used else 0:06d}"


def _kind(dataset: Any) -> str:
    """How a segment's source is laid out (``index sync`` rescans folder kinds)."""
    if dataset.root is None:
        return "archive"
    if dataset.albums is not None:
        return "photo-folder"
    return "folder" if dataset.class_names else "flat-folder"


def _path_of(dataset: Any, row: int) -> str:
    return dataset.paths[int(row)] if dataset.paths else f"{dataset.name}[{int(row)}]"


def _items(dataset: Any, rows: np.ndarray, ids: np.ndarray, facts: list[Any]
           ) -> list[dict[str, Any]]:
    names = dataset.class_names
    labels = dataset.labels
    out = []
    for j, (row, item_id) in enumerate(zip(rows.tolist(), ids.tolist(), strict=True)):
        path = dataset.paths[row] if dataset.paths else None
        fact = facts[j]
        out.append({"id": int(item_id), "name": Path(path).name if path else
                    f"{dataset.name}[{row}]", "path": path, "source_index": int(row),
                    "album": dataset.albums[row] if dataset.albums is not None else None,
                    "labels": [names[c] for c in np.flatnonzero(labels[row])],
                    "sha256": fact.sha256, "width": fact.width, "height": fact.height,
                    "size_bytes": fact.size_bytes, "mtime_ns": fact.mtime_ns})
    return out


def _write_thumbnails(folder: Path, thumbnails: list[bytes]) -> None:
    offsets = np.zeros(len(thumbnails) + 1, dtype=np.int64)
    with open(folder / "thumbnails.bin", "wb") as f:
        for i, data in enumerate(thumbnails):
            f.write(data)
            offsets[i + 1] = offsets[i] + len(data)
        f.flush()
        os.fsync(f.fileno())
    np.save(folder / "thumbnails.npy", offsets)


# ----------------------------------------------------------------------------- sync, remove
def sync_collection(directory: str | os.PathLike, *, device: str | None = None,
                    progress: Progress | ProgressCallback | None = None,
                    command: str | None = None) -> dict[str, Any]:
    """Make the collection follow its source folders: add new files, remove deleted ones,
    re-encode changed ones (by content hash: a touched but identical file is unchanged).

    Returns ``{"added", "removed", "changed", "unchanged", "duplicates", "unreadable",
    "encoded"}`` (counts). Nothing is written when nothing changed; a source folder that is
    gone is an error and nothing is written.
    """
    from contrahash.data.sources import NoReadableImages, load_files, walk_image_files
    from contrahash.library.scan import content_hash
    from contrahash.locks import DirectoryLock

    directory = Path(directory)
    _reachable(read_manifest(directory))
    ctx = _join(device)
    progress = as_progress(progress)
    lock = DirectoryLock(directory, what="index", command=command) if ctx.is_main else (
        nullcontext())
    with lock:
        manifest = read_manifest(directory)
        if ctx.is_main:
            _sweep(directory, keep={s["name"] for s in manifest["segments"]})
        roots = _folder_roots(manifest)
        if not roots:
            raise CollectionError(f"{directory}: none of its sources is a folder (index sync "
                                  "follows folders; add other sources with index add)")
        for root in roots:
            if not Path(root).is_dir():
                raise CollectionError(f"{directory}: its source folder {root} is gone (moved or "
                                      "unmounted?); nothing was changed")
        live = _live_items(directory, manifest)
        by_path = {it["path"]: i for i, it in live.items() if it.get("path")}
        seen_paths: set[str] = set()
        work: dict[str, tuple[list[tuple[str, int]], list[str]]] = {}
        out = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0, "duplicates": 0,
               "unreadable": 0, "encoded": 0}
        with progress.phase("rescanning folders", None, unit="folder"):
            for root in roots:
                changed, new = work.setdefault(root, ([], []))
                for f in walk_image_files(Path(root)):
                    path = str(f)
                    if path in seen_paths:  # a folder nested in another source folder
                        continue
                    seen_paths.add(path)
                    item_id = by_path.get(path)
                    if item_id is None:
                        if _readable(path):
                            new.append(path)
                        else:
                            out["unreadable"] += 1
                        continue
                    item = live[item_id]
                    st = f.stat()
                    if (st.st_size, st.st_mtime_ns) == (item.get("size_bytes"),
                                                        item.get("mtime_ns")):
                        out["unchanged"] += 1
                    elif content_hash(f) == item.get("sha256"):
                        out["unchanged"] += 1  # touched, same bytes
                    else:
                        changed.append((path, item_id))
        removed = sorted(i for p, i in by_path.items()
                         if _under(p, roots) and p not in seen_paths)
        out["removed"] = len(removed)
        out["changed"] = sum(len(c) for c, _ in work.values())
        if not (removed or any(c or n for c, n in work.values())):
            return out
        model = None
        pending = tuple(removed)
        size = (manifest.get("query_decoding") or {}).get("size")
        for root, (changed, new) in work.items():
            if not (changed or new):
                continue
            if model is None:
                _, model = _load_model(directory, device)
            try:
                dataset = load_files(root, [p for p, _ in changed] + new, store_size=size)
            except NoReadableImages:  # files that pass a header check, then fail to decode
                out["unreadable"] += len(changed) + len(new)
                continue
            loaded = {p: j for j, p in enumerate(dataset.paths)}
            out["unreadable"] += len(changed) + len(new) - len(loaded)
            pairs = [(loaded[p], i) for p, i in changed if p in loaded]
            plan = _Plan(np.asarray([r for r, _ in pairs], np.int64),
                         np.asarray([i for _, i in pairs], np.int64), pending)
            pending = ()
            if len(plan.rows) or plan.removed:  # changed files keep their ids
                manifest, change = _commit(directory, manifest, model, dataset, root, plan,
                                           progress, ctx, allow_duplicates=True)
                out["encoded"] += change["encoded"]
                out["unreadable"] += len(change["unreadable"])
            fresh = np.asarray([loaded[p] for p in new if p in loaded], np.int64)
            if len(fresh):  # new files take new ids; content already present is not stored
                manifest, change = _commit(directory, manifest, model, dataset, root,
                                           _Plan(fresh, None), progress, ctx,
                                           allow_duplicates=False)
                out["added"] += change["encoded"]
                out["encoded"] += change["encoded"]
                out["duplicates"] += len(change["duplicates"])
                out["unreadable"] += len(change["unreadable"])
        if pending:
            _commit_removal(directory, manifest, pending, ctx)
        return out


def _readable(path: str) -> bool:
    """A cheap header check of a new file (junk files are counted, never encoded)."""
    from contrahash.data.images import DECODE_ERRORS, MissingHeifSupport, probe_image

    try:
        probe_image(path)
    except MissingHeifSupport:
        return True  # loading it says which extra is missing
    except (FileNotFoundError, *DECODE_ERRORS):
        return False
    return True


def _commit_removal(directory: Path, manifest: dict[str, Any], removed: Sequence[int],
                    ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Commit a change that only removes items (no segment is written)."""
    gone = sorted(set(manifest.get("removed", [])) | {int(i) for i in removed})
    fresh = len(gone) - len(manifest.get("removed", []))
    manifest = {**manifest, "count": int(manifest["count"]) - fresh, "removed": gone,
                "generation": int(manifest.get("generation", 0)) + 1, "updated_at": _now()}
    if ctx.is_main:
        if manifest["backend"]["kind"] == "milvus":
            _milvus_apply(manifest["backend"], manifest["bits"], {}, np.zeros(0, np.int64),
                          [int(i) for i in removed])
        write_json(directory / MANIFEST, manifest)
    ctx.barrier()
    return manifest, {"encoded": 0, "duplicates": [], "unreadable": []}


def remove_from_collection(directory: str | os.PathLike, *, ids: Sequence[int] = (),
                           paths: Sequence[str] = (), command: str | None = None
                           ) -> dict[str, Any]:
    """Remove items by id or by file path (never served again; other ids unchanged); an
    unknown id or path is an error and nothing is removed. Returns the manifest."""
    from contrahash.locks import DirectoryLock
    from contrahash.training.distributed import context

    directory = Path(directory)
    _reachable(read_manifest(directory))
    if not ids and not paths:
        raise CollectionError("give the items to remove: --id N or --path FILE")
    with DirectoryLock(directory, what="index", command=command):
        manifest = read_manifest(directory)
        live = _live_items(directory, manifest)
        by_path = {str(Path(it["path"]).resolve()): i for i, it in live.items()
                   if it.get("path")}
        chosen: list[int] = []
        for i in ids:
            if int(i) not in live:
                gone = int(i) in set(manifest.get("removed", []))
                raise CollectionError(f"--id {i}: " + ("already removed from " if gone else
                                      "no such item in ") + f"{directory}")
            chosen.append(int(i))
        for p in paths:
            key = str(Path(p).expanduser().resolve())
            if key not in by_path:
                raise CollectionError(f"--path {p}: no item of {directory} has this file")
            chosen.append(by_path[key])
        manifest, _ = _commit_removal(directory, manifest, chosen, context())
        return manifest


def _folder_roots(manifest: dict[str, Any]) -> list[str]:
    roots: list[str] = []
    for seg in manifest["segments"]:
        root = seg.get("root")
        if seg.get("kind") in FOLDER_KINDS and root and seg.get("kind") != "file" and (
                root not in roots):
            roots.append(root)
    return roots


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


# ----------------------------------------------------------------------------- helpers
def _stage_dir(final: Path, fill: Any) -> None:
    """Fill a temporary sibling of ``final``, then rename it into place (all or nothing)."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        crash_point("segment-filled")
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
    """The collection's model; once it has a manifest, on the engine that encoded it (a query
    or an added photo is encoded like the items already there)."""
    from contrahash.models.model import load_trained

    cfg, model = load_trained(directory / "model", device)
    if (directory / MANIFEST).is_file() and model.engine is None:
        recorded = (read_manifest(directory)["run"].get("engine") or {}).get("name")
        if recorded:
            model.engine = recorded
    return cfg, model


def _check_backend(backend: dict[str, Any] | None) -> dict[str, Any]:
    backend = dict(backend or {"kind": "faiss"})
    if backend["kind"] not in ("faiss", "milvus"):
        raise CollectionError(f"backend must be faiss or milvus, got {backend['kind']!r}")
    if backend["kind"] == "milvus" and not backend.get("uri"):
        raise CollectionError("--backend milvus needs --milvus-uri (a .db file or http://host:port)")
    if backend["kind"] == "milvus":
        from contrahash.retrieval.milvus import check_backend, index_options

        backend.setdefault("collection", "contrahash")
        options = index_options(backend)  # unreachable server / bad options: before any write
        check_backend(backend["uri"], **options)
        backend.update(index=options["index_type"], nlist=options["nlist"],
                       nprobe=options["nprobe"])
    return backend


def _reachable(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest``, after checking that its Milvus server answers (before any write)."""
    if manifest["backend"]["kind"] == "milvus":
        from contrahash.retrieval.milvus import check_backend, index_options

        check_backend(manifest["backend"]["uri"], **index_options(manifest["backend"]))
    return manifest


def _milvus_apply(backend: dict[str, Any], bits: list[int], codes: dict[int, np.ndarray],
                  ids: np.ndarray, removed: Sequence[int]) -> None:
    """Mirror one commit in Milvus: delete every id about to be written or removed (Milvus
    does not keep primary keys unique, and a re-run after a crash must not duplicate), then
    insert."""
    from contrahash.retrieval.milvus import MilvusIndex, index_options

    drop = sorted({int(i) for i in ids.tolist()} | {int(i) for i in removed})
    for k in bits:
        with MilvusIndex(backend["uri"], k, f"{backend['collection']}_{k}",
                         **index_options(backend)) as index:
            if drop:
                index.remove(drop)
            if len(ids):
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
    local: dict[int, Any]  # the live codes from the directory, sorted by id (query by id)
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
        from contrahash.retrieval.index import HammingIndex

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
        local: dict[int, Any] = {}
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
        indexes = dict(local)
        if manifest["backend"]["kind"] == "milvus":
            indexes = self._milvus_indexes(manifest)
        if len(items) != manifest["count"]:
            raise CollectionError(f"{self.directory}: the manifest counts {manifest['count']} "
                                  f"items, the segments hold {len(items)} live ones")
        return _Snapshot(manifest, _stamp(manifest), indexes, local, ids, items, where, data,
                         offsets, percep, has_code)

    def _milvus_indexes(self, manifest: dict[str, Any]) -> dict[int, Any]:
        """The Milvus collections of ``manifest``: the connections already open are kept (a
        reload sees what ``index add`` inserted through them), the others opened."""
        from contrahash.retrieval.milvus import MilvusIndex, index_options

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
                indexes[k] = MilvusIndex(backend["uri"], k, name, create=False,
                                         **index_options(backend))
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
        """The item with ``item_id`` (KeyError when there is none, or it was removed)."""
        from contrahash.serve.types import Item

        raw = self._item(item_id)
        return Item(id=raw["id"], name=raw["name"], path=raw["path"], labels=list(raw["labels"]),
                    album=raw.get("album"), sha256=raw.get("sha256"), width=raw.get("width"),
                    height=raw.get("height"))

    def _item(self, item_id: int) -> dict[str, Any]:
        try:
            return self._snapshot.items[int(item_id)]
        except KeyError:
            raise KeyError(f"no item {item_id} in the collection") from None

    def original_path(self, item_id: int) -> Path:
        """The file an item was indexed from (KeyError for an unknown or removed id, or an
        item that has no file)."""
        path = self._item(item_id).get("path")
        if not path or not Path(path).is_file():
            raise KeyError(f"item {item_id} has no original file on this machine")
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
            raise KeyError("the collection is empty")
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


