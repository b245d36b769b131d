"""Baseline-method losses against straightforward loop references (independent of the code)."""

from __future__ import annotations

import math

import pytest
import torch

from contrahash.losses import (
    bit_balance_loss,
    bit_correlation_loss,
    cosine_quantization_loss,
    cubic_quantization_loss,
    half_batch_similarity_mse,
    soft_sort,
    soft_target_cross_entropy,
    sorted_nce_loss,
    squared_quantization_loss,
    wta_contrastive_loss,
)


def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.double().tolist()


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cos(a, b):
    return _dot(a, b) / (math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)))


def _sgn(x):
    return 1.0 if x >= 0 else -1.0


# -- HARR ------------------------------------------------------------------------------------

def _wta_contrastive_reference(v, S, w, thr, pos, neg, tau=0.1, eps=1e-5):
    h = [[x / math.sqrt(_dot(r, r)) for x in r] for r in _rows(v)]
    n = len(h)
    E = [[math.exp(_dot(h[i], h[j]) / tau) for j in range(n)] for i in range(n)]
    total, count = 0.0, 0.0
    for i in range(n):
        denom = eps + sum(
            (1 - S[i][l]) * ((thr - w[i][l]) / neg) * E[i][l] for l in range(n)
        )
        for j in range(n):
            if S[i][j]:
                total += ((w[i][j] - thr) / pos) * math.log(E[i][j] / denom)
                count += 1
    return -total / count


def test_wta_contrastive_matches_loop():
    torch.manual_seed(0)
    v = torch.tanh(torch.randn(7, 5))
    w = torch.rand(7, 7)
    w = (w + w.t()) / 2
    w.fill_diagonal_(1.0)
    thr, pos, neg = 0.55, float(w.max() - 0.55), float(0.55 - w.min())
    S = w >= thr
    got = wta_contrastive_loss(v, S, w, thr, pos, neg, temperature=0.1)
    want = _wta_contrastive_reference(v, S.tolist(), w.double().tolist(), thr, pos, neg)
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_wta_contrastive_rejects_degenerate_structure():
    with pytest.raises(ValueError):
        wta_contrastive_loss(torch.randn(3, 2), torch.eye(3, dtype=torch.bool), torch.eye(3), 0.5, 0.0, 0.5)


def _standardise_columns(m):
    n, k = len(m), len(m[0])
    out = [[0.0] * k for _ in range(n)]
    for c in range(k):
        col = [m[r][c] for r in range(n)]
        mu = sum(col) / n
        sd = math.sqrt(sum((x - mu) ** 2 for x in col) / n)
        for r in range(n):
            out[r][c] = (m[r][c] - mu) / (sd + 1e-5)
    return out


def test_bit_correlation_matches_loop():
    torch.manual_seed(1)
    v1, v2 = torch.randn(9, 4), torch.randn(9, 4)
    a, b = _standardise_columns(_rows(v1)), _standardise_columns(_rows(v2))
    n, k = 9, 4
    C = [[sum(a[r][i] * b[r][j] for r in range(n)) / n for j in range(k)] for i in range(k)]
    on = sum((C[i][i] - 1) ** 2 for i in range(k)) / k
    off = sum(C[i][j] ** 2 for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    assert float(bit_correlation_loss(v1, v2)) == pytest.approx(on + off, rel=1e-4)


def test_bit_correlation_zero_for_identical_decorrelated_bits():
    v = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert float(bit_correlation_loss(v, v)) == pytest.approx(0.0, abs=1e-6)


def test_cosine_quantization_matches_loop():
    torch.manual_seed(2)
    v = torch.randn(6, 5)
    want = -sum(_cos(r, [_sgn(x) for x in r]) for r in _rows(v)) / 6
    assert float(cosine_quantization_loss(v)) == pytest.approx(want, rel=1e-5)


# -- Bi-half / GreedyHash --------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 9])
def test_half_batch_similarity_mse_matches_loop(n):
    torch.manual_seed(3)
    b, f = torch.randn(n, 6).sign(), torch.randn(n, 10)
    B, Fm = _rows(b), _rows(f)
    m = n // 2
    want = sum((_cos(B[i], B[m + i]) - _cos(Fm[i], Fm[m + i])) ** 2 for i in range(m)) / m
    assert float(half_batch_similarity_mse(b, f)) == pytest.approx(want, rel=1e-5)


def test_half_batch_similarity_treats_features_as_target():
    f = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 2, requires_grad=True)
    half_batch_similarity_mse(b, f).backward()
    assert f.grad is None and b.grad is not None


