"""Retrieval protocols: which images are queries, which form the database, which train.

Presets follow the field's protocols (``docs``: methods.md, "Protocols"):

| name | query | database | train | cut-off |
|---|---|---|---|---|
| ``cifar10-1`` | 100/class | the rest | 500/class ⊂ database | mAP@1000 |
| ``cifar10`` | 100/class | the rest minus train | 500/class, disjoint | mAP@1000 |
| ``cifar10-2`` | 1,000/class | the rest | = database | mAP@1000 |
| ``cifar10-ii`` | 1,000/class | the rest | 500/class ⊂ database | mAP@1000 |
| ``nuswide21`` | 100/concept | the rest | 500/concept ⊂ database | mAP@5000 |
| ``coco`` | 5,000 | the rest | 10,000 ⊂ database | mAP@5000 |
| ``flickr25k`` | 2,000 | the rest | 5,000 ⊂ database | mAP@5000 |
| ``custom`` | options | options | options | option (default @ALL) |

The ``cifar10*`` presets pool every image they are given (for CIFAR-10: the official 50k train
+ 10k test) and split each class with one seeded permutation; they need single-label data and
fail with a :class:`DataError` naming the class when one has too few images. ``nuswide21``
applies the field's assignment rule exactly (see :func:`split_nuswide21`); images with no
label are left out of every part (they could never be relevant to anything). ``coco`` and
``flickr25k`` draw uniformly from all images given (use the list file to choose the pool, or
``drop_unlabeled=True``).

Every index array is sorted ascending (dataset order), so the database order — which breaks
Hamming-distance ties — is the dataset order. ``val_size`` (count or fraction) carves a
validation set from the database (outside train when the protocol leaves database images
outside train), with its own random stream: adding it never changes the other parts.

``scale`` (for small and test runs) shrinks every part of every protocol, each count ``n``
becoming ``max(1, round(n * scale))``:

* query and train: the preset counts (per class / per concept / in total) are scaled;
* the database: train (when train ⊂ database) plus ``scale`` × the images the protocol would
  put in the database beyond train at that scale — the first of them in the protocol's own
  seeded order, so no extra random draw is made (``cifar10-1`` on CIFAR-10 at 0.05: 50 query,
  250 train, 3,230 database instead of 59,950);
* ``custom``: counts are scaled; fractions and ``None`` ("all that is left") are scaled too,
  except for train drawn from the database (already scaled) and ``train=None``
  (train = database);
* ``val_size`` is not scaled: it is carved out of the (scaled) database as given.

``scale=1.0`` gives exactly the unscaled split (the same lists, the same random draws).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.data.dataset import ImageDataset, one_hot
from contrahash.data.dataset import single_label as _single_label
from contrahash.data.errors import DataError
from contrahash.io import sha256_file, write_json, write_text

SPLIT_FORMAT = "contrahash-split/1"
PARTS = ("query", "database", "train", "val")


@dataclass
class Split:
    """Index arrays (``int64``, sorted, into the dataset) of one protocol applied once."""

    protocol: str
    seed: int
    topk: int | None
    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    val: np.ndarray | None = None
    n_items: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    class_counts: dict[str, list[int]] | None = None
    class_names: list[str] | None = None

    def parts(self) -> dict[str, np.ndarray]:
        """The non-empty-by-definition parts: query, database, train (and val if any)."""
        out = {"query": self.query, "database": self.database, "train": self.train}
        if self.val is not None:
            out["val"] = self.val
        return out

    def counts(self) -> dict[str, int]:
        """Size of each part."""
        return {k: int(len(v)) for k, v in self.parts().items()}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per part: ``{"count": n, "per_class": [images of class c in the part, …]}``.

        Per-class counts are label-column sums (concept counts for multi-label data); they are
        computed when the split is made and saved with it.
        """
        out = {}
        for part, idx in self.parts().items():
            entry: dict[str, Any] = {"count": int(len(idx))}
            if self.class_counts is not None and part in self.class_counts:
                entry["per_class"] = list(self.class_counts[part])
            out[part] = entry
        return out

    def validate(self) -> None:
        """Indices in range and unique per part; query ∩ database = ∅; val ⊂ database."""
        for part, idx in self.parts().items():
            if idx.dtype != np.int64 or idx.ndim != 1:
                raise DataError(
                    f"split part '{part}' must be int64 [n], got {idx.dtype} {idx.shape}"
                )
            if len(idx) and (idx.min() < 0 or idx.max() >= self.n_items):
                raise DataError(f"split part '{part}' has indices outside 0..{self.n_items - 1}")
            if len(np.unique(idx)) != len(idx):
                raise DataError(f"split part '{part}' repeats indices")
        if np.intersect1d(self.query, self.database).size:
            raise DataError("split: query and database overlap")
        if self.val is not None and np.setdiff1d(self.val, self.database).size:
            raise DataError("split: val is not inside the database")


