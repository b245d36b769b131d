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

from contrahash.losses import nt_xent, symmetric_bernoulli_kl
from contrahash.methods.base import (
    HashMethod,
    MethodConfig,
    OptimSpec,
    StepInfo,
    Term,
    Terms,
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

    def code_loss(self, bits: int, inputs: Sequence[torch.Tensor], step: StepInfo) -> Terms:
        c, ctx = self.config, step.batch
        p1, p2 = self.probabilities(inputs[0], bits), self.probabilities(inputs[1], bits)
        b1, b2 = sign_st(p1 - 0.5), sign_st(p2 - 0.5)
        return {"contrastive": nt_xent(b1, b2, c.temperature, ctx=ctx),
                "kl": Term(symmetric_bernoulli_kl(p1, p2, ctx), c.beta)}

    def check_distributed(self) -> None:
        """Supported: negatives gathered from every process, the KL as shares of its mean."""

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: torch.where(self.probabilities(features, k) >= 0.5, 1.0, -1.0) for k in self.bits}
