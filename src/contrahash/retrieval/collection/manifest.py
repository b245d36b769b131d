"""A collection directory's format and its commit rules: the manifest (read, checked,
summarised), the constants of the layout, staging a folder and sweeping an interrupted
writer's leftovers, the crash points of the reliability drills, and the model a collection
encodes with. The layout itself is described in :mod:`contrahash.retrieval.collection`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

FORMAT = "contrahash-collection/1"
MANIFEST = "manifest.json"
THUMBNAIL_SIZE = 192  # longest side, pixels (the aspect ratio is kept)
THUMBNAIL_QUALITY = 85
#: what a collection directory may hold before its first commit: an interrupted build's
#: leftovers (a one-command build also keeps its training run there)
OWN_ENTRIES = frozenset({"model", "segments", "training", ".contrahash.lock"})
#: source kinds ``index sync`` rescans
FOLDER_KINDS = frozenset({"photo-folder", "flat-folder", "folder", "file"})


class CollectionError(ValueError):
    """A collection directory is missing, damaged or asked for something it does not hold."""


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


#: where ``CONTRAHASH_CRASH_AT`` may kill the process (the reliability drills' fault points;
#: ``milvus-applied``, named when Milvus was the one external backend: after the mirror)
CRASH_POINTS = ("segment-filled", "segment-renamed", "milvus-applied", "manifest-written")


def crash_point(name: str) -> None:
    """``kill -9`` of this process at a named point of a commit when ``CONTRAHASH_CRASH_AT``
    names it — the drills of ``tests/test_photo_library.py`` cut a sync exactly where a
    crash hurts most (a filled segment not yet renamed, a segment not yet committed, one
    commit of a two-commit sync done). Nothing happens otherwise."""
    if os.environ.get("CONTRAHASH_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def stage_dir(final: Path, fill: Any) -> None:
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


def sweep(directory: Path, keep: set[str] | None = None) -> None:
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


def load_model(directory: Path, device: str | None) -> Any:
    """The collection's model; once it has a manifest, on the engine that encoded it (a query
    or an added photo is encoded like the items already there)."""
    from contrahash.models.model import load_trained

    cfg, model = load_trained(directory / "model", device)
    if (directory / MANIFEST).is_file() and model.engine is None:
        recorded = (read_manifest(directory)["run"].get("engine") or {}).get("name")
        if recorded:
            model.engine = recorded
    return cfg, model


def now() -> str:
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