def test_cubic_quantization_matches_loop():
    h = torch.tensor([[0.2, -1.5], [1.0, 3.0]])
    want = sum(abs(abs(x) - 1) ** 3 for r in _rows(h) for x in r) / 4
    assert float(cubic_quantization_loss(h)) == pytest.approx(want, rel=1e-6)


# -- NSH ---------------------------------------------------------------------------------------

def test_soft_sort_matches_loop_and_hardens():
    s = torch.tensor([[0.3, 0.9, 0.1, 0.5], [0.2, 0.2, 0.8, 0.4]])
    P = soft_sort(s, 0.25)
    for i, row in enumerate(s.tolist()):
        ordered = sorted(row, reverse=True)
        for r in range(4):
            logits = [-abs(x - ordered[r]) / 0.25 for x in row]
            z = sum(math.exp(a) for a in logits)
            for j in range(4):
                assert float(P[i, r, j]) == pytest.approx(math.exp(logits[j]) / z, rel=1e-5)
    hard = soft_sort(s[:1], 1e-4)[0]
    assert hard.argmax(dim=1).tolist() == [1, 3, 0, 2]


def _sorted_nce_reference(b1, b2, z1, z2, m=2, tau=0.3):
    B1, B2, Z1, Z2 = _rows(b1), _rows(b2), _rows(z1), _rows(z2)
    n, k = len(B1), len(B1[0])
    tau_s = 1.0 / k
    total = 0.0
    for i in range(n):
        s = [_dot(B1[i], B2[j]) / (2 * k) + 0.5 for j in range(n)]
        ordered = sorted(s, reverse=True)
        c = []
        for r in range(n):
            logits = [-abs(s[j] - ordered[r]) / tau_s for j in range(n)]
            top = max(logits)
            weights = [math.exp(a - top) for a in logits]
            z = sum(weights)
            E = [sum(weights[j] / z * Z1[j][d] for j in range(n)) for d in range(len(Z1[0]))]
            c.append(_cos(E, Z2[i]))
        for r in range(m):
            logits = [c[r] / tau] + [x / tau for x in c[m:]]
            top = max(logits)
            total += -logits[0] + top + math.log(sum(math.exp(a - top) for a in logits))
    return total / (n * m)


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_sorted_nce_matches_loop(chunk):
    torch.manual_seed(4)
    b1, b2 = torch.tanh(torch.randn(6, 4)), torch.tanh(torch.randn(6, 4))
    z1 = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    z2 = torch.nn.functional.normalize(torch.randn(6, 3), dim=1)
    got = sorted_nce_loss(b1, b2, z1, z2, n_positives=2, temperature=0.3, chunk=chunk)
    assert float(got) == pytest.approx(_sorted_nce_reference(b1, b2, z1, z2), rel=1e-4)


def test_squared_quantization_matches_loop():
    torch.manual_seed(5)
    x = torch.tanh(torch.randn(5, 7))
    want = sum(sum((v - _sgn(v)) ** 2 for v in r) for r in _rows(x)) / (5 * 7)
    assert float(squared_quantization_loss(x)) == pytest.approx(want, rel=1e-5)


# -- WCH ---------------------------------------------------------------------------------------

def test_soft_target_cross_entropy_matches_loop():
    torch.manual_seed(6)
    logits, target = torch.randn(4, 5), torch.rand(4, 5) * 2
    total = 0.0
    for lg, tg in zip(_rows(logits), _rows(target), strict=True):
        lse = math.log(sum(math.exp(a) for a in lg))
        total += -sum(t * (a - lse) for a, t in zip(lg, tg, strict=True))
    assert float(soft_target_cross_entropy(logits, target)) == pytest.approx(total / 4, rel=1e-5)


def test_bit_balance_matches_loop():
    b = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-0.5, 1.0, 1.0]])
    rows = _rows(b)
    col_means = [sum(r[c] for r in rows) / 3 for c in range(3)]
    want = (sum(col_means) / 3) ** 2 - sum(x * x for r in rows for x in r) / 9
    assert float(bit_balance_loss(b)) == pytest.approx(want, rel=1e-6)
