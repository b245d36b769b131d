"""HARR's WTA-weighted contrastive loss (similarity-structure guidance)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def wta_contrastive_loss(
    v: torch.Tensor,
    positives: torch.Tensor,
    w: torch.Tensor,
    thr: float,
    pos: float,
    neg: float,
    temperature: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """HARR's L_wta for one batch, literally as docs/methods.md (and the official code).

    With h = l2norm(v) and E_ij = exp(h_i·h_j / τ)::

        L = −Σ_ij S_ij ((w_ij − thr)/pos) log[E_ij / (Σ_l (1 − S_il)((thr − w_il)/neg) E_il + eps)]
            / Σ_ij S_ij

    ``positives`` is S ([N, N] bool), ``w`` the WTA agreement rate ([N, N] in [0, 1]) of the
    batch's images, ``thr``/``pos``/``neg`` the training-set scalars. Positives enter with
    weight (w − thr)/pos, negatives (only in the denominator) with (thr − w)/neg; the sum
    runs over every (i, j) the caller marks, the diagonal included if S_ii is set.
    log E_ij is computed as h_i·h_j/τ (same value, no overflow).

    >>> v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> S = torch.eye(2, dtype=torch.bool); w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(float(wta_contrastive_loss(v, S, w, thr=0.5, pos=0.5, neg=0.5, temperature=1.0)), 4)
    -1.0
    """
    if v.ndim != 2:
        raise ValueError(f"wta_contrastive_loss: v must be [N, k], got {tuple(v.shape)}")
    n = v.shape[0]
    if positives.shape != (n, n) or w.shape != (n, n):
        raise ValueError(
            f"wta_contrastive_loss: S and w must be [{n}, {n}], got "
            f"{tuple(positives.shape)} and {tuple(w.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"wta_contrastive_loss: temperature must be > 0, got {temperature}")
    if pos <= 0 or neg <= 0:
        raise ValueError(
            f"wta_contrastive_loss: pos and neg must be > 0 (got {pos}, {neg}); the WTA "
            "structure is degenerate (all off-diagonal similarities equal)"
        )
    h = F.normalize(v.float(), dim=1)
    logits = h @ h.t() / temperature
    s = positives.to(logits.dtype)
    w = w.to(logits.dtype)
    negative_weight = (1.0 - s) * (thr - w) / neg
    denominator = (negative_weight * logits.exp()).sum(dim=1, keepdim=True) + eps
    positive_weight = s * (w - thr) / pos
    return -(positive_weight * (logits - denominator.log())).sum() / s.sum().clamp_min(1.0)
