"""Squared quantisation error (NSH): mean squared distance of b̃ to sign(b̃)."""

from __future__ import annotations

import torch


def squared_quantization_loss(x: torch.Tensor) -> torch.Tensor:
    """mean_i ‖x_i − sign(x_i)‖² / k — the squared error averaged over samples and bits.

    Averaging over bits too keeps the term in [0, 1] for tanh outputs whatever the code
    length (sign 0 → +1, no gradient through the sign).

    >>> float(squared_quantization_loss(torch.tensor([[0.5, -1.0], [1.0, 0.0]])))
    0.3125
    """
    if x.ndim != 2:
        raise ValueError(f"squared_quantization_loss: x must be [N, k], got {tuple(x.shape)}")
    x = x.float()
    return (x - torch.where(x >= 0, 1.0, -1.0).detach()).pow(2).mean()
