"""Codes files written by ``contrahash encode``, and the provenance that travels with them.

``codes.npy`` (±1 int8 ``[n, bits]``) gets three files beside it:

* ``codes.json`` — which run made the codes (its directory and ``run_id``, the sha256 of its
  ``model.safetensors``), the code length, the count, the source and its fingerprint;
* ``codes_files.txt`` — one line per row: the image's path (or ``source[i]`` for sources
  without files), so row i of the codes is traceable to its image;
* ``codes_labels.npy`` — the source's labels (multi-hot ``[n, C]``), when it has any.

Commands that combine codes (``index build``, ``search``, ``evaluate``) read ``codes.json``
where it exists and refuse to mix codes of different runs (:func:`check_same_run`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.io import sha256_file, write_json, write_npy, write_text

__all__ = ["check_output_path", "check_same_run", "provenance_of", "run_id", "write_codes"]


def run_id(run_dir: str | os.PathLike) -> str:
    """A trained run's identity: the sha256 of its final weights (first 16 hex digits)."""
    return sha256_file(Path(run_dir) / "model.safetensors")[:16]


def sidecar(path: str | os.PathLike) -> Path:
    """``codes.npy`` → ``codes.json``; ``my.index`` → ``my.index.json``."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".npy" else path.with_name(path.name + ".json")


def check_output_path(path: str | os.PathLike) -> None:
    """Fail before any long computation when ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a directory; give a file name such as {path}/codes.npy")
    parent = path.parent if str(path.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"--out {path}: {parent} is not a directory")
    probe = parent if parent.exists() else next((p for p in parent.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        raise PermissionError(13, "cannot write there", str(probe))


def write_codes(path: str | os.PathLike, codes: np.ndarray, dataset: Any,
                run_dir: str | os.PathLike) -> list[Path]:
    """Write ``codes`` and the side files of the module docstring; returns their paths."""
    path = Path(path)
    written = [write_npy(path, codes)]
    names = dataset.paths or [f"{dataset.name}[{i}]" for i in range(len(codes))]
    files = path.with_name(path.stem + "_files.txt")
    written.append(write_text(files, "".join(f"{n}\n" for n in names)))
    if dataset.labels.shape[1]:
        written.append(write_npy(path.with_name(path.stem + "_labels.npy"),
                                 np.asarray(dataset.labels)))
    meta = {"format": "contrahash-codes/1", "run": str(Path(run_dir).resolve()),
            "run_id": run_id(run_dir), "bits": int(codes.shape[1]), "count": int(codes.shape[0]),
            "source": dataset.name, "dataset_fingerprint": dataset.fingerprint,
            "files": files.name}
    written.append(write_json(sidecar(path), meta))
    return written


def provenance_of(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance recorded beside a codes or index file ({} when there is none)."""
    try:
        return json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return {}


def check_same_run(*paths: str | os.PathLike) -> None:
    """Refuse codes (or an index) made by different runs, where their side files tell."""
    seen: dict[str, Path] = {}
    for path in paths:
        rid = provenance_of(path).get("run_id")
        if rid is not None:
            seen.setdefault(rid, Path(path))
    if len(seen) > 1:
        (a, pa), (b, pb) = list(seen.items())[:2]
        raise ValueError(f"{pa} comes from run {a} but {pb} from run {b}: codes of different "
                         "models are not comparable (encode both with the same run)")
