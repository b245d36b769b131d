"""Polarisation loss: pushes pre-quantisation values away from the decision boundary 0."""

from __future__ import annotations

import torch

from contrahash.losses.context import LOCAL, BatchContext


def polarization_loss(u: torch.Tensor, margin: float = 1.0, ctx: BatchContext = LOCAL
                      ) -> torch.Tensor:
    """mean(relu(m − u ⊙ sign(u))) = mean(relu(m − |u|)) over the (global) batch.

    >>> float(polarization_loss(torch.tensor([[2.0, -0.25]]), margin=1.0))
    0.375
    """
    if margin < 0:
        raise ValueError(f"polarization_loss: margin must be >= 0, got {margin}")
    return ctx.share_of_mean(torch.relu(margin - u.float().abs()))
