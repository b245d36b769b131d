"""GreedyHash's quantisation penalty: pull |h| towards 1 with a cubic."""

from __future__ import annotations

import torch


def cubic_quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """mean(| |h| − 1 |³) (GreedyHash, official unsupervised code).

    >>> float(cubic_quantization_loss(torch.tensor([[1.0, -1.0, 0.0, 3.0]])))
    2.25
    """
    return (h.float().abs() - 1.0).abs().pow(3).mean()
