"""NT-Xent (normalised temperature-scaled cross-entropy), SimCLR's contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.3,
    pos_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """NT-Xent over the 2N views of a batch, averaged over all 2N anchors.

    Row i of ``z1`` and row i of ``z2`` are a positive pair; the other 2N − 2 views of
    the batch are negatives. Similarity is cosine divided by ``temperature``.

    ``pos_mask`` (optional, [N, N] bool) marks further pairs (i in view 1, j in view 2)
    that must not be used as negatives (e.g. known duplicates); they are dropped from
    the denominator. The diagonal is always the positive.

    >>> z = torch.eye(4)
    >>> round(float(nt_xent(z, z, temperature=1.0)), 4)  # log(e + 6) - 1 for orthogonal codes
    1.1654
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: views must both be [N, d], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    if pos_mask is not None:
        extra = pos_mask.to(device=z.device, dtype=torch.bool) & ~torch.eye(n, dtype=torch.bool, device=z.device)
        block = torch.zeros(2 * n, 2 * n, dtype=torch.bool, device=z.device)
        block[:n, n:] = extra
        block[n:, :n] = extra.t()
        sim = sim.masked_fill(block, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
