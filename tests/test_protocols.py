"""Protocol presets at their real sizes (on label arrays), the NUS-WIDE rule by hand, and the
saved split files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from contrahash.data import DataError, load_source
from contrahash.data.protocols import (
    PROTOCOLS,
    assign_nuswide,
    load_split,
    make_split,
    save_split,
    split_for_run,
)

CIFAR_LABELS = np.repeat(np.arange(10), 6000)  # 60,000 labels, 6,000 per class
ROOT = Path(__file__).resolve().parents[1]


def _per_class(idx, labels=CIFAR_LABELS):
    return np.bincount(labels[idx], minlength=10).tolist()


@pytest.mark.parametrize(
    "protocol, sizes, per_class, train_in_db",
    [
        ("cifar10-1", (1000, 59000, 5000), (100, 5900, 500), True),
        ("cifar10", (1000, 54000, 5000), (100, 5400, 500), False),
        ("cifar10-2", (10000, 50000, 50000), (1000, 5000, 5000), True),
        ("cifar10-ii", (10000, 50000, 5000), (1000, 5000, 500), True),
    ],
)
def test_cifar_presets_real_sizes(protocol, sizes, per_class, train_in_db):
    s = make_split(protocol, CIFAR_LABELS, seed=0)
    assert (len(s.query), len(s.database), len(s.train)) == sizes
    assert _per_class(s.query) == [per_class[0]] * 10
    assert _per_class(s.database) == [per_class[1]] * 10
    assert _per_class(s.train) == [per_class[2]] * 10
    assert s.topk == 1000 and s.n_items == 60000
    assert not np.intersect1d(s.query, s.database).size
    assert np.isin(s.train, s.database).all() == train_in_db
    if not train_in_db:
        assert not np.intersect1d(s.train, s.database).size
        assert len(np.union1d(np.union1d(s.query, s.database), s.train)) == 60000
    else:
        assert len(np.union1d(s.query, s.database)) == 60000
    for part in (s.query, s.database, s.train):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, unique
    assert s.summary()["query"] == {"count": sizes[0], "per_class": [per_class[0]] * 10}


def test_cifar10_2_train_is_database():
    s = make_split("cifar10-2", CIFAR_LABELS, seed=3)
    assert np.array_equal(s.train, s.database)


def test_scale_shrinks_every_count():
    labels = np.repeat(np.arange(10), 60)
    s = make_split("cifar10-1", labels, seed=0, scale=0.01)
    # per class: 1 query, 5 train, database = train + max(1, round(0.01 * 54)) = 6
    assert s.counts() == {"query": 10, "database": 60, "train": 50}
    assert _per_class(s.query, labels) == [1] * 10 and _per_class(s.train, labels) == [5] * 10
    assert _per_class(s.database, labels) == [6] * 10
    s = make_split("coco", np.ones((500, 4), np.uint8), seed=0, scale=0.01)
    # 50 query, 100 train, database = train + round(0.01 * 350) = 104
    assert s.counts() == {"query": 50, "database": 104, "train": 100}


def test_seed_determinism():
    a = make_split("cifar10-1", CIFAR_LABELS, seed=7)
    b = make_split("cifar10-1", CIFAR_LABELS, seed=7)
    c = make_split("cifar10-1", CIFAR_LABELS, seed=8)
    for part in ("query", "database", "train"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.query, c.query) and not np.array_equal(a.train, c.train)


def test_too_few_images_names_the_class():
    labels = np.repeat(np.arange(10), 600)
    labels[:550] = 1  # class 0 keeps 50 images
    with pytest.raises(DataError, match=r"class 0 has 50 images, needs at least 600"):
        make_split("cifar10-1", labels)
    names = [f"n{i}" for i in range(10)]
    with pytest.raises(DataError, match=r"class 'n0' has 50 images"):
        make_split("cifar10-1", labels, class_names=names)


def test_per_class_presets_need_single_labels():
    multi = np.zeros((100, 3), np.uint8)
    multi[:, 0] = 1
    multi[::2, 1] = 1
    with pytest.raises(DataError, match="single-label.*50 of 100"):
        make_split("cifar10-1", multi, scale=0.01)


def test_unknown_protocol_and_option():
    with pytest.raises(DataError, match="unknown protocol 'cifar100'"):
        make_split("cifar100", CIFAR_LABELS)
    with pytest.raises(DataError, match="does not take option.*queries"):
        make_split("cifar10-1", CIFAR_LABELS, queries=5)
    assert set(PROTOCOLS) >= {
        "cifar10-1", "cifar10", "cifar10-2", "cifar10-ii", "nuswide21", "coco", "flickr25k",
        "custom",
    }  # fmt: skip


# --- NUS-WIDE-21 ----------------------------------------------------------------------------


def test_nuswide_rule_by_hand():
    labels = np.array(
        [
            [1, 1, 0],  # 0: c0 has train room          -> train
            [1, 0, 0],  # 1: c0 train full, query room  -> query
            [1, 1, 0],  # 2: c0 train full, c1 room     -> train
            [0, 0, 0],  # 3: no label                   -> excluded
            [1, 1, 0],  # 4: trains full, c0 query full, c1 query room -> query
            [0, 1, 1],  # 5: c1 train full, c2 room     -> train
            [1, 0, 0],  # 6: everything of c0 full      -> database
            [0, 0, 1],  # 7: c2 train full, query room  -> query
            [0, 1, 1],  # 8: all full                   -> database
        ],
        dtype=np.uint8,
    )
    query, database, train = assign_nuswide(labels, np.arange(9), train_quota=1, query_quota=1)
    assert train.tolist() == [0, 2, 5]
    assert query.tolist() == [1, 4, 7]
    assert database.tolist() == [0, 2, 5, 6, 8]
    # a different walk order changes the assignment exactly as the rule says
    query, database, train = assign_nuswide(labels, np.arange(9)[::-1], 1, 1)
    assert train.tolist() == [6, 7, 8] and query.tolist() == [4, 5]


def test_nuswide_preset_uses_seeded_permutation_of_labelled():
    rng = np.random.default_rng(5)
    labels = (rng.random((400, 3)) < 0.4).astype(np.uint8)
    s = make_split("nuswide21", labels, seed=11, train_per_concept=20, query_per_concept=5)
    labelled = np.flatnonzero(labels.any(axis=1))
    order = np.random.default_rng(11).permutation(labelled)
    q, db, tr = assign_nuswide(labels, order, 20, 5)
    assert np.array_equal(s.query, q) and np.array_equal(s.database, db)
    assert np.array_equal(s.train, tr)
    assert not np.isin(
        np.flatnonzero(~labels.any(axis=1)), np.concatenate([s.query, s.database])
    ).any()


def test_nuswide_real_sizes():
    rng = np.random.default_rng(0)
    n_labelled = 195_834
    labels = (rng.random((n_labelled + 1000, 21)) < 0.06).astype(np.uint8)
    labels[-1000:] = 0  # unlabelled images are excluded
    empty = np.flatnonzero(~labels[:n_labelled].any(axis=1))
    labels[empty, rng.integers(0, 21, len(empty))] = 1
    s = make_split("nuswide21", labels, seed=0)
    assert s.counts() == {"query": 2100, "database": 193_734, "train": 10_500}
    assert s.topk == 5000 and np.isin(s.train, s.database).all()
    # the concept that placed each image: exactly 100 query / 500 train per concept
    first_q = _placing_concepts(labels, s.query, s, "query")
    assert np.bincount(first_q, minlength=21).tolist() == [100] * 21
    first_t = _placing_concepts(labels, s.train, s, "train")
    assert np.bincount(first_t, minlength=21).tolist() == [500] * 21


def _placing_concepts(labels, part, s, which):
    """Replay the walk to find which concept placed each image of ``part``."""
    labelled = np.flatnonzero(labels.any(axis=1))
    order = np.random.default_rng(s.seed).permutation(labelled)
    t_left, q_left = np.full(21, 500), np.full(21, 100)
    placed = {}
    for i in order:
        cs = np.flatnonzero(labels[i])
        hit = [c for c in cs if t_left[c] > 0]
        if hit:
            t_left[hit[0]] -= 1
            placed[i] = ("train", hit[0])
            continue
        hit = [c for c in cs if q_left[c] > 0]
        if hit:
            q_left[hit[0]] -= 1
            placed[i] = ("query", hit[0])
    return np.array([placed[i][1] for i in part if placed[i][0] == which])


def test_nuswide_unfillable_quota():
    labels = np.zeros((50, 2), np.uint8)
    labels[:, 0] = 1
    labels[:3, 1] = 1
    with pytest.raises(DataError, match="concept 1 fills only"):
        make_split("nuswide21", labels, scale=0.01)


# --- coco, flickr, custom -------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocol, n, sizes", [("coco", 122_218, (5000, 117_218, 10_000)), ("flickr25k", 25_000, (2000, 23_000, 5000))]
)  # fmt: skip
def test_random_presets_real_sizes(protocol, n, sizes):
    labels = np.zeros((n, 5), np.uint8)
    labels[np.arange(n), np.arange(n) % 5] = 1
    s = make_split(protocol, labels, seed=1)
    assert (len(s.query), len(s.database), len(s.train)) == sizes
    assert s.topk == 5000 and np.isin(s.train, s.database).all()
    assert not np.intersect1d(s.query, s.database).size


def test_random_preset_drop_unlabeled():
    labels = np.ones((300, 2), np.uint8)
    labels[:100] = 0
    s = make_split("flickr25k", labels, scale=0.01, drop_unlabeled=True)
    assert s.counts() == {"query": 20, "database": 51, "train": 50}  # 50 + round(0.01 * 130)
    assert s.query.min() >= 100 and s.database.min() >= 100


def test_custom_defaults_and_fractions():
    labels = np.repeat(np.arange(4), 50)
    s = make_split("custom", labels)
    assert s.counts() == {"query": 20, "database": 180, "train": 180} and s.topk is None
    s = make_split("custom", labels, query=0.25, train=0.5, database=None, topk=100)
    assert s.counts() == {"query": 50, "database": 150, "train": 75} and s.topk == 100
    s = make_split("custom", labels, query=10, train=40, train_in_database=False)
    assert s.counts() == {"query": 10, "database": 150, "train": 40}
    assert not np.intersect1d(s.train, s.database).size


def test_custom_per_class_and_unknown_class():
    labels = np.repeat(np.arange(3), 30)
    names = ["cat", "dog", "eel"]
    s = make_split("custom", labels, per_class=True, query={"cat": 2, "eel": 5}, class_names=names)
    assert _per_class(s.query, labels)[:3] == [2, 0, 5]
    s = make_split("custom", labels, per_class=True, query=3, train=10)
    assert _per_class(s.query, labels)[:3] == [3, 3, 3]
    assert _per_class(s.train, labels)[:3] == [10, 10, 10]
    with pytest.raises(DataError, match="unknown class 'fox'"):
        make_split("custom", labels, per_class=True, query={"fox": 1}, class_names=names)
    with pytest.raises(DataError, match="query of class 'cat' asks for 40 images, only 30"):
        make_split("custom", labels, per_class=True, query=40, class_names=names)
    with pytest.raises(DataError, match="fraction must be in"):
        make_split("custom", labels, query=1.5)


def test_custom_official_groups():
    ds = load_source("digits")
    test = np.zeros(len(ds), bool)
    test[::5] = True
    s = make_split(
        "custom", ds, groups={"train": ~test, "test": test}, query_group="test", query=None,
        database_group="train",
    )  # fmt: skip
    assert np.array_equal(s.query, np.flatnonzero(test))
    assert np.array_equal(s.database, np.flatnonzero(~test))
    with pytest.raises(DataError, match="group 'val' not in the dataset"):
        make_split("custom", ds, groups={"train": ~test}, query_group="val")


def test_val_is_carved_without_moving_other_parts():
    base = make_split("cifar10-1", CIFAR_LABELS, seed=2)
    s = make_split("cifar10-1", CIFAR_LABELS, seed=2, val_size=500)
    for part in ("query", "database", "train"):
        assert np.array_equal(getattr(s, part), getattr(base, part))
    assert len(s.val) == 500 and np.isin(s.val, s.database).all()
    assert not np.intersect1d(s.val, s.train).size and not np.intersect1d(s.val, s.query).size
    frac = make_split("cifar10-2", CIFAR_LABELS, seed=2, val_size=0.1)
    assert len(frac.val) == 5000 and np.isin(frac.val, frac.database).all()


def test_accepts_dataset_and_records_fingerprint():
    ds = load_source("digits")
    s = make_split("cifar10-1", ds, seed=0, scale=0.1)
    # 10 query + 50 train per class; database = train + round(0.1 * (class size - 60))
    rest = np.bincount(ds.labels.argmax(axis=1)) - 60
    assert s.counts() == {"query": 100, "database": int(500 + np.round(0.1 * rest).sum()),
                          "train": 500} == {"query": 100, "database": 619, "train": 500}
    assert s.fingerprint == ds.fingerprint and s.class_names == ds.class_names


# --- saved splits ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    s = make_split("cifar10", CIFAR_LABELS, seed=4, val_size=100)
    hashes = save_split(s, tmp_path / "split")
    assert set(hashes) == {"query.txt", "database.txt", "train.txt", "val.txt"}
    meta = json.loads((tmp_path / "split" / "split.json").read_text())
    assert meta["protocol"] == "cifar10" and meta["seed"] == 4 and meta["topk"] == 1000
    assert meta["counts"] == {"query": 1000, "database": 54000, "train": 5000, "val": 100}
    assert meta["sha256"] == hashes
    first = (tmp_path / "split" / "query.txt").read_text().splitlines()[0]
    assert int(first) == s.query[0]
    back = load_split(tmp_path / "split")
    for part in ("query", "database", "train", "val"):
        assert np.array_equal(getattr(back, part), getattr(s, part))
    assert back.summary() == s.summary() and back.topk == 1000


def test_load_detects_changed_list(tmp_path):
    s = make_split("cifar10-1", CIFAR_LABELS, seed=0)
    save_split(s, tmp_path)
    q = tmp_path / "query.txt"
    lines = q.read_text().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    q.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"query.txt: sha256 mismatch"):
        load_split(tmp_path)
    (tmp_path / "train.txt").unlink()
    with pytest.raises(DataError, match="no split here|sha256 mismatch|train.txt"):
        load_split(tmp_path)
    with pytest.raises(DataError, match="split.json missing"):
        load_split(tmp_path / "nothing")


def test_split_for_run_creates_then_reuses(tmp_path):
    labels = np.repeat(np.arange(10), 60)
    first = split_for_run(tmp_path, "cifar10-1", labels, seed=0, scale=0.1)
    assert (tmp_path / "split" / "split.json").exists()
    again = split_for_run(tmp_path, "cifar10-1", labels, seed=0, scale=0.1)
    assert np.array_equal(first.query, again.query)
    with pytest.raises(DataError, match="seed 0 but this run has 1"):
        split_for_run(tmp_path, "cifar10-1", labels, seed=1, scale=0.1)
    with pytest.raises(DataError, match="protocol"):
        split_for_run(tmp_path, "cifar10", labels, seed=0, scale=0.1)
    with pytest.raises(DataError, match="dataset size"):
        split_for_run(tmp_path, "cifar10-1", np.repeat(np.arange(10), 61), seed=0, scale=0.1)
    shuffled = np.random.default_rng(0).permutation(labels)  # same size and class totals
    with pytest.raises(DataError, match="per-class counts"):
        split_for_run(tmp_path, "cifar10-1", shuffled, seed=0, scale=0.1)


# --- scale: every part shrinks; scale 1.0 is the unscaled split, bit for bit --------------


@pytest.mark.parametrize(
    "protocol, counts, database_per_class",
    [
        # per class 5 query, 25 train; database = 25 + round(0.05 * 5970) = 323
        ("cifar10-1", {"query": 50, "database": 3230, "train": 250}, 323),
        # disjoint: database = round(0.05 * 5970) = 298 (not counting train)
        ("cifar10", {"query": 50, "database": 2980, "train": 250}, 298),
        # 50 query; database = train = round(0.05 * 5950) = 298
        ("cifar10-2", {"query": 500, "database": 2980, "train": 2980}, 298),
        # 50 query, 25 train; database = 25 + round(0.05 * 5925) = 321
        ("cifar10-ii", {"query": 500, "database": 3210, "train": 250}, 321),
    ],
)
def test_scale_shrinks_the_cifar_databases(protocol, counts, database_per_class):
    s = make_split(protocol, CIFAR_LABELS, seed=0, scale=0.05)
    assert s.counts() == counts
    assert _per_class(s.database) == [database_per_class] * 10
    full = make_split(protocol, CIFAR_LABELS, seed=0)
    # the same seeded permutation per class, cut shorter: the queries are its first ones
    assert np.isin(s.query, full.query).all()
    assert np.isin(s.train, s.database).all() == (protocol != "cifar10")


def test_scale_shrinks_the_nuswide_database():
    rng = np.random.default_rng(1)
    labels = (rng.random((6000, 4)) < 0.3).astype(np.uint8)
    opts = {"train_per_concept": 200, "query_per_concept": 40}
    full = make_split("nuswide21", labels, seed=2, **opts)
    s = make_split("nuswide21", labels, seed=2, scale=0.1, **opts)
    # the quotas scale (20 train / 4 query per concept, as placed by the rule) ...
    order = np.random.default_rng(2).permutation(np.flatnonzero(labels.any(axis=1)))
    q, db, tr = assign_nuswide(labels, order, 20, 4)
    assert np.array_equal(s.query, q) and np.array_equal(s.train, tr)
    # ... and the database keeps train plus the first 10% of the rest in the walk's order
    rest = [i for i in order if i in set(db.tolist()) - set(tr.tolist())]
    keep = max(1, round(0.1 * len(rest)))
    assert s.database.tolist() == sorted(tr.tolist() + rest[:keep])
    assert len(s.database) < 0.2 * len(full.database)


def test_scale_shrinks_custom_fractions_and_all():
    labels = np.repeat(np.arange(4), 50)
    # defaults: query 0.1 of 200 → 10; database = all 190 left → 95; train = database
    assert make_split("custom", labels, scale=0.5).counts() == {
        "query": 10, "database": 95, "train": 95}
    # train drawn from the (already halved) database: its fraction is not halved again
    assert make_split("custom", labels, scale=0.5, query=0.2, train=0.5).counts() == {
        "query": 20, "database": 90, "train": 45}
    # disjoint: 5 query, 20 train, database = half of the 175 left → 88
    s = make_split("custom", labels, scale=0.5, query=10, train=40, train_in_database=False)
    assert s.counts() == {"query": 5, "database": 88, "train": 20}
    s = make_split("custom", labels, scale=0.5, per_class=True, query=0.2, train=10)
    assert _per_class(s.query, labels)[:4] == [5] * 4  # 0.2 × 50 × 0.5
    assert _per_class(s.database, labels)[:4] == [22] * 4  # round(0.5 × 45)
    assert _per_class(s.train, labels)[:4] == [5] * 4


#: sha256 (first 16 hex digits) over each part's name and int64 indices, as made by the code
#: before ``scale`` shrank the database: with scale 1.0 (or none) nothing may move
_RAND = np.zeros((16000, 5), np.uint8)
_RAND[np.arange(16000), np.arange(16000) % 5] = 1
_SMALL = np.repeat(np.arange(4), 50)
_GROUPS = {"a": np.arange(200) % 3 == 0, "b": np.arange(200) % 3 != 0}
UNSCALED_DIGESTS = [
    ("cifar10-1", CIFAR_LABELS, {}, "75883a7fbb9c1be5", "ed8b0c0d2feccbd4"),
    ("cifar10", CIFAR_LABELS, {}, "657ea72ae3e765e4", "402a2651d5401788"),
    ("cifar10-2", CIFAR_LABELS, {}, "b366611e6a3efdd2", "c1e3b2f17012c9b1"),
    ("cifar10-ii", CIFAR_LABELS, {}, "8aa5c4ad049824b7", "53388c4722c1d250"),
    ("cifar10-1", CIFAR_LABELS, {"val_size": 500}, "6193055abfbdda9b", "a88c434ef267cb32"),
    ("coco", _RAND, {}, "e9f5fdc604ee002a", "59dbac5b45387cb3"),
    ("flickr25k", _RAND, {"drop_unlabeled": True}, "9776d9c0efed43bb", "c798100b8a993c64"),
    ("custom", _SMALL, {}, "79862c87db04c128", "0449b70be96eb580"),
    ("custom", _SMALL, {"query": 0.25, "train": 0.5, "database": None},
     "7503205cd23522ca", "4694a20e0cb61ac3"),
    ("custom", _SMALL, {"query": 10, "train": 40, "train_in_database": False},
     "d3ccc5abc34f21d1", "f0492cbb8514b419"),
    ("custom", _SMALL, {"query": 10, "train": 0.5, "database": 0.8, "train_in_database": False},
     "985f0f02e49fabdc", "a311fc701ca3a05f"),
    ("custom", _SMALL, {"per_class": True, "query": 3, "train": 10},
     "26f76ec69760bdc7", "e379c019667592f9"),
    ("custom", _SMALL, {"per_class": True, "query": 0.1, "database": 0.5},
     "ebbb34b69d38e0e3", "8bb346e275e18ce8"),
    ("custom", _SMALL, {"query_group": "a", "query": None, "database_group": "b"},
     "7cc1b7a5de76b495", "7cc1b7a5de76b495"),
]


def _digest(split) -> str:
    h = hashlib.sha256()
    for part, idx in split.parts().items():
        h.update(part.encode())
        h.update(np.asarray(idx, np.int64).tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("protocol, labels, options, seed0, seed3", UNSCALED_DIGESTS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(UNSCALED_DIGESTS)])
def test_scale_one_is_bit_identical_to_the_unscaled_split(protocol, labels, options, seed0,
                                                          seed3):
    groups = _GROUPS if "query_group" in options else None
    for seed, want in ((0, seed0), (3, seed3)):
        assert _digest(make_split(protocol, labels, seed=seed, groups=groups, **options)) == want
        assert _digest(make_split(protocol, labels, seed=seed, groups=groups, scale=1.0,
                                  **options)) == want


def _cifar10_npz() -> Path | None:
    for candidate in (os.environ.get("CONTRAHASH_CIFAR10"),
                      ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.npz"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def test_committed_cifar10_1_split_hashes_are_unchanged(tmp_path):
    """The split behind results/cifar10-1 (its environment.json records the list hashes)."""
    path = _cifar10_npz()
    if path is None:
        pytest.skip("the packed CIFAR-10 file is not here (CONTRAHASH_CIFAR10)")
    with np.load(path, allow_pickle=False) as z:  # the labels alone: no decoding needed
        labels = z["labels"].astype(np.int64)
    env = json.loads((ROOT / "results" / "cifar10-1" / "environment.json").read_text())
    recorded = {json.dumps(h, sort_keys=True) for h in env["split_hashes"].values()}
    assert len(recorded) == 1
    hashes = save_split(make_split("cifar10-1", labels, seed=0), tmp_path)
    assert hashes == json.loads(recorded.pop())
