"""Cosine quantisation loss (HARR's L_q): align each real code with its sign vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_quantization_loss(v: torch.Tensor) -> torch.Tensor:
    """−mean_i cos(v_i, sign(v_i)); the sign (0 → +1) carries no gradient.

    −1 exactly when every row is already ±c·(a ±1 vector).

    >>> round(float(cosine_quantization_loss(torch.tensor([[0.5, -0.5], [2.0, -2.0]]))), 6)
    -1.0
    """
    if v.ndim != 2:
        raise ValueError(f"cosine_quantization_loss: v must be [N, k], got {tuple(v.shape)}")
    v = v.float()
    target = torch.where(v >= 0, 1.0, -1.0).detach()
    return -F.cosine_similarity(v, target, dim=1).mean()
