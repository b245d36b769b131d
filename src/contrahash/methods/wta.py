"""Winner-Take-All (WTA) hashing and HARR's pairwise similarity structure.

WTA hashing (Yagnik et al., "The Power of Comparative Reasoning", ICCV 2011): for each of
``n_perm`` random permutations of the feature dimensions, the code of a vector is the
position of the largest value among the first ``window`` permuted dimensions. Two vectors
agree on a permutation when their codes are equal; the number of agreements ``S2`` is a
rank-order similarity that HARR (Ma et al., ACM TOMM 2023) turns into pseudo-labels:

* ``w = S2 / n_perm``;
* ``thr`` — the value above which the top ``percentile`` (30%) of the off-diagonal pairs
  lie: the ``int(M·(1 − p))``-th smallest of the ``M = N(N − 1)`` off-diagonal values (the
  official code's ``kthvalue`` rule, which it applies to all N² entries, diagonal included —
  a difference of N entries out of N², negligible for N in the thousands);
* ``S = [w ≥ thr]`` positives, ``pos = max(w) − thr``, ``neg = thr − min(w)`` (off-diagonal).

Everything is vectorised: codes are one ``argmax`` over an ``[N, n_perm, window]`` gather;
agreement counts are a one-hot matrix product (exact in float32: counts ≤ n_perm < 2²⁴).
:func:`wta_threshold` computes ``thr``/``pos``/``neg`` from a histogram of the counts, in
row chunks, without ever holding the ``N × N`` matrix (5,000 training images: ~1 s on two
CPU cores), so a training run only has to keep the ``[N, n_perm]`` codes and three scalars.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def wta_permutations(d: int, n_perm: int = 512, window: int = 8, seed: int = 0) -> torch.Tensor:
    """The first ``window`` indices of ``n_perm`` seeded random permutations of ``range(d)``.

    Returns ``[n_perm, min(window, d)]`` long (a window wider than ``d`` is cut to ``d``,
    as the official code does).

    >>> wta_permutations(5, n_perm=3, window=2, seed=0).shape
    torch.Size([3, 2])
    """
    if d <= 0 or n_perm <= 0 or window <= 0:
        raise ValueError(f"wta: d, n_perm and window must be positive, got {d}, {n_perm}, {window}")
    window = min(window, d)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.stack([torch.randperm(d, generator=generator)[:window] for _ in range(n_perm)])


def wta_codes(
    features: torch.Tensor,
    n_perm: int = 512,
    window: int = 8,
    seed: int = 0,
    *,
    permutations: torch.Tensor | None = None,
    chunk: int = 4096,
) -> torch.Tensor:
    """WTA codes ``[N, n_perm]`` (long): argmax position among each permutation's window.

    Ties go to the first position (``torch.argmax``), like the official code's ``max``.
    ``permutations`` ([n_perm, window] indices) overrides ``n_perm``/``window``/``seed``.

    >>> x = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    >>> wta_codes(x, permutations=torch.tensor([[0, 1], [2, 0]])).tolist()
    [[0, 1], [1, 0]]
    """
    if features.ndim != 2:
        raise ValueError(f"wta_codes expects [N, d] features, got shape {tuple(features.shape)}")
    if permutations is None:
        permutations = wta_permutations(features.shape[1], n_perm, window, seed)
    perms = permutations.to(features.device, torch.long)
    out = []
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk]
        out.append(block[:, perms].argmax(dim=-1))  # [n, n_perm, window] -> [n, n_perm]
    if not out:
        return torch.empty(0, perms.shape[0], dtype=torch.long, device=features.device)
    return torch.cat(out)


def _one_hot(codes: torch.Tensor, n_values: int) -> torch.Tensor:
    """[N, P] codes → [N, P·n_values] float32 indicator rows (dot product = agreements)."""
    return F.one_hot(codes.long(), n_values).reshape(codes.shape[0], -1).float()


def wta_similarity(
    codes: torch.Tensor, other: torch.Tensor | None = None, chunk: int = 2048
) -> torch.Tensor:
    """Agreement counts ``S2[i, j] = #{p : codes[i, p] == other[j, p]}`` as int32.

    ``other`` defaults to ``codes`` (the symmetric ``[N, N]`` structure, diagonal = n_perm).

    >>> c = torch.tensor([[0, 1, 2], [0, 1, 0], [1, 0, 2]])
    >>> wta_similarity(c).tolist()
    [[3, 2, 1], [2, 3, 0], [1, 0, 3]]
    """
    other = codes if other is None else other
    if codes.ndim != 2 or other.ndim != 2 or codes.shape[1] != other.shape[1]:
        raise ValueError(
            f"wta_similarity: codes must be [N, P] with equal P, got {tuple(codes.shape)} "
            f"and {tuple(other.shape)}"
        )
    n_values = int(max(int(codes.max()) if codes.numel() else 0,
                       int(other.max()) if other.numel() else 0)) + 1
    rhs = _one_hot(other, n_values)
    rows = [
        (_one_hot(codes[start : start + chunk], n_values) @ rhs.t()).round().to(torch.int32)
        for start in range(0, codes.shape[0], chunk)
    ]
    if not rows:
        return torch.empty(0, other.shape[0], dtype=torch.int32, device=codes.device)
    return torch.cat(rows)


class WTAThreshold(NamedTuple):
    """HARR's scalars, in units of ``w = S2 / n_perm``."""

    thr: float
    pos: float
    neg: float


