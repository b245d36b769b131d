"""The field's preset protocols: CIFAR-10's per-class splits, the NUS-WIDE-21 assignment rule,
and the uniform draws of COCO and FLICKR25K; the table is in the package docstring.
"""

from __future__ import annotations

import numpy as np

from contrahash.data.dataset import single_label as _single_label
from contrahash.data.errors import DataError


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


