"""SortedNCE (NSH): contrast latents re-ordered by soft-sorted code similarities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from contrahash.losses.soft_sort import soft_sort


def sorted_nce_loss(
    b1: torch.Tensor,
    b2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    n_positives: int = 2,
    temperature: float = 0.3,
    sort_temperature: float | None = None,
    chunk: int = 16,
) -> torch.Tensor:
    """NSH's SortedNCE, literally as docs/methods.md.

    * s_ij = b̃¹_i·b̃²_j / (2k) + 0.5 (one minus the relaxed normalised Hamming distance);
    * SoftSort of each row, τ_s = 1/k by default: P_{i,r,j} = softmax_j(−|s_ij − sortdesc(s_i)_r|/τ_s);
    * sorted latents E_{i,r} = Σ_j P_{i,r,j} z¹_j and scores c_{i,r} = cos(E_{i,r}, z²_i);
    * the first m = ``n_positives`` sorted positions are positives, the rest negatives:
      L = mean_i (1/m) Σ_{r<m} CE([c_{i,r}, c_{i,m:}] / τ, target 0).

    Memory is O(chunk · N · (N + D)) — P is built ``chunk`` anchor rows at a time (the full
    tensor would be N³).

    >>> g = torch.Generator().manual_seed(0)
    >>> b = torch.tanh(torch.randn(6, 8, generator=g)); z = F.normalize(torch.randn(6, 4, generator=g))
    >>> bool(sorted_nce_loss(b, b, z, z) > 0)
    True
    """
    if b1.shape != b2.shape or b1.ndim != 2:
        raise ValueError(f"sorted_nce_loss: b1, b2 must both be [N, k], got {tuple(b1.shape)}, {tuple(b2.shape)}")
    if z1.shape != z2.shape or z1.ndim != 2 or z1.shape[0] != b1.shape[0]:
        raise ValueError(
            f"sorted_nce_loss: z1, z2 must both be [N, D] with N = {b1.shape[0]}, got "
            f"{tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    n, k = b1.shape
    m = int(n_positives)
    if not 1 <= m < n:
        raise ValueError(f"sorted_nce_loss: need 1 <= n_positives < N, got {m} with N = {n}")
    if temperature <= 0:
        raise ValueError(f"sorted_nce_loss: temperature must be > 0, got {temperature}")
    tau_s = 1.0 / k if sort_temperature is None else float(sort_temperature)
    b1, b2, z1, z2 = b1.float(), b2.float(), z1.float(), z2.float()
    similarity = b1 @ b2.t() / (2 * k) + 0.5  # [N, N]
    total = b1.new_zeros(())
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        P = soft_sort(similarity[rows], tau_s)  # [c, N (r), N (j)]
        sorted_latents = P @ z1  # [c, N (r), D]
        scores = F.cosine_similarity(sorted_latents, z2[rows].unsqueeze(1), dim=-1)  # [c, N]
        negatives = scores[:, m:]
        for r in range(m):
            logits = torch.cat([scores[:, r : r + 1], negatives], dim=1) / temperature
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            total = total + F.cross_entropy(logits, target, reduction="sum")
    return total / (n * m)
