"""Small file helpers: every write is atomic (temp file in the same folder + os.replace), and
the one place that says where the user cache lives (:func:`default_cache_dir`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    """The user cache (decoded datasets, feature caches, compiled engines): ``$CONTRAHASH_CACHE``,
    or ``~/.cache/contrahash`` when that is unset or empty.

    An empty value counts as unset, as a shell's ``CONTRAHASH_CACHE=`` usually means "no
    override": reading it as the current directory would scatter caches wherever a command
    happens to run. Every cache of the package asks this one function.
    """
    return Path(os.environ.get("CONTRAHASH_CACHE") or Path.home() / ".cache" / "contrahash")


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``writer(file)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write JSON (indented, numpy scalars converted)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically write one array as .npy."""
    return atomic_write(path, lambda f: np.save(f, array))


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomically write several arrays as .npz."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line (a crash mid-run leaves whole lines only)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
