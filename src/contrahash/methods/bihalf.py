"""Bi-half: Li, van Gemert, "Deep Unsupervised Image Hashing by Maximizing Bit Entropy",
AAAI Conference on Artificial Intelligence (AAAI) 2021.

Official-code behaviour (docs/methods.md, "Bi-half"):

* Head per code length: Linear(d, k) on frozen features = u.
* Training codes: the bi-half layer :func:`contrahash.models.codes.bihalf_sign` on the batch (per bit,
  the larger half of the batch → +1; backward adds γ(u − b)/(N·k), γ = 6). Test code: sign(u).
* Loss (:func:`~contrahash.losses.half_batch_similarity_mse`): MSE between cos(b_a, b_b) and
  cos(f_a, f_b) where, as in the official code, row i of the first half of the batch is paired
  with row i of the second half (``F.cosine_similarity(x[:N//2], x[N//2:])`` — N/2 elementwise
  pairs, not the full cross matrix). The feature side is a stop-gradient target.
* One view per image (``n_views = 1``; the "resize" recipe: no augmentation beyond resize).
* SGD lr 1e-4, momentum 0.9, weight decay 5e-4, batch 32, 300 epochs as the official CIFAR
  script; the official lr also drops ×0.1 at epoch 120, which a constant schedule does not do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contrahash.losses import half_batch_similarity_mse
from contrahash.methods.base import HashMethod, MethodConfig, OptimSpec, StepInfo, Terms
from contrahash.models.codes import bihalf_sign, sign_pm1


class LinearSimilarityHash(HashMethod):
    """Shared shape of Bi-half and GreedyHash: one Linear(d, k) head per code length on one
    (resized, un-augmented) view, trained to preserve feature cosine similarities; test code
    sign(h). Subclasses say how training codes are made and may add a term."""

    augmentation = "resize"
    default_optim = OptimSpec(
        name="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, batch_size=32, epochs=300
    )

    @property
    def n_views(self) -> int:
        """One (resized, un-augmented) view per image."""
        return 1

    def __init__(self, feature_dim: int, bits: Sequence[int], config=None):
        super().__init__(feature_dim, bits, config)
        self.heads = nn.ModuleDict({str(k): nn.Linear(feature_dim, k) for k in self.bits})

    def training_codes(self, h: torch.Tensor) -> torch.Tensor:
        """±1 training codes from the head output (with their surrogate gradient)."""
        raise NotImplementedError

    def extra_terms(self, h: torch.Tensor) -> Terms:
        """Further named terms on the head output (none by default)."""
        return {}

    def code_loss(self, bits: int, inputs: Sequence[torch.Tensor], step: StepInfo) -> Terms:
        features = inputs[0].float()
        h = self.heads[str(bits)](features)
        similarity = half_batch_similarity_mse(self.training_codes(h), features)
        return {"similarity": similarity, **self.extra_terms(h)}

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: sign_pm1(self.heads[str(k)](features.float())) for k in self.bits}


class BiHalf(LinearSimilarityHash):
    """Bi-half layer hashing with a cosine-similarity-preserving loss."""

    name = "bihalf"

    @dataclass
    class Config(MethodConfig):
        gamma: float = 6.0

        def validate(self) -> None:
            if self.gamma < 0:
                raise ValueError(f"bihalf: gamma must be >= 0, got {self.gamma}")

    def training_codes(self, h: torch.Tensor) -> torch.Tensor:
        return bihalf_sign(h, self.config.gamma)
