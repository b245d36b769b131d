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

from dataclasses import dataclass

import torch

from contrahash.losses import cubic_quantization_loss
from contrahash.methods.base import MethodConfig, Term, Terms
from contrahash.methods.bihalf import LinearSimilarityHash
from contrahash.models.codes import sign_st


class GreedyHash(LinearSimilarityHash):
    """Straight-through sign hashing with a cubic quantisation penalty (unsupervised)."""

    name = "greedyhash"

    @dataclass
    class Config(MethodConfig):
        alpha: float = 0.1

        def validate(self) -> None:
            if self.alpha < 0:
                raise ValueError(f"greedyhash: alpha must be >= 0, got {self.alpha}")

    def training_codes(self, h: torch.Tensor) -> torch.Tensor:
        return sign_st(h)

    def extra_terms(self, h: torch.Tensor) -> Terms:
        return {"quantization": Term(cubic_quantization_loss(h), self.config.alpha)}
