"""SoftSort (Prillo & Eisenschlos, ICML 2020): a differentiable relaxation of sorting."""

from __future__ import annotations

import torch


def soft_sort(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Soft permutation matrices for sorting ``scores`` ([..., n]) in descending order.

    ``P[..., r, j] = softmax_j(−|scores_j − sortdesc(scores)_r| / τ)``: row r of P is a
    distribution over the items, concentrated on the item with the r-th largest score as
    τ → 0, so ``P @ x`` approximately reorders ``x`` by descending score. The sorted values
    keep their gradient (SoftSort as published). Returns [..., n, n].

    >>> P = soft_sort(torch.tensor([0.1, 0.9, 0.5]), temperature=1e-3)
    >>> P.argmax(dim=-1).tolist()
    [1, 2, 0]
    """
    if temperature <= 0:
        raise ValueError(f"soft_sort: temperature must be > 0, got {temperature}")
    ordered = torch.sort(scores, dim=-1, descending=True).values
    distance = (scores.unsqueeze(-2) - ordered.unsqueeze(-1)).abs()  # [..., r, j]
    return torch.softmax(-distance / temperature, dim=-1)