@dataclass(frozen=True)
class Protocol:
    """A named way to split a dataset, and its mAP cut-off (``topk=None``: @ALL)."""

    name: str
    topk: int | None
    split: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
    description: str
    options: tuple[str, ...] = ()


# --- helpers --------------------------------------------------------------------------------


def _scaled(n: int, scale: float) -> int:
    return 0 if n <= 0 else max(1, int(round(n * scale)))


def _sorted(idx) -> np.ndarray:
    return np.sort(np.asarray(idx, dtype=np.int64))


def _require_single_label(labels: np.ndarray, protocol: str) -> np.ndarray:
    ids = _single_label(labels)
    if ids is None:
        bad = int(np.sum(labels.sum(axis=1) != 1))
        raise DataError(
            f"protocol '{protocol}' splits per class and needs single-label data; "
            f"{bad} of {len(labels)} images have zero or several labels"
        )
    return ids


def _class_name(c: int, class_names: list[str] | None) -> str:
    return repr(class_names[c]) if class_names and c < len(class_names) else str(c)


def _per_class_split(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    protocol: str,
    class_names: list[str] | None,
    n_query: int,
    n_train: int | None,
    train_in_database: bool,
    scale: float = 1.0,
):
    """Per class: a seeded permutation; the first ``n_query`` are queries, the next
    ``n_train`` train; the database is the rest (plus train when ``train_in_database``).
    ``n_train=None`` means train = database. With ``scale``, the database keeps the first
    ``_scaled(len(rest), scale)`` of the rest (all of it at 1.0: no extra draw)."""
    ids = _require_single_label(labels, protocol)
    need = n_query + (n_train or 0)
    query, database, train = [], [], []
    for c in range(labels.shape[1]):
        members = np.flatnonzero(ids == c)
        if len(members) < need:
            parts = f"{n_query} query" + (f" + {n_train} train" if n_train else "")
            raise DataError(
                f"protocol '{protocol}': class {_class_name(c, class_names)} has {len(members)} "
                f"images, needs at least {need} ({parts})"
            )
        perm = rng.permutation(members)
        query.append(perm[:n_query])
        if n_train is None:
            rest = perm[n_query:]
            database.append(rest[: _scaled(len(rest), scale)])
            continue
        t = perm[n_query : n_query + n_train]
        rest = perm[n_query + n_train :]
        rest = rest[: _scaled(len(rest), scale)]  # the permutation's order: a random subset
        train.append(t)
        database.append(np.concatenate([t, rest]) if train_in_database else rest)
    q, db = _sorted(np.concatenate(query)), _sorted(np.concatenate(database))
    tr = db.copy() if n_train is None else _sorted(np.concatenate(train))
    return q, db, tr


def _cifar_preset(n_query: int, n_train: int | None, train_in_database: bool):
    def split(labels, rng, *, scale=1.0, class_names=None, protocol="", groups=None):
        return _per_class_split(
            labels,
            rng,
            protocol=protocol,
            class_names=class_names,
            n_query=_scaled(n_query, scale),
            n_train=None if n_train is None else _scaled(n_train, scale),
            train_in_database=train_in_database,
            scale=scale,
        )

    return split


