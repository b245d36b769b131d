"""Writing a collection: the first build, ``index add``, and the one commit routine every
change goes through (scan, deduplicate, encode, write a segment, mirror it into an external
index backend, replace the manifest). :mod:`contrahash.retrieval.collection.sync` plans
``index sync`` and ``index remove`` on top of it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.io import sha256_file, write_json, write_npy, write_text
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.retrieval.backends import backend_of, check_record, open_index
from contrahash.retrieval.collection.manifest import (
    FOLDER_KINDS,
    FORMAT,
    MANIFEST,
    OWN_ENTRIES,
    THUMBNAIL_QUALITY,
    THUMBNAIL_SIZE,
    CollectionError,
    check_new_collection_dir,
    crash_point,
    load_model,
    now,
    read_manifest,
    stage_dir,
    sweep,
)


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
    backend = check_record(backend)
    ctx = join(device)
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


def join(device: str | None) -> Any:
    """This process's distributed context (several processes encode together)."""
    from contrahash.models.model import select_device
    from contrahash.training.distributed import init_from_env

    return init_from_env(select_device(device or "auto"))


def _build(run_dir: Path, data: str, out: Path, chosen: list[int], image_root: str | None,
           device: str | None, backend: dict[str, Any], labels: str, progress: Progress,
           ctx: Any, codes: dict[str, Any] | None = None) -> dict[str, Any]:
    dataset = load_source_of(data, image_root, labels, progress)  # a bad source fails before any write
    if ctx.is_main:  # no manifest yet: whatever is here is an interrupted build's leftover
        sweep(out)
        for leftover in ("model", "segments"):
            shutil.rmtree(out / leftover, ignore_errors=True)
        stage_dir(out / "model", lambda tmp: _copy_model(run_dir, tmp))
    ctx.barrier()
    cfg, model = load_model(out, device)
    check_model_fits(model, dataset, data)
    manifest = {
        "format": FORMAT,
        "created_at": now(),
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
    plan = Plan(rows=np.arange(len(dataset)), ids=None)
    known = None
    if codes is not None and codes.get("fingerprint") == dataset.fingerprint and all(
            k in codes["codes"] for k in chosen):
        known = codes["codes"]
    return commit(out, manifest, model, dataset, data, plan, progress, ctx,
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


def load_source_of(data: str, image_root: str | None, labels: str, progress: Progress) -> Any:
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
    manifest = reachable(read_manifest(directory))
    ctx = join(device)
    lock = DirectoryLock(directory, what="index", command=command) if ctx.is_main else (
        nullcontext())
    progress = as_progress(progress)
    with lock:
        manifest = read_manifest(directory)  # under the lock: the latest commit
        if ctx.is_main:
            sweep(directory, keep={s["name"] for s in manifest["segments"]})
        dataset = load_source_of(data, image_root, labels, progress)
        if not allow_duplicates:
            for seg in manifest["segments"]:
                if seg["fingerprint"] == dataset.fingerprint and seg.get("kind") not in FOLDER_KINDS:
                    raise CollectionError(
                        f"{data} is already in {directory} (segment {seg['name']}); pass "
                        "--allow-duplicates to add it again")
        _, model = load_model(directory, device)
        check_model_fits(model, dataset, data)
        plan = Plan(rows=np.arange(len(dataset)), ids=None)
        manifest, change = commit(directory, manifest, model, dataset, data, plan, progress,
                                   ctx, allow_duplicates=allow_duplicates, refuse_empty=True)
        return {**manifest, "last_change": change}


@dataclass
class Plan:
    """What one commit writes: ``rows`` of a dataset to store, under ``ids`` (None: new ids),
    and ids to drop."""

    rows: np.ndarray
    ids: np.ndarray | None
    removed: tuple[int, ...] = ()


def _live_hashes(directory: Path, manifest: dict[str, Any], skip: set[int]) -> dict[str, int]:
    """sha256 → id of the collection's live items (those in ``skip`` left out)."""
    live = live_items(directory, manifest)
    return {it["sha256"]: i for i, it in live.items() if it.get("sha256") and i not in skip}


def live_items(directory: Path, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """id → newest item row of every live item (the reader's rule, from items.jsonl only)."""
    removed = set(manifest.get("removed", []))
    items: dict[int, dict[str, Any]] = {}
    for seg in manifest["segments"]:
        path = directory / "segments" / seg["name"] / "items.jsonl"
        for line in path.read_text().splitlines():
            item = json.loads(line)
            items[int(item["id"])] = item
    return {i: it for i, it in items.items() if i not in removed}


def commit(directory: Path, manifest: dict[str, Any], model: Any, dataset: Any, data: str,
            plan: Plan, progress: Progress, ctx: Any, *, allow_duplicates: bool,
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
                         "class_names": list(dataset.class_names), "added_at": now()})
    removed = sorted(set(manifest.get("removed", [])) | set(int(i) for i in plan.removed))
    live_before = int(manifest["count"])
    replaced = 0 if plan.ids is None else len(ids)
    count = live_before + (len(ids) - replaced) - (len(removed) - len(manifest.get("removed", [])))
    manifest = {**manifest, "count": int(count), "next_id": int(next_id), "removed": removed,
                "generation": int(manifest.get("generation", 0)) + 1, "updated_at": now(),
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
        stage_dir(directory / "segments" / name, write)
        crash_point("segment-renamed")
    if backend_of(backend).external:  # deletes first: a re-run after a crash is idempotent
        mirror(backend, manifest["bits"], codes, ids, [int(i) for i in plan.removed])
        crash_point("milvus-applied")
    write_json(directory / MANIFEST, manifest)  # the commit point
    crash_point("manifest-written")
    ctx.barrier()
    return manifest, change


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



def commit_removal(directory: Path, manifest: dict[str, Any], removed: Sequence[int],
                    ctx: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Commit a change that only removes items (no segment is written)."""
    gone = sorted(set(manifest.get("removed", [])) | {int(i) for i in removed})
    fresh = len(gone) - len(manifest.get("removed", []))
    manifest = {**manifest, "count": int(manifest["count"]) - fresh, "removed": gone,
                "generation": int(manifest.get("generation", 0)) + 1, "updated_at": now()}
    if ctx.is_main:
        mirror(manifest["backend"], manifest["bits"], {}, np.zeros(0, np.int64),
               [int(i) for i in removed])
        write_json(directory / MANIFEST, manifest)
    ctx.barrier()
    return manifest, {"encoded": 0, "duplicates": [], "unreadable": []}



def _copy_model(run_dir: Path, target: Path) -> None:
    for name in ("config.yaml", "model.safetensors"):
        shutil.copyfile(run_dir / name, target / name)



def mirror(backend: dict[str, Any], bits: list[int], codes: dict[int, np.ndarray],
           ids: np.ndarray, removed: Sequence[int]) -> None:
    """Mirror one commit into an external backend: delete every id about to be written or
    removed (Milvus does not keep primary keys unique, and a re-run after a crash must not
    duplicate), then add the new codes. Nothing to do for an in-process backend."""
    if not backend_of(backend).external:
        return
    drop = sorted({int(i) for i in ids.tolist()} | {int(i) for i in removed})
    for k in bits:
        index = open_index(backend, k, create=True)
        try:
            if drop:
                index.remove(drop)
            if len(ids):
                index.add(codes[k], ids=ids)
        finally:
            index.close()


def reachable(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest``, after checking that its backend answers (before any write)."""
    backend_of(manifest["backend"]).check(manifest["backend"])
    return manifest
