"""Bit correlation reduction (HARR's L_bcr): two views' bit cross-correlation → identity."""

from __future__ import annotations

import torch


def bit_correlation_loss(v1: torch.Tensor, v2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """mean_i (C_ii − 1)² + mean_{i≠j} C_ij², with C = V̂¹ᵀV̂² / N.

    V̂ standardises each bit (column) over the batch: zero mean, unit (population) standard
    deviation, so C is the k×k cross-correlation between the views' bits. Zero when every
    bit agrees perfectly across views and bits are uncorrelated with each other.

    >>> v = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    >>> round(float(bit_correlation_loss(v, v)), 6)
    0.0
    """
    if v1.shape != v2.shape or v1.ndim != 2:
        raise ValueError(
            f"bit_correlation_loss: views must both be [N, k], got {tuple(v1.shape)} and "
            f"{tuple(v2.shape)}"
        )
    n, k = v1.shape

    def standardise(v: torch.Tensor) -> torch.Tensor:
        v = v.float() - v.float().mean(dim=0, keepdim=True)
        return v / (v.pow(2).mean(dim=0, keepdim=True).sqrt() + eps)

    c = standardise(v1).t() @ standardise(v2) / n
    on_diagonal = (torch.diagonal(c) - 1.0).pow(2).mean()
    if k == 1:
        return on_diagonal
    off = c - torch.diag_embed(torch.diagonal(c))
    return on_diagonal + off.pow(2).sum() / (k * (k - 1))
