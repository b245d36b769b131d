"""NT-Xent (normalised temperature-scaled cross-entropy), SimCLR's contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrahash.losses.context import LOCAL, BatchContext


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.3,
    pos_mask: torch.Tensor | None = None,
    ctx: BatchContext = LOCAL,
) -> torch.Tensor:
    """NT-Xent over the 2N views of a batch, averaged over all 2N anchors.

    Row i of ``z1`` and row i of ``z2`` are a positive pair; the other 2N − 2 views of
    the batch are negatives. Similarity is cosine divided by ``temperature``.

    With several processes (``ctx``, :mod:`contrahash.losses.context`) the batch is the
    global one: every process's rows are negatives of every anchor, and the value is this
    process's share — its anchors' terms over the global number of anchors.

    ``pos_mask`` (optional, [N, N] bool over this process's rows) marks further pairs
    (i in view 1, j in view 2) that must not be used as negatives (e.g. known duplicates);
    they are dropped from the denominator. The diagonal is always the positive.

    >>> z = torch.eye(4)
    >>> round(float(nt_xent(z, z, temperature=1.0)), 4)  # log(e + 6) - 1 for orthogonal codes
    1.1654
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: views must both be [N, d], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n, offset, total = z1.shape[0], ctx.offset(z1), ctx.rows(z1)
    device = z1.device
    everyone = F.normalize(torch.cat([ctx.gather(z1.float()), ctx.gather(z2.float())]), dim=1)
    # this process's anchors: its rows of view 1, then its rows of view 2
    mine = torch.cat([torch.arange(offset, offset + n),
                      torch.arange(total + offset, total + offset + n)]).to(device)
    sim = everyone[mine] @ everyone.t() / temperature
    excluded = torch.zeros_like(sim, dtype=torch.bool)
    excluded[torch.arange(2 * n, device=device), mine] = True  # an anchor is not its own negative
    if pos_mask is not None:
        extra = pos_mask.to(device=device, dtype=torch.bool) & ~torch.eye(n, dtype=torch.bool, device=device)
        excluded[:n, total + offset: total + offset + n] |= extra
        excluded[n:, offset: offset + n] |= extra.t()
    sim = sim.masked_fill(excluded, float("-inf"))
    target = torch.cat([mine[n:], mine[:n]])
    return ctx.share_of_mean(F.cross_entropy(sim, target, reduction="none"))
