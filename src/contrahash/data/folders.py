"""Sources made of image files: photo and class folders, list files and single files —
walking them (system files skipped), probing and decoding each file once, and storing the
result in memory or lazily (see the table in :mod:`contrahash.data.sources`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrahash.data.dataset import ImageDataset, one_hot
from contrahash.data.errors import DataError
from contrahash.data.images import (
    DECODE_ERRORS,
    HEIF_HINT,
    HEIF_SUFFIXES,
    LazyImages,
    MissingHeifSupport,
    TensorImages,
    decode_image,
    default_workers,
    describe_error,
    is_hidden,
    probe_image,
    resize_tensor_images,
)

log = logging.getLogger(__name__)


class NoReadableImages(DataError):
    """Files were found, but none of them is a readable image."""

#: folder/list sources with more images than this load lazily
LAZY_THRESHOLD = 20_000
#: ... and so do those whose in-memory tensor would be larger than this many bytes
MEMORY_BUDGET = 4 << 30
#: side length images are resized to when a source needs one common size
DEFAULT_STORE_SIZE = 256
#: images of one common size keep it in memory only up to this side length (photos are
#: stored at DEFAULT_STORE_SIZE: the model sees 224 px, 12 MP in memory would be waste)
MAX_NATIVE_SIDE = 512
#: how a folder's sub-folders are read: "albums" (a photo library, no labels) or "folders"
#: (class folders: a labelled dataset)
FOLDER_LABELS = ("albums", "folders")
#: files that operating systems and photo tools leave in folders: never data, never reported
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r", "ehthumbs.db", "ehthumbs_vista.db"})
SYSTEM_FOLDERS = frozenset({"@eadir", "__macosx", "$recycle.bin", "system volume information"})
#: top-level folder names that mark a ``ROOT/<split>/<class>/<file>`` tree
SPLIT_NAMES = frozenset(
    "train training test testing val valid validation dev database db query queries "
    "gallery retrieval trainval".split()
)
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
#: file name endings read as one image when given as a source
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", *HEIF_SUFFIXES})


# --- image folders --------------------------------------------------------------------------


@dataclass
class _Entry:
    path: str  # as opened
    rel: str  # relative to the root (fingerprint, messages)


def is_system_file(name: str) -> bool:
    """Hidden and system files that are never data (see the module docstring)."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def _is_system_folder(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FOLDERS


