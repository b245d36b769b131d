"""The ``custom`` protocol's language: counts, fractions, per-class maps and groups for query,
database and train, resolved against the images given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from contrahash.data.errors import DataError
from contrahash.data.protocols.presets import _class_name, _require_single_label, _scaled, _sorted


def _resolve_count(value, available: int, scale: float, what: str, *,
                   scale_all: bool = False) -> int:
    """None → all; a float in (0, 1] → that fraction of ``available``; an int → that many
    (times ``scale``), which must be available. With ``scale_all`` "all" and fractions are
    multiplied by ``scale`` too (a part drawn from a pool that did not shrink already)."""
    factor = scale if scale_all else 1.0
    if value is None:
        return available if factor == 1.0 else _scaled(available, factor)
    if isinstance(value, float | np.floating):
        if not 0.0 < value <= 1.0:
            raise DataError(
                f"{what}: a fraction must be in (0, 1], got {value} (give a count as an integer)"
            )
        return int(round(float(value) * available * factor))
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        if value < 0:
            raise DataError(f"{what} must be >= 0, got {value}")
        n = _scaled(int(value), scale)
        if n > available:
            raise DataError(f"{what} asks for {n} images, only {available} are available")
        return n
    raise DataError(f"{what} must be a count (int) or a fraction (float), got {value!r}")


def _class_map(value, class_names: list[str] | None, n_classes: int, what: str) -> dict[int, Any]:
    """A per-class spec (one value for all, or {class name or id: value}) → {class id: value}."""
    if not isinstance(value, Mapping):
        return {c: value for c in range(n_classes)}
    out: dict[int, Any] = {}
    names = class_names or [str(c) for c in range(n_classes)]
    for key, v in value.items():
        if isinstance(key, int | np.integer) and 0 <= int(key) < n_classes:
            out[int(key)] = v
        elif str(key) in names:
            out[names.index(str(key))] = v
        else:
            raise DataError(
                f"custom protocol: {what} names unknown class {key!r} "
                f"(classes: {', '.join(names[:20])}{' …' if len(names) > 20 else ''})"
            )
    return out


def _sample(pool, spec, rng, *, per_class, ids, class_names, n_classes, scale, what,
            scale_all=False):
    """Draw from ``pool`` (sorted indices) by a total or per-class spec; None keeps all (or,
    with ``scale_all`` and a scale other than 1, ``scale`` of all)."""
    pool = np.asarray(pool, dtype=np.int64)
    if spec is None and (not scale_all or scale == 1.0):
        return pool  # no draw: a scale of 1 leaves the random stream where it was
    if not per_class:
        n = _resolve_count(spec, len(pool), scale, f"custom protocol: {what}",
                           scale_all=scale_all)
        return _sorted(rng.permutation(pool)[:n])
    wanted = _class_map(spec, class_names, n_classes, what)
    picked = []
    for c in range(n_classes):
        members = pool[ids[pool] == c]
        if c not in wanted:
            continue
        label = f"custom protocol: {what} of class {_class_name(c, class_names)}"
        n = _resolve_count(wanted[c], len(members), scale, label, scale_all=scale_all)
        picked.append(rng.permutation(members)[:n])
    return _sorted(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def split_custom(
    labels,
    rng,
    *,
    scale=1.0,
    class_names=None,
    protocol="custom",
    groups=None,
    query=0.1,
    train=None,
    database=None,
    per_class=False,
    train_in_database=True,
    drop_unlabeled=False,
    query_group=None,
    database_group=None,
    train_group=None,
    topk=None,
):
    """Sizes given as counts (scaled by ``scale``), fractions in (0, 1), or ``None`` (= all
    that is left); with ``per_class=True`` a count/fraction per class, or a dict
    ``{class name or id: count}`` (single-label data only). ``scale`` multiplies every part:
    counts, and fractions and ``None`` too, except where the pool is the (already scaled)
    database — train drawn from it, or ``train=None`` (train = database).

    Query is drawn first (from ``query_group`` when given, e.g. ``"test"``); the database from
    the rest (restricted to ``database_group``); train from the database when
    ``train_in_database`` (``train=None``: train = database), else from the rest before the
    database is drawn (disjoint). ``topk`` is the mAP cut-off (None = @ALL).
    """
    n_classes = labels.shape[1]
    ids = _require_single_label(labels, protocol) if per_class else None
    pool = np.flatnonzero(labels.any(axis=1)) if drop_unlabeled else np.arange(len(labels))

    def in_group(idx, name, what):
        if name is None:
            return idx
        if not groups or name not in groups:
            have = ", ".join(groups) if groups else "none"
            raise DataError(
                f"custom protocol: {what} group '{name}' not in the dataset (groups: {have})"
            )
        return idx[np.asarray(groups[name], dtype=bool)[idx]]

    kw = dict(
        per_class=per_class, ids=ids, class_names=class_names, n_classes=n_classes, scale=scale
    )
    # scale_all: fractions and "all" of a pool that is not itself a scaled part shrink too
    q = _sample(in_group(pool, query_group, "query"), query, rng, what="query",
                scale_all=True, **kw)
    if len(q) == 0:
        raise DataError("custom protocol: the query set is empty")
    rest = in_group(np.setdiff1d(pool, q), database_group, "database")
    if train_in_database:
        db = _sample(rest, database, rng, what="database", scale_all=True, **kw)
        tr = (
            db.copy()
            if train is None
            else _sample(in_group(db, train_group, "train"), train, rng, what="train", **kw)
        )
    else:
        if train is None:
            raise DataError("custom protocol: train_in_database=False needs a train size")
        tr = _sample(in_group(rest, train_group, "train"), train, rng, what="train",
                     scale_all=True, **kw)
        db = _sample(np.setdiff1d(rest, tr), database, rng, what="database", scale_all=True,
                     **kw)
    if len(db) == 0:
        raise DataError("custom protocol: the database is empty")
    return q, db, tr


