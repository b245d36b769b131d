"""Cosine reconstruction loss: the code must carry enough to rebuild the backbone feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrahash.losses.context import LOCAL, BatchContext


def cosine_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor,
                               ctx: BatchContext = LOCAL) -> torch.Tensor:
    """mean(1 − cos(g(b), sg(f))) over the (global) batch's rows; the target is detached.

    >>> f = torch.randn(3, 5)
    >>> round(float(cosine_reconstruction_loss(2 * f, f)), 6)
    0.0
    """
    cos = F.cosine_similarity(reconstruction.float(), target.detach().float(), dim=1)
    return ctx.share_of_mean(1 - cos)
