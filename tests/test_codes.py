"""Straight-through sign and bi-half binarisation."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contrahash.models.codes import bihalf_sign, sign, sign_st


def test_sign_st_forward_and_identity_gradient():
    x = torch.tensor([-2.0, -0.0, 0.0, 0.5], requires_grad=True)
    b = sign_st(x)
    assert b.tolist() == [-1.0, 1.0, 1.0, 1.0]
    (b * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_sign_numpy():
    assert sign(torch.tensor([[-1e-9, 0.0, 3.0]])).tolist() == [[-1, 1, 1]]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_bihalf_is_balanced_and_order_preserving(n, k, seed):
    u = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    b = bihalf_sign(u)
    assert ((b == 1).sum(0) == (n + 1) // 2).all()
    for j in range(k):  # every +1 is at least as large as every -1
        assert u[b[:, j] == 1, j].min() >= u[b[:, j] == -1, j].max()


def test_bihalf_gradient_adds_gamma_term():
    u = torch.tensor([[0.3], [-0.2]], requires_grad=True)
    b = bihalf_sign(u, gamma=6.0)
    b.sum().backward()
    expected = 1 + 6.0 * (u.detach() - b.detach()) / 2
    assert torch.allclose(u.grad, expected)