def _kth_from_histogram(hist: torch.Tensor, k: int) -> int:
    """Smallest value v with #(values ≤ v) ≥ k, from a histogram over 0..len(hist)−1."""
    cumulative = torch.cumsum(hist, dim=0)
    target = torch.tensor([k], dtype=cumulative.dtype, device=cumulative.device)
    return int(torch.searchsorted(cumulative, target).item())


def wta_threshold(codes: torch.Tensor, percentile: float = 0.3, chunk: int = 1024) -> WTAThreshold:
    """``thr``, ``pos``, ``neg`` of the off-diagonal agreement counts, without an N×N matrix.

    Counts each unordered pair once (upper triangle, row chunks) into a histogram over
    0..n_perm; the ordered off-diagonal multiset is that histogram doubled.
    """
    if not 0.0 < percentile < 1.0:
        raise ValueError(f"wta_threshold: percentile must be in (0, 1), got {percentile}")
    n, n_perm = codes.shape
    if n < 2:
        raise ValueError("wta_threshold needs at least two items")
    n_values = int(codes.max()) + 1
    onehot = _one_hot(codes, n_values)
    hist = torch.zeros(n_perm + 1, dtype=torch.long, device=codes.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = (onehot[start:stop] @ onehot[start:].t()).round().long()  # [b, n − start]
        upper = torch.ones_like(block, dtype=torch.bool).triu(diagonal=1)  # drop i ≥ j
        hist += torch.bincount(block[upper], minlength=n_perm + 1)
    hist = 2 * hist  # ordered pairs (i, j) and (j, i)
    total = n * (n - 1)
    k = max(1, int(total * (1.0 - percentile)))
    thr_count = _kth_from_histogram(hist, k)
    nonzero = torch.nonzero(hist).flatten()
    min_count, max_count = int(nonzero.min()), int(nonzero.max())
    thr = thr_count / n_perm
    return WTAThreshold(thr=thr, pos=max_count / n_perm - thr, neg=thr - min_count / n_perm)


class HARRStructure(NamedTuple):
    """HARR's similarity structure for a (small) set: full matrices plus scalars."""

    w: torch.Tensor  # [N, N] float, S2 / n_perm
    thr: float
    S: torch.Tensor  # [N, N] bool, w ≥ thr
    pos: float
    neg: float


def harr_structure(
    features: torch.Tensor,
    n_perm: int = 512,
    window: int = 8,
    seed: int = 0,
    percentile: float = 0.3,
    *,
    permutations: torch.Tensor | None = None,
) -> HARRStructure:
    """``(w, thr, S, pos, neg)`` of HARR for ``features`` ([N, d]); holds N×N matrices.

    For training use :func:`wta_codes` + :func:`wta_threshold` (the method keeps only the
    codes and computes the batch's block of ``w`` on the fly).
    """
    codes = wta_codes(features, n_perm, window, seed, permutations=permutations)
    counts = wta_similarity(codes)
    n_perm = codes.shape[1]
    stats = wta_threshold(codes, percentile)
    positives = counts >= round(stats.thr * n_perm)  # compare integers, not rounded floats
    return HARRStructure(
        w=counts.float() / n_perm, thr=stats.thr, S=positives, pos=stats.pos, neg=stats.neg
    )
