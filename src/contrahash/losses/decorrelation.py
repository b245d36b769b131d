"""Bit decorrelation penalty on a batch of (standardised) pre-quantisation values."""

from __future__ import annotations

import torch

from contrahash.losses.context import LOCAL, BatchContext


def decorrelation_loss(u: torch.Tensor, eps: float = 1e-5, ctx: BatchContext = LOCAL
                       ) -> torch.Tensor:
    """Mean squared off-diagonal entry of the k×k correlation matrix of ``u`` ([N, k]).

    Zero when the k dimensions are uncorrelated over the batch; 1 when all are identical.
    With several processes (``ctx``) the correlations are the global batch's, and the value
    this process's share of the penalty.

    >>> u = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    >>> round(float(decorrelation_loss(u)), 3)
    1.0
    """
    if u.ndim != 2 or u.shape[1] < 2:
        return u.new_zeros(())
    x = u.float()
    x = x - ctx.mean(x, keepdim=True)
    x = x / (ctx.mean(x.pow(2), keepdim=True).sqrt() + eps)
    corr = ctx.all_sum(x.t() @ x) / ctx.rows(x)
    k = corr.shape[0]
    off = corr - torch.diag_embed(torch.diagonal(corr))
    return ctx.share(off.pow(2).sum() / (k * (k - 1)))
