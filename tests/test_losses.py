"""Losses against hand-written references and closed-form values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrahash.losses import (
    cosine_reconstruction_loss,
    decorrelation_loss,
    nt_xent,
    polarization_loss,
    symmetric_bernoulli_kl,
)


def nt_xent_reference(z1, z2, t):
    """Plain loops: for every anchor of the 2N views, -log softmax of its positive."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n2) if j != i)
        total += -(float(z[i] @ z[pos]) / t - math.log(denom))
    return total / n2


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), d=st.integers(2, 8), t=st.floats(0.1, 2.0), seed=st.integers(0, 999))
def test_nt_xent_matches_reference(n, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert float(nt_xent(z1, z2, t)) == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-4, abs=1e-5)


def test_nt_xent_identical_orthogonal_views_closed_form():
    # N one-hot codes: positive similarity 1, the 2N-2 negatives 0 → log(e^{1/t} + 2N-2) - 1/t
    n, t = 4, 0.5
    z = torch.eye(n)
    expected = math.log(math.exp(1 / t) + 2 * n - 2) - 1 / t
    assert float(nt_xent(z, z, t)) == pytest.approx(expected, rel=1e-6)


def test_nt_xent_pos_mask_removes_negatives():
    z1 = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    z2 = z1.clone()
    plain = nt_xent(z1, z2, 0.3)
    masked = nt_xent(z1, z2, 0.3, pos_mask=torch.ones(2, 2, dtype=torch.bool))
    assert float(masked) < float(plain)


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="views"):
        nt_xent(torch.ones(2, 2), torch.ones(3, 2))


def test_symmetric_bernoulli_kl_reference_and_stop_gradient():
    p1 = torch.tensor([[0.2, 0.7]], requires_grad=True)
    p2 = torch.tensor([[0.6, 0.4]], requires_grad=True)

    def kl(a, b):
        return sum(x * math.log(x / y) + (1 - x) * math.log((1 - x) / (1 - y)) for x, y in zip(a, b, strict=True))

    a, b = p1.detach()[0].tolist(), p2.detach()[0].tolist()
    expected = 0.5 * (kl(a, b) + kl(b, a))
    out = symmetric_bernoulli_kl(p1, p2)
    assert float(out) == pytest.approx(expected, rel=1e-5)
    out.backward()
    # each term only differentiates its first argument: d/dp1 of KL(p1||sg p2) * 0.5
    x, y = a[0], b[0]
    assert float(p1.grad[0, 0]) == pytest.approx(0.5 * (math.log(x / y) - math.log((1 - x) / (1 - y))), rel=1e-4)


def test_polarization_loss_values():
    u = torch.tensor([[2.0, -0.5, 0.0, -3.0]])
    assert float(polarization_loss(u, 1.0)) == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    assert float(polarization_loss(u, 0.0)) == 0.0


def test_decorrelation_loss_independent_and_identical():
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(decorrelation_loss(x)) == pytest.approx(0.0, abs=1e-6)
    same = torch.randn(16, 1).repeat(1, 3)
    assert float(decorrelation_loss(same)) == pytest.approx(1.0, rel=1e-3)


def test_cosine_reconstruction_loss_detaches_target():
    f = torch.randn(4, 6, requires_grad=True)
    r = torch.randn(4, 6, requires_grad=True)
    loss = cosine_reconstruction_loss(r, f)
    loss.backward()
    assert f.grad is None and r.grad is not None
    assert float(cosine_reconstruction_loss(-f.detach(), f)) == pytest.approx(2.0, rel=1e-5)
