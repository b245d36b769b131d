"""Retrieval metrics against plain per-query references, hand-computed cases and torchmetrics."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrahash.evaluation import metrics
from contrahash.evaluation.metrics import (
    MapResult,
    bit_statistics,
    hamming_distances,
    mean_average_precision,
    pr_curve,
    precision_at_n,
    precision_at_n_curve,
    precision_within_radius,
    retrieval_report,
)

# ----------------------------------------------------------------------------- references
# Written plainly, one query at a time, from the definitions in docs/methods.md.


def ref_distances(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    q, db = np.asarray(q) > 0, np.asarray(db) > 0  # bit = +1 / 1 / True
    return (q[:, None, :] != db[None, :, :]).sum(-1)


def ref_relevance(ql: np.ndarray, dl: np.ndarray) -> np.ndarray:
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return (ql.astype(int) @ dl.astype(int).T) > 0


def ref_ap(ranked_rel: np.ndarray) -> float:
    hits, total = 0, 0.0
    for position, relevant in enumerate(ranked_rel, start=1):
        if relevant:
            hits += 1
            total += hits / position
    return total / hits if hits else 0.0


def ref_map(q, db, ql, dl, topk):
    d, rel = ref_distances(q, db), ref_relevance(ql, dl)
    k = len(db) if topk is None else min(topk, len(db))
    aps = []
    for i in range(len(q)):
        order = np.argsort(d[i], kind="stable")[:k]
        aps.append(ref_ap(rel[i][order]))
    return float(np.mean(aps))


def ref_precision_at(q, db, ql, dl, n):
    d, rel = ref_distances(q, db), ref_relevance(ql, dl)
    n = min(n, len(db))
    return float(np.mean([rel[i][np.argsort(d[i], kind="stable")[:n]].mean()
                          for i in range(len(q))]))


def pm1(bits: np.ndarray) -> np.ndarray:
    return np.where(bits, 1, -1).astype(np.int8)


# ----------------------------------------------------------------------------- strategies


@st.composite
def retrieval_problem(draw, max_bits=70, max_db=60):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bits = draw(st.integers(1, max_bits))
    n_db = draw(st.integers(1, max_db))
    n_q = draw(st.integers(1, 6))
    # few distinct codes -> many ties
    n_protos = draw(st.integers(1, 8))
    protos = rng.integers(0, 2, (n_protos, bits)).astype(bool)
    flip = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5]))
    db = protos[rng.integers(0, n_protos, n_db)] ^ (rng.random((n_db, bits)) < flip)
    q = protos[rng.integers(0, n_protos, n_q)] ^ (rng.random((n_q, bits)) < flip)
    if draw(st.booleans()):
        n_classes = draw(st.integers(1, 5))
        ql, dl = rng.integers(0, n_classes, n_q), rng.integers(0, n_classes, n_db)
    else:
        n_classes = draw(st.integers(1, 5))
        ql = (rng.random((n_q, n_classes)) < 0.4).astype(np.uint8)
        dl = (rng.random((n_db, n_classes)) < 0.4).astype(np.uint8)
    fmt = draw(st.sampled_from(["pm1", "01", "bool", "float"]))
    conv = {"pm1": pm1, "01": lambda b: b.astype(np.uint8), "bool": lambda b: b,
            "float": lambda b: pm1(b).astype(np.float32)}[fmt]
    topk = draw(st.one_of(st.none(), st.integers(1, n_db + 5)))
    return conv(q), conv(db), ql, dl, topk


# ----------------------------------------------------------------------------- mAP


@settings(max_examples=150, deadline=None)
@given(problem=retrieval_problem())
def test_map_matches_plain_reference(problem):
    q, db, ql, dl, topk = problem
    got = mean_average_precision(q, db, ql, dl, topk)
    assert got == pytest.approx(ref_map(q, db, ql, dl, topk), rel=1e-12, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(problem=retrieval_problem(), chunk=st.integers(1, 4))
def test_map_independent_of_chunking(problem, chunk):
    q, db, ql, dl, topk = problem
    a = mean_average_precision(q, db, ql, dl, topk, return_bounds=True)
    b = mean_average_precision(q, db, ql, dl, topk, chunk_size=chunk, return_bounds=True)
    assert a == b


@settings(max_examples=100, deadline=None)
@given(problem=retrieval_problem())
def test_tie_bounds_bracket_the_stable_map(problem):
    q, db, ql, dl, topk = problem
    res = mean_average_precision(q, db, ql, dl, topk, return_bounds=True)
    assert isinstance(res, MapResult)
    assert res.worst - 1e-12 <= res.map <= res.best + 1e-12


def test_tie_bounds_equal_brute_force_over_all_tie_orders():
    rng = np.random.default_rng(3)
    for _ in range(60):
        bits, n, n_q = int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(1, 3))
        q, db = rng.integers(0, 2, (n_q, bits)), rng.integers(0, 2, (n, bits))
        ql, dl = rng.integers(0, 3, n_q), rng.integers(0, 3, n)
        k = int(rng.integers(1, n + 1))
        res = mean_average_precision(q, db, ql, dl, k, return_bounds=True)
        d, rel = ref_distances(q, db), ref_relevance(ql, dl)
        best, worst = [], []
        for i in range(n_q):
            # every permutation, then a stable sort by distance: all orders of tied items
            values = {ref_ap(rel[i][sorted(p, key=lambda j: d[i, j])][:k])
                      for p in itertools.permutations(range(n))}
            best.append(max(values))
            worst.append(min(values))
        assert res.best == pytest.approx(np.mean(best), abs=1e-12)
        assert res.worst == pytest.approx(np.mean(worst), abs=1e-12)


def test_hand_computed_ties_and_cutoffs():
    # query (1, 1); distances 0, 1, 1, 2; relevant: items 0, 2, 3 (class 0)
    db = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    q = np.array([[1, 1]])
    ql, dl = np.array([0]), np.array([0, 1, 0, 0])
    # stable order: 0 (rel), 1 (irr), 2 (rel), 3 (rel)
    assert mean_average_precision(q, db, ql, dl) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert mean_average_precision(q, db, ql, dl, topk=2) == pytest.approx(1.0)
    assert mean_average_precision(q, db, ql, dl, topk=3) == pytest.approx((1 + 2 / 3) / 2)
    res = mean_average_precision(q, db, ql, dl, return_bounds=True)
    assert res.best == pytest.approx((1 + 1 + 3 / 4) / 3)  # relevant item 2 before item 1
    assert res.worst == pytest.approx(res.map)
    # reversing the database order reverses the tie order: item 2 now comes before item 1
    assert mean_average_precision(q, db[::-1], ql, dl[::-1]) == pytest.approx(res.best)


def test_query_without_hits_scores_zero_and_counts():
    db = np.array([[1, 1], [-1, -1]])
    q = np.array([[1, 1], [1, 1]])
    assert mean_average_precision(q, db, [0, 7], [0, 1]) == pytest.approx(0.5)
    # relevant items exist but fall outside the top 1: R_K = 0 -> AP 0
    assert mean_average_precision(q[:1], db, [1], [0, 1], topk=1) == 0.0


def test_best_case_is_not_always_relevant_first_at_the_cutoff():
    """With a cut-off, admitting a late relevant item can lower AP: the bound knows it."""
    q = np.array([[1, 1]])
    db = np.array([[1, 1]] * 9 + [[1, -1]] * 5)  # 9 items at distance 0, 5 at distance 1
    dl = np.array([0] + [1] * 8 + [1, 1, 1, 1, 0])
    res = mean_average_precision(q, db, [0], dl, topk=10, return_bounds=True)
    assert res.map == pytest.approx(1.0)  # the relevant distance-1 item is 14th: cut off
    assert res.best == pytest.approx(1.0)  # relevant-first would give (1 + 2/10) / 2 = 0.6
    assert res.worst == pytest.approx(1 / 9)  # relevant last among the 9, none admitted


def test_multi_label_relevance():
    q = np.array([[1, 1, 1]])
    db = np.array([[1, 1, 1], [1, 1, -1], [1, -1, -1]])
    ql = np.array([[1, 0, 1]])
    dl = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 0]])  # shares: yes, no, yes
    assert mean_average_precision(q, db, ql, dl) == pytest.approx((1 + 2 / 3) / 2)
    assert mean_average_precision(q, db, ql.astype(bool), dl.astype(bool)) == pytest.approx(
        (1 + 2 / 3) / 2)
    # more than 64 classes: labels span several packed words
    ql_wide = np.zeros((1, 130), dtype=np.uint8)
    ql_wide[0, 129] = 1
    dl_wide = np.zeros((3, 130), dtype=np.uint8)
    dl_wide[2, 129] = 1
    assert mean_average_precision(q, db, ql_wide, dl_wide) == pytest.approx(1 / 3)


def test_map_agrees_with_torchmetrics_on_tie_free_data():
    tm = pytest.importorskip("torchmetrics.functional.retrieval")
    rng = np.random.default_rng(0)
    bits = 64
    for trial in range(20):
        n = int(rng.integers(5, bits + 1))
        q = rng.integers(0, 2, (1, bits)).astype(bool)
        # item with distance d flips the first d bits: all distances distinct
        dists = rng.permutation(bits + 1)[:n]
        flips = np.arange(bits)[None, :] < dists[:, None]
        db = q ^ flips
        dl = rng.integers(0, 3, n)
        ql = np.array([int(rng.integers(0, 3))])
        topk = None if trial % 3 == 0 else int(rng.integers(1, n + 1))
        ours = mean_average_precision(q, db, ql, dl, topk)
        target = torch.from_numpy(dl == ql[0])
        # torchmetrics ranks by descending score and ignores items scoring <= 0
        score = torch.from_numpy((bits + 1 - dists).astype(np.float64))
        theirs = tm.retrieval_average_precision(score, target, top_k=topk)
        assert ours == pytest.approx(float(theirs), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(problem=retrieval_problem())
def test_torch_backend_equals_numpy_backend(problem):
    q, db, ql, dl, topk = problem
    a = mean_average_precision(q, db, ql, dl, topk, return_bounds=True)
    b = mean_average_precision(torch.from_numpy(np.asarray(q)), torch.from_numpy(np.asarray(db)),
                               torch.from_numpy(ql), torch.from_numpy(dl), topk, device="cpu",
                               return_bounds=True)
    assert a == b


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_give_identical_results():
    rng = np.random.default_rng(1)
    q, db = pm1(rng.integers(0, 2, (300, 16))), pm1(rng.integers(0, 2, (5000, 16)))
    ql, dl = rng.integers(0, 10, 300), rng.integers(0, 10, 5000)
    want = retrieval_report(q, db, ql, dl, topk=1000)
    got = retrieval_report(torch.from_numpy(q).cuda(), torch.from_numpy(db).cuda(),
                           torch.from_numpy(ql).cuda(), torch.from_numpy(dl).cuda(), topk=1000)
    assert got == want


def test_cpu_select_path_matches_reference_on_larger_data():
    """Sizes where the threshold-and-select kernel (not the full sort) is used."""
    rng = np.random.default_rng(5)
    for bits, n in ((16, 3000), (64, 4000), (12, 2500)):
        q, db = rng.integers(0, 2, (40, bits)), rng.integers(0, 2, (n, bits))
        ql, dl = rng.integers(0, 10, 40), rng.integers(0, 10, n)
        got = mean_average_precision(q, db, ql, dl, topk=100)
        assert got == pytest.approx(ref_map(q, db, ql, dl, 100), rel=1e-12)


# ----------------------------------------------------------------------------- P@N, PR, P@r


@settings(max_examples=60, deadline=None)
@given(problem=retrieval_problem(), ns=st.lists(st.integers(1, 70), min_size=1, max_size=3))
def test_precision_at_n_matches_reference(problem, ns):
    q, db, ql, dl, _ = problem
    got = precision_at_n(q, db, ql, dl, ns=tuple(ns))
    for n in ns:
        assert got[n] == pytest.approx(ref_precision_at(q, db, ql, dl, n), abs=1e-12)
    curve = precision_at_n_curve(q, db, ql, dl, max_n=max(ns))
    assert len(curve) == min(max(ns), len(db))
    for n in range(1, len(curve) + 1):
        assert curve[n - 1] == pytest.approx(ref_precision_at(q, db, ql, dl, n), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(problem=retrieval_problem(max_bits=20))
def test_pr_curve_and_radius_precision_match_reference(problem):
    q, db, ql, dl, _ = problem
    d, rel = ref_distances(q, db), ref_relevance(ql, dl)
    bits = np.asarray(q).shape[1]
    curve = pr_curve(q, db, ql, dl)
    assert list(curve["radius"]) == list(range(bits + 1))
    for r in range(bits + 1):
        ball = d <= r
        sizes, hits = ball.sum(1), (ball & rel).sum(1)
        nonempty = sizes > 0
        want_p = (hits[nonempty] / sizes[nonempty]).mean() if nonempty.any() else 0.0
        has_rel = rel.sum(1) > 0
        want_r = (hits[has_rel] / rel.sum(1)[has_rel]).mean() if has_rel.any() else 0.0
        assert curve["precision"][r] == pytest.approx(want_p, abs=1e-12)
        assert curve["recall"][r] == pytest.approx(want_r, abs=1e-12)
        assert curve["coverage"][r] == pytest.approx(nonempty.mean())
        field = np.where(nonempty, hits / np.maximum(sizes, 1), 0.0).mean()
        assert precision_within_radius(q, db, ql, dl, radius=r) == pytest.approx(field, abs=1e-12)


def test_radius_precision_empty_ball_counts_zero():
    db = np.array([[1, 1, 1, 1], [1, 1, 1, -1]])
    q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])  # second query: nothing within radius 2
    assert precision_within_radius(q, db, [0, 0], [0, 1], radius=2) == pytest.approx(0.25)
    curve = pr_curve(q, db, [0, 0], [0, 1])
    assert curve["precision"][0] == pytest.approx(1.0)  # the empty ball is left out
    assert curve["coverage"][0] == pytest.approx(0.5)
    assert curve["recall"][4] == pytest.approx(1.0)


def test_precision_at_n_beyond_database_is_whole_list():
    db = np.array([[1, 1], [-1, -1], [1, -1]])
    got = precision_at_n(np.array([[1, 1]]), db, [0], [0, 1, 0], ns=(1, 3, 100))
    assert got == {1: 1.0, 3: pytest.approx(2 / 3), 100: pytest.approx(2 / 3)}


# ----------------------------------------------------------------------------- report, helpers


def test_retrieval_report_is_json_and_consistent():
    rng = np.random.default_rng(2)
    q, db = pm1(rng.integers(0, 2, (30, 12))), pm1(rng.integers(0, 2, (400, 12)))
    ql, dl = rng.integers(0, 4, 30), rng.integers(0, 4, 400)
    rep = retrieval_report(q, db, ql, dl, topk=50, ns=(10, 100))
    json.dumps(rep, allow_nan=False)
    assert rep["map"] == pytest.approx(mean_average_precision(q, db, ql, dl, 50))
    bounds = mean_average_precision(q, db, ql, dl, 50, return_bounds=True)
    assert (rep["map_worst"], rep["map_best"]) == pytest.approx((bounds.worst, bounds.best))
    assert rep["topk"] == 50 and rep["bits"] == 12 and rep["n_database"] == 400
    assert rep["precision_at_n"] == pytest.approx(
        {str(k): v for k, v in precision_at_n(q, db, ql, dl, ns=(10, 100)).items()})
    assert rep["precision_radius_2"] == pytest.approx(precision_within_radius(q, db, ql, dl))
    assert rep["pr_curve"]["precision"] == pytest.approx(list(pr_curve(q, db, ql, dl)["precision"]))
    assert len(rep["precision_curve"]["n"]) == 100


def test_hamming_distances():
    q = np.array([[1, 1, -1], [-1, -1, -1]])
    db = np.array([[1, 1, -1], [-1, -1, 1]], dtype=np.float32)
    assert hamming_distances(q, db).tolist() == [[0, 3], [2, 1]]
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, (7, 130)).astype(bool), rng.integers(0, 2, (9, 130)).astype(bool)
    assert (hamming_distances(a, b) == ref_distances(pm1(a), pm1(b))).all()


def test_bit_statistics():
    codes = np.array([[1, 1, -1], [1, -1, -1], [1, 1, -1], [1, -1, -1]])
    stats = bit_statistics(codes)
    json.dumps(stats, allow_nan=False)
    assert stats["ones_fraction"] == [1.0, 0.5, 0.0]
    assert stats["bit_entropy"] == pytest.approx([0.0, 1.0, 0.0])
    assert stats["correlation"][1][1] == 1.0 and stats["correlation"][0][0] == 0.0
    assert stats["mean_abs_correlation"] == 0.0  # constant bits correlate with nothing
    assert stats["unique_codes"] == 2
    mirrored = bit_statistics(np.array([[1, -1], [-1, 1], [1, -1], [-1, 1]]))
    assert mirrored["correlation"][0][1] == pytest.approx(-1.0)
    assert mirrored["mean_abs_correlation"] == pytest.approx(1.0)
    assert mirrored["mean_abs_balance"] == 0.0


# ----------------------------------------------------------------------------- input errors


def test_input_errors_are_clear():
    codes = np.array([[1, -1], [1, 1]])
    with pytest.raises(ValueError, match="±1, \\{0,1\\} or bool"):
        mean_average_precision(np.array([[0, 2]]), codes, [0], [0, 1])
    with pytest.raises(ValueError, match="same code length"):
        mean_average_precision(np.array([[1, 1, 1]]), codes, [0], [0, 1])
    with pytest.raises(ValueError, match="db_labels"):
        mean_average_precision(codes, codes, [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="one kind"):
        mean_average_precision(codes, codes, [0, 1], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="0/1"):
        mean_average_precision(codes, codes, [[2, 0], [0, 1]], [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="topk"):
        mean_average_precision(codes, codes, [0, 1], [0, 1], topk=0)
    with pytest.raises(ValueError, match="empty"):
        mean_average_precision(codes, np.zeros((0, 2)), [0, 1], np.zeros(0, int))


def test_numpy_path_does_not_need_torch_tensors():
    # torch tensors on the CPU without device= go through the numpy kernels
    rng = np.random.default_rng(4)
    q, db = rng.integers(0, 2, (5, 10)), rng.integers(0, 2, (50, 10))
    ql, dl = rng.integers(0, 3, 5), rng.integers(0, 3, 50)
    assert mean_average_precision(torch.from_numpy(q), torch.from_numpy(db), ql, dl, 10) == \
        mean_average_precision(q, db, ql, dl, 10)
    assert metrics._torch_device(None, torch.from_numpy(q)) is None


# -- labels a user can get wrong --------------------------------------------------------------

_ENTRY_POINTS = [
    lambda q, db, ql, dl: mean_average_precision(q, db, ql, dl),
    lambda q, db, ql, dl: precision_at_n(q, db, ql, dl, ns=(1,)),
    lambda q, db, ql, dl: metrics.precision_at_n_curve(q, db, ql, dl),
    lambda q, db, ql, dl: pr_curve(q, db, ql, dl),
    lambda q, db, ql, dl: precision_within_radius(q, db, ql, dl),
    lambda q, db, ql, dl: retrieval_report(q, db, ql, dl, topk=None),
]
_CODES = np.array([[1, -1, 1], [1, 1, -1], [-1, -1, 1], [-1, 1, 1]])


@pytest.mark.parametrize("entry", _ENTRY_POINTS)
def test_negative_class_ids_are_refused_naming_the_array(entry):
    with pytest.raises(ValueError, match=r"^query_labels: class ids must be integers >= 0; "
                                         r"found -2, -1 in 2 of 4 entries$"):
        entry(_CODES, _CODES, [-1, 0, -2, 1], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^db_labels: class ids .* found -7 in 1 of 4"):
        entry(_CODES, _CODES, [0, 1, 0, 1], [0, -7, 0, 1])


@pytest.mark.parametrize("entry", _ENTRY_POINTS)
def test_mismatched_label_lengths_are_refused(entry):
    with pytest.raises(ValueError, match=r"query_labels has 3 rows but query_codes has 4 codes"):
        entry(_CODES, _CODES, [0, 1, 0], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"db_labels has 5 rows but db_codes has 4 codes"):
        entry(_CODES, _CODES, [0, 1, 0, 1], [[1, 0]] * 5)


def test_bad_label_values_are_shown_as_a_sample():
    multi_bad = [[1, 0], [2, 0], [0, -1], [1, 1]]
    with pytest.raises(ValueError, match=r"^query_labels: multi-hot labels must be 0/1; "
                                         r"found -1, 2 in 2 of 8 entries$"):
        mean_average_precision(_CODES, _CODES, multi_bad, [[1, 0]] * 4)
    with pytest.raises(ValueError, match=r"found 0.5, nan in 2 of 4"):
        mean_average_precision(_CODES, _CODES, [0.0, 0.5, np.nan, 1.0], [0, 1, 0, 1])
    many = -np.arange(1, 9)  # eight distinct bad ids: five shown, the count of the rest
    codes = np.tile(_CODES, (2, 1))
    with pytest.raises(ValueError, match=r"found -8, -7, -6, -5, -4, … \(8 distinct\) in 8 of 8"):
        mean_average_precision(codes, codes, many, np.zeros(8, int))
    with pytest.raises(ValueError, match="integer or bool labels; got dtype <U"):
        mean_average_precision(_CODES, _CODES, np.array(list("abab")), [0, 1, 0, 1])


def test_valid_label_forms_still_agree():
    ids = np.array([0, 1, 0, 1])
    want = mean_average_precision(_CODES, _CODES, ids, ids)
    assert want == ref_map(_CODES, _CODES, ids, ids, None)
    assert mean_average_precision(_CODES, _CODES, ids.astype(float), ids.astype(float)) == want
    assert mean_average_precision(_CODES, _CODES, ids.astype(bool), ids.astype(bool)) == want
    hot = np.eye(2, dtype=np.uint8)[ids]
    assert mean_average_precision(_CODES, _CODES, hot, hot) == want
    assert mean_average_precision(_CODES, _CODES, hot.astype(bool), hot.astype(float)) == want
    assert mean_average_precision(_CODES, _CODES, torch.tensor(ids), torch.tensor(ids)) == want