def assign_nuswide(
    labels: np.ndarray, order: np.ndarray, train_quota, query_quota
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NUS-WIDE-21 assignment rule over an explicit walk ``order``.

    For each image in ``order``, walk its concepts in column order: the first concept with
    train quota left puts the image in train (and the database); otherwise the first concept
    with query quota left puts it in query; otherwise it goes to the database. Images with no
    label are skipped (in no part). Quotas are per concept (an int for all, or an array).
    Returns sorted ``(query, database, train)``.
    """
    query, database, train, _, _ = _walk_nuswide(labels, order, train_quota, query_quota)
    return query, database, train


def _walk_nuswide(labels, order, train_quota, query_quota):
    """:func:`assign_nuswide` plus the quotas left unfilled per concept."""
    labels = np.asarray(labels)
    c = labels.shape[1]
    t_left = np.broadcast_to(np.asarray(train_quota, dtype=np.int64), (c,)).copy()
    q_left = np.broadcast_to(np.asarray(query_quota, dtype=np.int64), (c,)).copy()
    order = np.asarray(order, dtype=np.int64)
    order = order[labels[order].any(axis=1)]
    part = np.zeros(len(order), dtype=np.int8)  # 0 database, 1 train, 2 query
    open_t, open_q = t_left > 0, q_left > 0
    for pos, i in enumerate(order):
        if not (open_t.any() or open_q.any()):
            break  # every quota is full: the rest is database
        concepts = np.flatnonzero(labels[i])
        hit = concepts[open_t[concepts]]
        if hit.size:
            k = hit[0]
            t_left[k] -= 1
            open_t[k] = t_left[k] > 0
            part[pos] = 1
            continue
        hit = concepts[open_q[concepts]]
        if hit.size:
            k = hit[0]
            q_left[k] -= 1
            open_q[k] = q_left[k] > 0
            part[pos] = 2
    query, train = _sorted(order[part == 2]), _sorted(order[part == 1])
    return query, _sorted(order[part != 2]), train, t_left, q_left


def split_nuswide21(
    labels,
    rng,
    *,
    scale=1.0,
    class_names=None,
    protocol="nuswide21",
    groups=None,
    train_per_concept=500,
    query_per_concept=100,
):
    """NUS-WIDE-21: :func:`assign_nuswide` over a seeded permutation of the labelled images
    (``rng.permutation`` of their indices), 500 train / 100 query per concept (times
    ``scale``; the database images outside train keep ``scale`` of their number too, the
    first in the walk's order). Images with no label are excluded from every part. Every quota
    must fill, else :class:`DataError` names the concept.
    """
    labels = np.asarray(labels)
    n_train, n_query = _scaled(train_per_concept, scale), _scaled(query_per_concept, scale)
    order = rng.permutation(np.flatnonzero(labels.any(axis=1)))
    query, database, train, t_left, q_left = _walk_nuswide(labels, order, n_train, n_query)
    for left, what, want in ((t_left, "train", n_train), (q_left, "query", n_query)):
        short = np.flatnonzero(left > 0)
        if short.size:
            k = int(short[0])
            raise DataError(
                f"protocol '{protocol}': concept {_class_name(k, class_names)} fills only "
                f"{want - int(left[k])} of its {want} {what} places (too few labelled images)"
            )
    if scale != 1.0:  # the database outside train: the first of them in the walk's order
        rest = order[np.isin(order, database) & ~np.isin(order, train)]
        database = _sorted(np.concatenate([train, rest[: _scaled(len(rest), scale)]]))
    return query, database, train


def _random_preset(n_query: int, n_train: int):
    def split(
        labels, rng, *, scale=1.0, class_names=None, protocol="", groups=None, drop_unlabeled=False
    ):
        pool = np.flatnonzero(labels.any(axis=1)) if drop_unlabeled else np.arange(len(labels))
        q, t = _scaled(n_query, scale), _scaled(n_train, scale)
        if q + t > len(pool):
            raise DataError(
                f"protocol '{protocol}' needs at least {q + t} images ({q} query + {t} train), "
                f"the dataset has {len(pool)}"
            )
        perm = rng.permutation(pool)
        n_db = t + _scaled(len(pool) - q - t, scale)  # train, then scale × the rest
        return _sorted(perm[:q]), _sorted(perm[q : q + n_db]), _sorted(perm[q : q + t])

    return split


# --- custom ---------------------------------------------------------------------------------


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


# --- registry -------------------------------------------------------------------------------

_CUSTOM_OPTIONS = (
    "query",
    "train",
    "database",
    "per_class",
    "train_in_database",
    "drop_unlabeled",
    "query_group",
    "database_group",
    "train_group",
    "topk",
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "cifar10-1",
            1000,
            _cifar_preset(100, 500, True),
            "100/class query; database = the rest; 500/class train ⊂ database",
        ),
        Protocol(
            "cifar10",
            1000,
            _cifar_preset(100, 500, False),
            "100/class query; 500/class train; database = the rest (train excluded)",
        ),
        Protocol(
            "cifar10-2",
            1000,
            _cifar_preset(1000, None, True),
            "1,000/class query; database = the rest = train",
        ),
        Protocol(
            "cifar10-ii",
            1000,
            _cifar_preset(1000, 500, True),
            "1,000/class query; database = the rest; 500/class train ⊂ database",
        ),
        Protocol(
            "nuswide21",
            5000,
            split_nuswide21,
            "100/concept query, 500/concept train ⊂ database by the NUS-WIDE-21 rule",
            ("train_per_concept", "query_per_concept"),
        ),
        Protocol(
            "coco",
            5000,
            _random_preset(5000, 10000),
            "5,000 random query; database = the rest; 10,000 train ⊂ database",
            ("drop_unlabeled",),
        ),
        Protocol(
            "flickr25k",
            5000,
            _random_preset(2000, 5000),
            "2,000 random query; database = the rest; 5,000 train ⊂ database",
            ("drop_unlabeled",),
        ),
        Protocol(
            "custom",
            None,
            split_custom,
            "sizes/fractions/per-class counts from options; train ⊂ database or disjoint",
            _CUSTOM_OPTIONS,
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The registered protocol called ``name``."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise DataError(f"unknown protocol '{name}' (known: {', '.join(PROTOCOLS)})") from None


# --- make / save / load ---------------------------------------------------------------------


def _labels_of(dataset_or_labels, num_classes: int | None = None):
    """(multi-hot uint8 [N, C], groups, class names, fingerprint) from a dataset or labels."""
    if isinstance(dataset_or_labels, ImageDataset):
        ds = dataset_or_labels
        return ds.labels, ds.groups, list(ds.class_names), ds.fingerprint
    labels = np.asarray(dataset_or_labels)
    if labels.ndim == 1:
        labels = one_hot(labels, num_classes)
    elif labels.ndim != 2:
        raise DataError(
            f"labels must be class ids [N] or multi-hot [N, C], got shape {labels.shape}"
        )
    elif labels.size and not np.isin(labels, (0, 1)).all():
        raise DataError("multi-hot labels must be 0 or 1")
    return labels.astype(np.uint8, copy=False), None, None, None


def make_split(
    protocol: str,
    dataset_or_labels,
    *,
    seed: int = 0,
    groups: Mapping[str, np.ndarray] | None = None,
    **options,
) -> Split:
    """Apply a protocol: ``dataset_or_labels`` is an :class:`ImageDataset`, class ids ``[N]``
    or multi-hot labels ``[N, C]``.

    Options every protocol takes: ``scale`` (shrinks every part, the database included; see
    the module docstring), ``val_size``
    (validation count, or fraction of its pool), ``class_names`` and ``num_classes`` (for plain
    label arrays). Others are protocol specific (``PROTOCOLS[name].options``); an unknown one
    is a :class:`DataError`. Same inputs and seed → same split.

    >>> labels = np.repeat(np.arange(10), 600)
    >>> s = make_split("cifar10-1", labels, seed=0, scale=0.1)
    >>> s.counts()
    {'query': 100, 'database': 1040, 'train': 500}
    """
    proto = get_protocol(protocol)
    options = dict(options)
    scale = float(options.pop("scale", 1.0))
    if not scale > 0:
        raise DataError(f"scale must be positive, got {scale}")
    val_size = options.pop("val_size", None)
    names_opt = options.pop("class_names", None)
    num_classes = options.pop("num_classes", None)
    unknown = sorted(set(options) - set(proto.options))
    if unknown:
        takes = ", ".join(("scale", "val_size", *proto.options))
        raise DataError(
            f"protocol '{protocol}' does not take option(s) {', '.join(unknown)} (takes: {takes})"
        )
    labels, ds_groups, class_names, fingerprint = _labels_of(dataset_or_labels, num_classes)
    if names_opt is not None:
        class_names = list(names_opt)
    if groups is None:
        groups = ds_groups
    if len(labels) == 0:
        raise DataError("cannot split an empty dataset")
    rng = np.random.default_rng(seed)
    split_opts = {k: v for k, v in options.items() if k != "topk"}
    query, database, train = proto.split(
        labels,
        rng,
        scale=scale,
        class_names=class_names,
        protocol=protocol,
        groups=groups,
        **split_opts,
    )
    topk = options.get("topk", proto.topk) if protocol == "custom" else proto.topk
    val = None
    if val_size is not None:
        val = _carve_val(database, train, val_size, seed)
    recorded = {
        "scale": scale,
        **({"val_size": val_size} if val_size is not None else {}),
        **options,
    }
    split = Split(
        protocol=protocol,
        seed=int(seed),
        topk=None if topk is None else int(topk),
        query=query,
        database=database,
        train=train,
        val=val,
        n_items=int(len(labels)),
        options=_jsonable(recorded),
        fingerprint=fingerprint,
        class_names=class_names,
    )
    split.class_counts = _class_counts(split, labels)
    split.validate()
    return split


def _carve_val(database: np.ndarray, train: np.ndarray, val_size, seed: int) -> np.ndarray:
    pool = np.setdiff1d(database, train)
    if len(pool) == 0:
        pool = database  # train = database: nothing is held out of training
    rng = np.random.default_rng([int(seed), 0x7A1])  # own stream: the other parts do not move
    n = _resolve_count(val_size, len(pool), 1.0, "val_size")
    if n == 0:
        raise DataError(f"val_size={val_size!r} gives an empty validation set")
    return _sorted(rng.permutation(pool)[:n])


def _class_counts(split: Split, labels: np.ndarray) -> dict[str, list[int]]:
    return {
        part: labels[idx].sum(axis=0, dtype=np.int64).tolist()
        for part, idx in split.parts().items()
    }


def _jsonable(obj):
    return json.loads(
        json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    )


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
