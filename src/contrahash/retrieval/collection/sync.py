"""Following a collection's source folders (``index sync``: new, changed and deleted files)
and removing items (``index remove``); both commit through
:mod:`contrahash.retrieval.collection.writer`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.retrieval.collection.manifest import (
    FOLDER_KINDS,
    CollectionError,
    load_model,
    read_manifest,
    sweep,
)
from contrahash.retrieval.collection.writer import (
    Plan,
    commit,
    commit_removal,
    join,
    live_items,
    reachable,
)


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
    reachable(read_manifest(directory))
    ctx = join(device)
    progress = as_progress(progress)
    lock = DirectoryLock(directory, what="index", command=command) if ctx.is_main else (
        nullcontext())
    with lock:
        manifest = read_manifest(directory)
        if ctx.is_main:
            sweep(directory, keep={s["name"] for s in manifest["segments"]})
        roots = _folder_roots(manifest)
        if not roots:
            raise CollectionError(f"{directory}: none of its sources is a folder (index sync "
                                  "follows folders; add other sources with index add)")
        for root in roots:
            if not Path(root).is_dir():
                raise CollectionError(f"{directory}: its source folder {root} is gone (moved or "
                                      "unmounted?); nothing was changed")
        live = live_items(directory, manifest)
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
                _, model = load_model(directory, device)
            try:
                dataset = load_files(root, [p for p, _ in changed] + new, store_size=size)
            except NoReadableImages:  # files that pass a header check, then fail to decode
                out["unreadable"] += len(changed) + len(new)
                continue
            loaded = {p: j for j, p in enumerate(dataset.paths)}
            out["unreadable"] += len(changed) + len(new) - len(loaded)
            pairs = [(loaded[p], i) for p, i in changed if p in loaded]
            plan = Plan(np.asarray([r for r, _ in pairs], np.int64),
                         np.asarray([i for _, i in pairs], np.int64), pending)
            pending = ()
            if len(plan.rows) or plan.removed:  # changed files keep their ids
                manifest, change = commit(directory, manifest, model, dataset, root, plan,
                                           progress, ctx, allow_duplicates=True)
                out["encoded"] += change["encoded"]
                out["unreadable"] += len(change["unreadable"])
            fresh = np.asarray([loaded[p] for p in new if p in loaded], np.int64)
            if len(fresh):  # new files take new ids; content already present is not stored
                manifest, change = commit(directory, manifest, model, dataset, root,
                                           Plan(fresh, None), progress, ctx,
                                           allow_duplicates=False)
                out["added"] += change["encoded"]
                out["encoded"] += change["encoded"]
                out["duplicates"] += len(change["duplicates"])
                out["unreadable"] += len(change["unreadable"])
        if pending:
            commit_removal(directory, manifest, pending, ctx)
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


def remove_from_collection(directory: str | os.PathLike, *, ids: Sequence[int] = (),
                           paths: Sequence[str] = (), command: str | None = None
                           ) -> dict[str, Any]:
    """Remove items by id or by file path (never served again; other ids unchanged); an
    unknown id or path is an error and nothing is removed. Returns the manifest."""
    from contrahash.locks import DirectoryLock
    from contrahash.training.distributed import context

    directory = Path(directory)
    reachable(read_manifest(directory))
    if not ids and not paths:
        raise CollectionError("give the items to remove: --id N or --path FILE")
    with DirectoryLock(directory, what="index", command=command):
        manifest = read_manifest(directory)
        live = live_items(directory, manifest)
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
        manifest, _ = commit_removal(directory, manifest, chosen, context())
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

