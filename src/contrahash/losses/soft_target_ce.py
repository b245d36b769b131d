"""Cross-entropy against soft (weighted) target rows."""

from __future__ import annotations

import torch


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i −Σ_j target_ij · log softmax(logits_i)_j.

    Target rows are used as given (not renormalised): WCH's rows weight the true pair 1
    and the other pairs by their relative patch similarity.

    >>> round(float(soft_target_cross_entropy(torch.zeros(2, 2), torch.eye(2))), 4)  # log 2
    0.6931
    """
    if logits.shape != target.shape or logits.ndim != 2:
        raise ValueError(
            f"soft_target_cross_entropy: logits and target must both be [N, M], got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    log_probabilities = torch.log_softmax(logits.float(), dim=1)
    return -(target.to(log_probabilities.dtype) * log_probabilities).sum(dim=1).mean()