def walk_image_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` at any depth, sorted, without hidden and system files."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_system_folder(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_system_file(f))
    return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not _is_system_folder(p.name)),
        key=lambda p: p.name,
    )


def _is_split_layout(top: list[Path]) -> bool:
    if not all(d.name.lower() in SPLIT_NAMES for d in top):
        return False
    return all(p.is_dir() for d in top for p in d.iterdir() if not is_hidden(p))


def load_image_folder(
    root: str | os.PathLike,
    *,
    store_size: int | None = None,
    workers: int | None = None,
    lazy: bool | None = None,
    labels: str = "albums",
) -> ImageDataset:
    """An image folder: a photo library (``labels="albums"``, the default) or class folders
    (``labels="folders"``).

    As a photo library, every file at every depth is tried as an image; its folder relative to
    ``ROOT`` is its album (``dataset.albums``; "" at the top); there are no labels. As class
    folders: ``ROOT/<class>/<file>`` (files may sit deeper) or ``ROOT/<split>/<class>/<file>``;
    the split layout is recognised when every top-level folder has a split-like name
    (:data:`SPLIT_NAMES`) and holds only folders; ``groups`` then maps each split folder's name
    to its members. Class names are the (union of) class folder names holding files, sorted;
    files directly in ``ROOT`` are skipped and reported (they have no class). A folder without
    sub-folders is an unlabelled flat folder either way. Hidden and system files are ignored;
    every other file is tried as an image.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    if labels not in FOLDER_LABELS:
        raise DataError(f"labels must be one of {', '.join(FOLDER_LABELS)}, got {labels!r}")
    top = _subdirs(root)
    if not top or labels == "albums":  # a photo library: every file, its folder its album
        files = walk_image_files(root)
        if not files:
            raise DataError(f"{root}: no images in the folder or its sub-folders")
        entries = [_Entry(str(f), f.relative_to(root).as_posix()) for f in files]
        kind = "flat-folder" if not top else "photo-folder"
        return _load_files(root.name or str(root), kind, str(root), entries,
                           np.zeros((len(entries), 0), np.uint8), [], None,
                           store_size=store_size, workers=workers, lazy=lazy, albums=True)
    split_layout = _is_split_layout(top)
    layout: list[tuple[str | None, str, Path]] = []  # (split, class, folder)
    if split_layout:
        for split_dir in top:
            layout.extend((split_dir.name, c.name, c) for c in _subdirs(split_dir))
    else:
        layout.extend((None, c.name, c) for c in top)
    found = [(split, cls, walk_image_files(folder)) for split, cls, folder in layout]
    class_names = sorted({c for _, c, files in found if files})
    if not class_names:
        raise DataError(f"{root}: no files under the class folders; empty dataset")
    index = {c: i for i, c in enumerate(class_names)}
    entries: list[_Entry] = []
    class_ids: list[int] = []
    splits: list[str] = []
    for split, cls, files in found:
        for f in files:
            entries.append(_Entry(str(f), f.relative_to(root).as_posix()))
            class_ids.append(index[cls])
            splits.append(split or "")
    loose = [f for f in sorted(root.iterdir()) if f.is_file() and not is_system_file(f.name)]
    labels_arr = one_hot(np.asarray(class_ids, dtype=np.int64), len(class_names))
    groups = None
    if split_layout:
        split_arr = np.asarray(splits)
        groups = {s.name: split_arr == s.name for s in top}
    return _load_files(
        root.name or str(root),
        "folder",
        str(root),
        entries,
        labels_arr,
        class_names,
        groups,
        store_size=store_size,
        workers=workers,
        lazy=lazy,
        extra_skipped=[(str(f), "not in a class folder (labels=folders)") for f in loose],
    )


def load_files(root: str | os.PathLike, paths: Sequence[str | os.PathLike], *,
               store_size: int | None = None, workers: int | None = None) -> ImageDataset:
    """Some files of a photo folder ``root`` (what ``index sync`` found new or changed), as
    an unlabelled dataset whose albums are the files' folders relative to ``root``. Stored
    at ``store_size`` squared when given (the collection's own geometry)."""
    root = Path(root)
    entries = []
    for p in paths:
        f = Path(p)
        try:
            rel = f.relative_to(root).as_posix()
        except ValueError:
            raise DataError(f"{f} is not under {root}") from None
        entries.append(_Entry(str(f), rel))
    if not entries:
        raise DataError(f"{root}: no files given")
    return _load_files(root.name or str(root), "photo-folder", str(root), entries,
                       np.zeros((len(entries), 0), np.uint8), [], None, store_size=store_size,
                       workers=workers, lazy=False if len(entries) <= LAZY_THRESHOLD else None,
                       albums=True)


def load_image_file(path: str | os.PathLike, *, store_size: int | None = None) -> ImageDataset:
    """One image file as an unlabelled dataset of one image."""
    path = Path(path).expanduser()
    entries = [_Entry(str(path), path.name)]
    return _load_files(path.name, "file", str(path.parent), entries, np.zeros((1, 0), np.uint8),
                       [], None, store_size=store_size, workers=1, lazy=False)


# --- list files -----------------------------------------------------------------------------


def load_list_file(
    list_path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    store_size: int | None = None,
    workers: int | None = None,
    lazy: bool | None = None,
) -> ImageDataset:
    """A list file: ``relative/path.jpg l1 l2 … lC`` per line, 0/1 multi-hot labels.

    This is the NUS-WIDE / MS-COCO / MIRFlickr format. Paths are relative to ``image_root``
    (default: the list file's folder) and may not contain spaces; blank lines and lines
    starting with ``#`` are ignored. ``C`` comes from the first entry. Class names come from
    ``class_names`` (a list or a file), else from a side file ``<stem>_classes.txt``,
    ``<stem>.classes.txt``, ``classes.txt`` or ``class_names.txt`` next to the list (one name
    per line), else ``c0 … c{C-1}``. A listed file that is missing or unreadable is skipped.
    """
    list_path = Path(list_path).expanduser()
    if not list_path.is_file():
        raise DataError(f"list file {list_path} does not exist")
    root = Path(image_root).expanduser() if image_root is not None else list_path.parent
    if not root.is_dir():
        raise DataError(f"image root {root} (for {list_path}) does not exist")
    rels, labels = parse_list_file(list_path)
    names = _list_class_names(list_path, class_names, labels.shape[1])
    entries = [_Entry(str(root / r), r) for r in rels]
    return _load_files(
        list_path.stem,
        "list",
        str(root),
        entries,
        labels,
        names,
        None,
        store_size=store_size,
        workers=workers,
        lazy=lazy,
    )


def parse_list_file(list_path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Read ``path l1 … lC`` lines → (paths, ``uint8 [N, C]``); DataError names file:line."""
    list_path = Path(list_path)
    rels: list[str] = []
    rows: list[str] = []
    n_labels = None
    first_line = 0
    try:
        lines = list_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_path}: cannot read the list file ({exc})") from exc
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if n_labels is None:
            n_labels, first_line = len(tokens) - 1, lineno
        if len(tokens) - 1 != n_labels:
            raise DataError(
                f"{list_path}:{lineno}: wrong number of labels: found {len(tokens) - 1}, "
                f"expected {n_labels} (as on line {first_line}); paths may not contain spaces"
            )
        flags = "".join(tokens[1:])
        if len(flags) != n_labels or flags.strip("01"):
            bad = next(t for t in tokens[1:] if t not in ("0", "1"))
            col = tokens[1:].index(bad) + 1
            raise DataError(f"{list_path}:{lineno}: label {col} is {bad!r}; labels must be 0 or 1")
        rels.append(tokens[0])
        rows.append(flags)
    if not rels:
        raise DataError(f"{list_path}: no entries; empty dataset")
    labels = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8).reshape(
        len(rows), n_labels
    ) - ord("0")
    return rels, labels.astype(np.uint8)


def _list_class_names(
    list_path: Path, class_names: Sequence[str] | str | os.PathLike | None, c: int
) -> list[str]:
    source: Path | None = None
    if c == 0:  # a list of paths without labels
        return []
    if class_names is None:
        stem, folder = list_path.stem, list_path.parent
        for cand in (
            f"{stem}_classes.txt",
            f"{stem}.classes.txt",
            "classes.txt",
            "class_names.txt",
        ):
            if (folder / cand).is_file() and folder / cand != list_path:
                source = folder / cand
                break
        if source is None:
            return [f"c{i}" for i in range(c)]
    elif isinstance(class_names, str | os.PathLike):
        source = Path(class_names)
        if not source.is_file():
            raise DataError(f"class-names file {source} does not exist")
    if source is not None:
        names = [s.strip() for s in source.read_text(encoding="utf-8").splitlines() if s.strip()]
        where = str(source)
    else:
        names = [str(s) for s in class_names]
        where = "class_names"
    if len(names) != c:
        raise DataError(f"{where}: {len(names)} class names, but {list_path} has {c} label columns")
    if len(set(names)) != len(names):
        raise DataError(f"{where}: class names repeat")
    return names


# --- shared: check, decode, store -----------------------------------------------------------


def _probe(entry: _Entry, verify: bool):
    try:
        st = os.stat(entry.path)
        hw = probe_image(entry.path, verify=verify)
        return hw, st.st_size, st.st_mtime_ns
    except FileNotFoundError:
        return "file not found"
    except MissingHeifSupport:
        return _NO_HEIF
    except DECODE_ERRORS as exc:
        return describe_error(exc)


_NO_HEIF = f"a HEIC/HEIF photo: {HEIF_HINT}"


def _load_files(
    name: str,
    kind: str,
    root: str,
    entries: list[_Entry],
    labels: np.ndarray,
    class_names: list[str],
    groups: dict[str, np.ndarray] | None,
    *,
    store_size: int | None,
    workers: int | None,
    lazy: bool | None,
    albums: bool = False,
    extra_skipped: Sequence[tuple[str, str]] = (),
) -> ImageDataset:
    workers = default_workers() if workers is None else max(1, int(workers))
    n_files = len(entries)
    verify = lazy is True or (lazy is None and n_files > LAZY_THRESHOLD)
    with ThreadPoolExecutor(max(2, 2 * workers)) as pool:
        probes = list(pool.map(lambda e: _probe(e, verify), entries, chunksize=64))
    heif = [e.rel for e, p in zip(entries, probes, strict=True) if p is _NO_HEIF]
    if heif:  # photos the user certainly wants: refuse rather than skip them
        more = f" and {len(heif) - 1} more" if len(heif) > 1 else ""
        raise DataError(f"{root}: {len(heif)} HEIC/HEIF photo(s) ({heif[0]}{more}) cannot be "
                        f"read: {HEIF_HINT}")
    skipped = [(e.path, p) for e, p in zip(entries, probes, strict=True) if isinstance(p, str)]
    skipped += list(extra_skipped)
    n_files += len(extra_skipped)
    ok = np.array([not isinstance(p, str) for p in probes], dtype=bool)
    if not ok.any():
        warn_skipped(skipped, n_files, root)
        raise NoReadableImages(
            f"{root}: none of the {n_files} files is a readable image; empty dataset"
            + (" (check image_root)" if kind == "list" else "")
        )
    sizes = {probes[i][0] for i in np.flatnonzero(ok)}
    n_ok = int(ok.sum())
    native = len(sizes) == 1 and max(next(iter(sizes))) <= MAX_NATIVE_SIDE
    if native and (store_size is None or sizes == {(store_size, store_size)}):
        target = None
        h, w = next(iter(sizes))
    else:
        target = store_size or DEFAULT_STORE_SIZE
        h = w = target
    if lazy is None:
        lazy = n_ok > LAZY_THRESHOLD or n_ok * h * w * 3 > MEMORY_BUDGET
    keep = np.flatnonzero(ok)
    if lazy:
        store = LazyImages(
            [entries[i].path for i in keep], size=store_size or DEFAULT_STORE_SIZE, workers=workers
        )
        geometry = f"lazy{store.size}"
        decoding = {"decoder": "pil", "resize": "pil", "size": store.size}
    else:
        images, failed = _decode_all([entries[i].path for i in keep], (h, w), target, workers)
        for j in sorted(failed):
            skipped.append((entries[keep[j]].path, failed[j]))
        if failed:
            good = np.array([j not in failed for j in range(len(keep))], dtype=bool)
            keep, images = keep[good], images[good]
        store = TensorImages(torch.from_numpy(images))
        geometry = f"mem{h}x{w}"
        decoding = {"decoder": "pil", "resize": "pil" if target else None, "size": target}
    warn_skipped(skipped, n_files, root)
    if len(keep) == 0:
        raise NoReadableImages(f"{root}: none of the {n_files} files decodes; empty dataset")
    labels = labels[keep]
    if groups is not None:
        groups = {k: v[keep] for k, v in groups.items()}
    digest = hashlib.sha256(f"{kind}\0{geometry}\0{chr(31).join(class_names)}\0".encode())
    for i in keep:
        _, size, mtime = probes[i]
        digest.update(f"{entries[i].rel}\0{size}\0{mtime}\n".encode())
    digest.update(labels.tobytes())
    for k in sorted(groups or {}):
        digest.update(k.encode() + groups[k].tobytes())
    return ImageDataset(
        images=store,
        labels=labels,
        class_names=class_names,
        name=name,
        fingerprint=digest.hexdigest(),
        skipped=skipped,
        groups=groups,
        paths=[entries[i].path for i in keep],
        decoding=decoding,
        albums=[_album(entries[i].rel) for i in keep] if albums else None,
        root=root,
    )


def _album(rel: str) -> str:
    """A file's album: its folder relative to the source's root ("" at the top)."""
    head, _, _ = rel.rpartition("/")
    return head


def _decode_all(
    paths: list[str], hw: tuple[int, int], target: int | None, workers: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode into one ``[n, h, w, 3]`` array with a thread pool; ``{row: reason}`` failures."""
    out = np.zeros((len(paths), *hw, 3), dtype=np.uint8)
    failed: dict[int, str] = {}

    def work(lo_hi):
        lo, hi = lo_hi
        for j in range(lo, hi):
            try:
                img = decode_image(paths[j], target)
            except DECODE_ERRORS as exc:
                failed[j] = describe_error(exc)
                continue
            if img.shape[:2] != hw:  # header and pixels disagree
                failed[j] = f"decoded size {img.shape[0]}x{img.shape[1]} != header size {hw}"
                continue
            out[j] = img

    step = max(1, -(-len(paths) // (workers * 8)))
    ranges = [(lo, min(len(paths), lo + step)) for lo in range(0, len(paths), step)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, ranges))
    return out, failed


def warn_skipped(skipped: list[tuple[str, str]], total: int, where: str) -> None:
    if not skipped:
        return
    for path, reason in skipped:
        log.debug("skipped %s: %s", path, reason)
    shown = "; ".join(f"{Path(p).name} ({r})" for p, r in skipped[:5])
    more = f"; … {len(skipped) - 5} more" if len(skipped) > 5 else ""
    warnings.warn(
        f"{where}: skipped {len(skipped)} of {total} files that are not readable images: "
        f"{shown}{more}",
        UserWarning,
        stacklevel=3,
    )


def packed_decoding(store_size: int | None) -> dict:
    """How the packed loader turns one file into its stored image."""
    from contrahash.data.packed import _tv_decoder

    return {"decoder": "torchvision-jpeg" if _tv_decoder() is not None else "pil",
            "resize": "torch" if store_size else None, "size": store_size}


def tensor_store(images: torch.Tensor, store_size: int | None) -> TensorImages:
    if store_size is not None and tuple(images.shape[1:3]) != (store_size, store_size):
        images = resize_tensor_images(images, int(store_size))
    return TensorImages(images)


def hash_parts(*parts) -> str:
    digest = hashlib.sha256()
    for p in parts:
        digest.update(p if isinstance(p, bytes) else repr(p).encode())
        digest.update(b"\0")
    return digest.hexdigest()
