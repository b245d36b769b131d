"""Quantisation helpers shared by every method: straight-through sign and code conversion.

Codes travel through the library in one of two forms:

* ``±1`` float/int tensors or arrays of shape ``[n, k]`` (what the methods produce), and
* packed ``uint8`` bit arrays of shape ``[n, ceil(k/8)]`` (what the index stores;
  see :func:`contrahash.retrieval.index.pack_codes`).
"""

from __future__ import annotations

import numpy as np
import torch


class _SignST(torch.autograd.Function):
    """sign() forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return grad


def sign_st(x: torch.Tensor) -> torch.Tensor:
    """Binarise to ±1 with a straight-through gradient (0 maps to +1).

    >>> x = torch.tensor([-0.3, 0.0, 2.0], requires_grad=True)
    >>> b = sign_st(x); b.sum().backward()
    >>> b.tolist(), x.grad.tolist()
    ([-1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """
    return _SignST.apply(x)


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """Test-time binarisation: ±1 floats, 0 maps to +1 (no gradient needed)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.device)


def sign(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Deterministic ±1 int8 codes from real values (0 maps to +1), as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.where(np.asarray(x) >= 0, 1, -1).astype(np.int8)


class _BiHalf(torch.autograd.Function):
    """Bi-half layer (Li & van Gemert, AAAI 2021): per bit, the top half of the batch is +1."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: float) -> torch.Tensor:  # noqa: D102
        n = u.shape[0]
        order = torch.argsort(u, dim=0, descending=True, stable=True)
        b = torch.full_like(u, -1.0)
        b.scatter_(0, order[: (n + 1) // 2], 1.0)
        ctx.save_for_backward(u, b)
        ctx.gamma = gamma
        return b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        u, b = ctx.saved_tensors
        n, k = u.shape
        return grad + ctx.gamma * (u - b) / (n * k), None


def bihalf_sign(u: torch.Tensor, gamma: float = 6.0) -> torch.Tensor:
    """Balanced binarisation of a batch ``u`` ([N, k]): per column, the larger half → +1.

    Every bit is exactly half ones on the batch (the optimal-transport solution for a
    half/half prior). Backward passes the gradient straight through and adds
    ``γ(u − b)/(N·k)`` as the paper's code. Use ``sign(u)`` at inference.

    >>> bihalf_sign(torch.tensor([[0.3], [-2.0], [0.1], [5.0]])).flatten().tolist()
    [1.0, -1.0, -1.0, 1.0]
    """
    if u.ndim != 2:
        raise ValueError(f"bihalf_sign expects [N, k], got shape {tuple(u.shape)}")
    return _BiHalf.apply(u, float(gamma))
