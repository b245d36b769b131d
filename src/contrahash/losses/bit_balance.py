"""WCH's bit-balance-minus-magnitude regulariser on a batch of codes."""

from __future__ import annotations

import torch


def bit_balance_loss(b: torch.Tensor) -> torch.Tensor:
    """(mean over bits of the batch-mean of b)² − mean(b²).

    The first term is zero when ±1 are balanced over the batch overall; the second rewards
    magnitude (with ±1 codes it is the constant −1 in value, while a straight-through
    estimator still passes its gradient, pushing pre-sign values outwards).

    >>> float(bit_balance_loss(torch.tensor([[1.0, 1.0], [1.0, -1.0]])))
    -0.75
    """
    if b.ndim != 2:
        raise ValueError(f"bit_balance_loss: b must be [N, k], got {tuple(b.shape)}")
    b = b.float()
    return b.mean(dim=0).mean().pow(2) - b.pow(2).mean()
