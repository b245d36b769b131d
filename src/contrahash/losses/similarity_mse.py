"""Cosine-similarity-preserving MSE over half-batch pairs (Bi-half, GreedyHash unsupervised)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def half_batch_similarity_mse(codes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """MSE between cos(b_a, b_b) and cos(sg f_a, sg f_b) for the pairs (i, m + i), m = N // 2.

    As both official codes: row i of the first half is paired with row i of the second half
    (``F.cosine_similarity(x[:N//2], x[N//2:])``, elementwise, N/2 pairs — not all cross
    pairs). With an odd batch the last row is left out. The feature side is a target
    (stop-gradient).

    >>> b = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    >>> f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    >>> float(half_batch_similarity_mse(b, f))  # pairs (0,2): 1 vs 1, (1,3): -1 vs 1
    2.0
    """
    if codes.ndim != 2 or features.ndim != 2 or codes.shape[0] != features.shape[0]:
        raise ValueError(
            "half_batch_similarity_mse: codes [N, k] and features [N, d] must share N, got "
            f"{tuple(codes.shape)} and {tuple(features.shape)}"
        )
    m = codes.shape[0] // 2
    if m == 0:
        raise ValueError("half_batch_similarity_mse needs a batch of at least 2")
    codes = codes.float()
    features = features.float().detach()
    code_similarity = F.cosine_similarity(codes[:m], codes[m : 2 * m], dim=1)
    feature_similarity = F.cosine_similarity(features[:m], features[m : 2 * m], dim=1)
    return F.mse_loss(code_similarity, feature_similarity)
