"""Cosine reconstruction loss: the code must carry enough to rebuild the backbone feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 − cos(g(b), sg(f))); the target is detached.

    >>> f = torch.randn(3, 5)
    >>> round(float(cosine_reconstruction_loss(2 * f, f)), 6)
    0.0
    """
    return (1 - F.cosine_similarity(reconstruction.float(), target.detach().float(), dim=1)).mean()
