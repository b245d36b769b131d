"""Symmetric KL divergence between factorised Bernoulli code distributions (CIBHash)."""

from __future__ import annotations

import torch

from contrahash.losses.context import LOCAL, BatchContext


def bernoulli_kl_rows(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL(Bern(p) ‖ Bern(q)) summed over bits, per row ``[N]``."""
    p = p.float().clamp(eps, 1 - eps)
    q = q.float().clamp(eps, 1 - eps)
    kl = p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())
    return kl.sum(dim=1)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """KL(Bern(p) ‖ Bern(q)) summed over bits, averaged over rows."""
    return bernoulli_kl_rows(p, q, eps).mean()


def symmetric_bernoulli_kl(p1: torch.Tensor, p2: torch.Tensor, ctx: BatchContext = LOCAL
                           ) -> torch.Tensor:
    """½[KL(Bern(p1) ‖ Bern(sg p2)) + KL(Bern(p2) ‖ Bern(sg p1))], as CIBHash's official code;
    each KL averaged over the (global) batch's rows.

    >>> p = torch.full((2, 3), 0.3)
    >>> float(symmetric_bernoulli_kl(p, p))
    0.0
    """
    return 0.5 * (ctx.share_of_mean(bernoulli_kl_rows(p1, p2.detach()))
                  + ctx.share_of_mean(bernoulli_kl_rows(p2, p1.detach())))
