"""The registry of protocols by name (:data:`PROTOCOLS`) and :func:`make_split`, which applies
one to a dataset's labels, with scaling and a validation set carved from the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from contrahash.data.dataset import ImageDataset, one_hot
from contrahash.data.errors import DataError
from contrahash.data.protocols.custom import _resolve_count, split_custom
from contrahash.data.protocols.presets import (
    _cifar_preset,
    _random_preset,
    _sorted,
    split_nuswide21,
)
from contrahash.data.protocols.split import Protocol, Split

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


