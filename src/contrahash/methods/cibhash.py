"""CIBHash: Qiu et al., "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021.

Follows the official code where it differs from the paper (docs/methods.md):
the code is the deterministic ``b = ST(sign(p − 0.5))`` rather than a stochastic
Bernoulli sample, and the KL term is the symmetric, stop-gradient form below.
Loss = NT-Xent(b¹, b², τ=0.3) + β·½[KL(p¹‖sg p²) + KL(p²‖sg p¹)], β = 0.001.
One head per code length; all heads share the backbone forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contrahash.losses import bernoulli_kl_rows, nt_xent, symmetric_bernoulli_kl
from contrahash.methods.base import (
    HashMethod,
    LossOutput,
    MethodConfig,
    OptimSpec,
    StepInfo,
    mlp_head,
)
from contrahash.models.codes import sign_st


class CIBHash(HashMethod):
    """Contrastive information-bottleneck hashing (official-code behaviour)."""

    name = "cibhash"
    default_optim = OptimSpec(name="adam", lr=1e-3, batch_size=64, epochs=80)

    @dataclass
    class Config(MethodConfig):
        hidden: int = 1024
        temperature: float = 0.3
        beta: float = 0.001

        def validate(self) -> None:
            if self.temperature <= 0:
                raise ValueError("cibhash: temperature must be > 0")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        c = self.config
        self.heads = nn.ModuleDict({str(k): mlp_head(feature_dim, c.hidden, k) for k in self.bits})

    def probabilities(self, features: torch.Tensor, bits: int) -> torch.Tensor:
        """Bit probabilities p = sigmoid(head(f)) for one code length."""
        return torch.sigmoid(self.heads[str(bits)](features.float()))

    def training_loss(self, views: Sequence[torch.Tensor], step: StepInfo) -> LossOutput:
        f1, f2 = views[0], views[1]
        group = step.group
        total = f1.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        for k in self.bits:
            p1, p2 = self.probabilities(f1, k), self.probabilities(f2, k)
            b1, b2 = sign_st(p1 - 0.5), sign_st(p2 - 0.5)
            if group is None:
                contrastive = nt_xent(b1, b2, self.config.temperature)
                kl = symmetric_bernoulli_kl(p1, p2)
            else:  # the global batch's terms, this process's share (contrahash.training.distributed)
                contrastive = group.nt_xent(b1, b2, self.config.temperature)
                kl = 0.5 * (group.mean_rows(bernoulli_kl_rows(p1, p2.detach()))
                            + group.mean_rows(bernoulli_kl_rows(p2, p1.detach())))
            total = total + contrastive + self.config.beta * kl
            parts[f"contrastive_{k}"] = contrastive.detach()
            parts[f"kl_{k}"] = kl.detach()
        return LossOutput(total, parts)

    def check_distributed(self) -> None:
        """Supported: negatives gathered from every process, the KL as shares of its mean."""

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: torch.where(self.probabilities(features, k) >= 0.5, 1.0, -1.0) for k in self.bits}
