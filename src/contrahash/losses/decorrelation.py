"""Bit decorrelation penalty on a batch of (standardised) pre-quantisation values."""

from __future__ import annotations

import torch


def decorrelation_loss(u: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared off-diagonal entry of the k×k correlation matrix of ``u`` ([N, k]).

    Zero when the k dimensions are uncorrelated over the batch; 1 when all are identical.

    >>> u = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    >>> round(float(decorrelation_loss(u)), 3)
    1.0
    """
    if u.ndim != 2 or u.shape[1] < 2:
        return u.new_zeros(())
    x = u.float() - u.float().mean(dim=0, keepdim=True)
    x = x / (x.pow(2).mean(dim=0, keepdim=True).sqrt() + eps)
    corr = x.t() @ x / x.shape[0]
    k = corr.shape[0]
    off = corr - torch.diag_embed(torch.diagonal(corr))
    return off.pow(2).sum() / (k * (k - 1))
