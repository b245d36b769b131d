"""GreedyHash: Su, Zhang, Han, Tian, "Greedy Hash: Towards Fast Optimization for Accurate Hash
Coding in CNN", Advances in Neural Information Processing Systems (NeurIPS) 2018 — the
unsupervised variant.

Official-code behaviour (docs/methods.md, "GreedyHash"):

* Head per code length: Linear(d, k) on frozen features = h; b = ST(sign(h)) (the greedy
  sign forward, identity backward). Test code: sign(h).
* Loss: the cosine-similarity MSE of Bi-half over half-batch pairs (row i with row N/2 + i,
  :func:`~contrahash.losses.half_batch_similarity_mse`) + 0.1 · mean(| |h| − 1 |³)
  (:func:`~contrahash.losses.cubic_quantization_loss`).
* One view per image ("resize" recipe); Bi-half's optimiser recipe (SGD lr 1e-4, momentum 0.9,
  weight decay 5e-4, batch 32; the official lr step decay is not reproduced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contrahash.codes import sign_st
from contrahash.losses import cubic_quantization_loss, half_batch_similarity_mse
from contrahash.methods.base import HashMethod, LossOutput, OptimSpec, StepInfo


class GreedyHash(HashMethod):
    """Straight-through sign hashing with a cubic quantisation penalty (unsupervised)."""

    name = "greedyhash"
    n_views = 1
    augmentation = "resize"
    default_optim = OptimSpec(
        name="sgd", lr=1e-4, momentum=0.9, weight_decay=5e-4, batch_size=32, epochs=300
    )

    @dataclass
    class Config:
        alpha: float = 0.1

        def validate(self) -> None:
            if self.alpha < 0:
                raise ValueError(f"greedyhash: alpha must be >= 0, got {self.alpha}")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        self.heads = nn.ModuleDict({str(k): nn.Linear(feature_dim, k) for k in self.bits})

    def training_loss(self, views: Sequence[torch.Tensor], info: StepInfo) -> LossOutput:
        features = views[0].float()
        total = features.new_zeros(())
        parts: dict[str, float] = {}
        for k in self.bits:
            h = self.heads[str(k)](features)
            similarity = half_batch_similarity_mse(sign_st(h), features)
            quantization = cubic_quantization_loss(h)
            total = total + similarity + self.config.alpha * quantization
            parts[f"similarity_{k}"] = float(similarity.detach())
            parts[f"quantization_{k}"] = float(quantization.detach())
        return LossOutput(total, parts)

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {
            k: torch.where(self.heads[str(k)](features.float()) >= 0, 1.0, -1.0) for k in self.bits
        }
