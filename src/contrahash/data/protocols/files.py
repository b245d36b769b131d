"""Split files: a split written as one index list per part plus ``split.json`` (format,
protocol, options, checksums), read back with its checks, and reused by a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from contrahash.data.errors import DataError
from contrahash.data.protocols.registry import _class_counts, _labels_of, make_split
from contrahash.data.protocols.split import PARTS, SPLIT_FORMAT, Split
from contrahash.io import sha256_file, write_json, write_text


def _list_text(idx: np.ndarray) -> str:
    return "".join(f"{int(i)}\n" for i in idx)


def save_split(split: Split, directory: str | os.PathLike) -> dict[str, str]:
    """Write ``query.txt``, ``database.txt``, ``train.txt`` (``val.txt``) — one dataset index
    per line — and ``split.json`` (protocol, seed, topk, counts, options, per-class counts,
    sha256 of each list). Every write is atomic. Returns ``{file name: sha256}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hashes: dict[str, str] = {}
    for part, idx in split.parts().items():
        text = _list_text(idx)
        write_text(directory / f"{part}.txt", text)
        hashes[f"{part}.txt"] = hashlib.sha256(text.encode()).hexdigest()
    if split.val is None and (directory / "val.txt").exists():
        (directory / "val.txt").unlink()  # a stale val list must not survive a rewrite
    meta = {
        "format": SPLIT_FORMAT,
        "protocol": split.protocol,
        "seed": split.seed,
        "topk": split.topk,
        "n_items": split.n_items,
        "counts": split.counts(),
        "sha256": hashes,
        "options": split.options,
        "fingerprint": split.fingerprint,
        "class_names": split.class_names,
        "class_counts": split.class_counts,
    }
    write_json(directory / "split.json", meta)
    return hashes


def load_split(directory: str | os.PathLike) -> Split:
    """Read a split written by :func:`save_split`, verifying every list file's sha256."""
    directory = Path(directory)
    meta_path = directory / "split.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{meta_path}: no split here (split.json missing)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: unreadable split description ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SPLIT_FORMAT:
        raise DataError(f"{meta_path}: not a contrahash split (format {meta.get('format')!r})")
    try:
        hashes, counts, n_items = meta["sha256"], meta["counts"], int(meta["n_items"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta_path}: missing field {exc}") from exc
    parts: dict[str, np.ndarray] = {}
    for part in PARTS:
        name = f"{part}.txt"
        if name not in hashes:
            if part == "val":
                continue
            raise DataError(f"{meta_path}: no sha256 recorded for {name}")
        path = directory / name
        if not path.is_file():
            raise DataError(f"{path}: list file missing")
        digest = sha256_file(path)
        if digest != hashes[name]:
            raise DataError(
                f"{path}: sha256 mismatch (file {digest[:16]}…, split.json {hashes[name][:16]}…); "
                "the list was changed after the split was saved"
            )
        try:
            idx = np.array([int(s) for s in path.read_text().split()], dtype=np.int64)
        except ValueError as exc:
            raise DataError(f"{path}: not one integer per line ({exc})") from exc
        if len(idx) != counts.get(part):
            raise DataError(f"{path}: {len(idx)} entries, split.json says {counts.get(part)}")
        parts[part] = idx
    split = Split(
        protocol=meta["protocol"],
        seed=int(meta["seed"]),
        topk=meta.get("topk"),
        query=parts["query"],
        database=parts["database"],
        train=parts["train"],
        val=parts.get("val"),
        n_items=n_items,
        options=meta.get("options") or {},
        fingerprint=meta.get("fingerprint"),
        class_counts=meta.get("class_counts"),
        class_names=meta.get("class_names"),
    )
    split.validate()
    return split


def split_for_run(
    run_dir: str | os.PathLike,
    protocol: str,
    dataset_or_labels,
    seed: int = 0,
    *,
    groups: Mapping[str, np.ndarray] | None = None,
    **options,
) -> Split:
    """The run's split: loaded from ``run_dir/split`` when present (and checked to match the
    protocol, seed, options, dataset size, fingerprint and per-class counts), else made and
    saved there — so every number a run reports traces to its exact split."""
    folder = Path(run_dir) / "split"
    wanted = make_split(protocol, dataset_or_labels, seed=seed, groups=groups, **options)
    if not (folder / "split.json").exists():
        save_split(wanted, folder)
        return wanted
    have = load_split(folder)
    labels = _labels_of(dataset_or_labels, options.get("num_classes"))[0]
    checks = [
        ("protocol", have.protocol, wanted.protocol),
        ("seed", have.seed, wanted.seed),
        ("dataset size", have.n_items, wanted.n_items),
        ("options", have.options, wanted.options),
    ]
    if have.fingerprint and wanted.fingerprint:
        checks.append(("dataset fingerprint", have.fingerprint, wanted.fingerprint))
    if have.class_counts is not None and have.n_items == len(labels):
        # the saved lists applied to these labels must give the per-class counts recorded
        # when the split was made: catches a different dataset of the same size
        checks.append(("per-class counts", have.class_counts, _class_counts(have, labels)))
    for what, old, new in checks:
        if old != new:
            raise DataError(
                f"{folder}: the saved split has {what} {_short(old)} but this run has "
                f"{_short(new)}; use a fresh run directory (or delete the split folder)"
            )
    return have


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
