"""WTA hashing and HARR's similarity structure, checked on cases small enough to do by hand."""

from __future__ import annotations

import pytest
import torch

from contrahash.methods.wta import (
    harr_structure,
    wta_codes,
    wta_permutations,
    wta_similarity,
    wta_threshold,
)

# Four 3-d vectors and three hand-picked windows (first two permuted dimensions each).
HAND_FEATURES = torch.tensor(
    [[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0], [1.0, 2.0, 3.0]]
)
HAND_PERMS = torch.tensor([[0, 1], [1, 2], [2, 0]])
# argmax position inside each window, worked out by hand:
#   x0 = (3,1,2): (3,1)→0  (1,2)→1  (2,3)→1
#   x1 = (1,3,2): (1,3)→1  (3,2)→0  (2,1)→0
#   x2 = (2,1,3): (2,1)→0  (1,3)→1  (3,2)→0
#   x3 = (1,2,3): (1,2)→1  (2,3)→1  (3,1)→0
HAND_CODES = [[0, 1, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0]]
# agreements: (0,1)=0 (0,2)=2 (0,3)=1 (1,2)=1 (1,3)=2 (2,3)=2, diagonal 3
HAND_S2 = [[3, 0, 2, 1], [0, 3, 1, 2], [2, 1, 3, 2], [1, 2, 2, 3]]


def test_hand_codes_and_agreements():
    codes = wta_codes(HAND_FEATURES, permutations=HAND_PERMS)
    assert codes.tolist() == HAND_CODES
    assert wta_similarity(codes).tolist() == HAND_S2


def test_hand_structure_percentile_half():
    # 12 ordered off-diagonal values: 0,0,1,1,1,1,2,2,2,2,2,2; k = int(12·0.5) = 6 → 6th smallest = 1
    s = harr_structure(HAND_FEATURES, percentile=0.5, permutations=HAND_PERMS)
    assert s.thr == pytest.approx(1 / 3)
    assert s.pos == pytest.approx(2 / 3 - 1 / 3)  # max off-diagonal w = 2/3
    assert s.neg == pytest.approx(1 / 3 - 0.0)  # min off-diagonal w = 0
    expected_S = [[c >= 1 for c in row] for row in HAND_S2]
    assert s.S.tolist() == expected_S
    assert torch.allclose(s.w, torch.tensor(HAND_S2, dtype=torch.float32) / 3)


def test_hand_structure_percentile_default_is_degenerate_on_top():
    # k = int(12·0.7) = 8 → 8th smallest = 2 = max off-diagonal, so pos = 0
    s = harr_structure(HAND_FEATURES, percentile=0.3, permutations=HAND_PERMS)
    assert s.thr == pytest.approx(2 / 3)
    assert s.pos == pytest.approx(0.0)
    assert s.neg == pytest.approx(2 / 3)


def test_ties_go_to_first_position():
    x = torch.tensor([[1.0, 1.0, 0.0]])
    assert wta_codes(x, permutations=torch.tensor([[1, 0], [2, 1]])).tolist() == [[0, 1]]


def test_permutations_are_seeded_and_window_is_cut_to_d():
    a = wta_permutations(10, n_perm=5, window=3, seed=1)
    assert torch.equal(a, wta_permutations(10, n_perm=5, window=3, seed=1))
    assert not torch.equal(a, wta_permutations(10, n_perm=5, window=3, seed=2))
    for row in a.tolist():
        assert len(set(row)) == 3 and all(0 <= i < 10 for i in row)
    assert wta_permutations(4, n_perm=2, window=8).shape == (2, 4)


def test_codes_and_similarity_match_loops():
    torch.manual_seed(0)
    x = torch.randn(23, 17)
    perms = wta_permutations(17, n_perm=40, window=5, seed=3)
    codes = wta_codes(x, permutations=perms, chunk=7)
    for n in range(x.shape[0]):
        for p in range(perms.shape[0]):
            window = [float(x[n, i]) for i in perms[p]]
            assert codes[n, p] == window.index(max(window))
    counts = wta_similarity(codes, chunk=5)
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            assert counts[i, j] == sum(int(a == b) for a, b in zip(codes[i].tolist(), codes[j].tolist(), strict=True))
    assert wta_codes(x, 40, 5, 3).equal(codes)


def test_threshold_from_histogram_matches_full_matrix():
    torch.manual_seed(1)
    codes = wta_codes(torch.randn(150, 32), n_perm=64, window=4, seed=0)
    counts = wta_similarity(codes).float()
    off = counts[~torch.eye(150, dtype=torch.bool)]
    k = int(off.numel() * 0.7)
    thr = float(torch.kthvalue(off, k).values) / 64
    stats = wta_threshold(codes, 0.3, chunk=17)
    assert stats.thr == pytest.approx(thr)
    assert stats.pos == pytest.approx(float(off.max()) / 64 - thr)
    assert stats.neg == pytest.approx(thr - float(off.min()) / 64)
    assert wta_threshold(codes, 0.3, chunk=1000) == stats


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        wta_codes(torch.randn(3, 4, 5))
    with pytest.raises(ValueError):
        wta_threshold(torch.zeros(5, 8, dtype=torch.long), percentile=1.5)
    with pytest.raises(ValueError):
        wta_similarity(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
