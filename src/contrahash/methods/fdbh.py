"""FDBH — Feature Distribution Balanced Hashing, contrahash's flagship method.

Design (docs/methods.md, "FDBH"); every component has a switch for the ablation table:

1. Encoder per code length: f → Linear(d,1024) → ReLU → Linear(1024,k) = u.
2. Feature Distribution Optimisation (``fdo``): ``"standardize"`` centres and scales each of
   the k dimensions of u (batch statistics in training, running statistics at inference —
   BatchNorm without affine parameters), so every bit is ≈50% ones on a common scale; plus a
   decorrelation penalty (mean squared off-diagonal correlation, ``lambda_dec``).
   ``"bihalf"`` is the Bi-half variant (per bit, top half of the batch → +1); ``"none"`` off.
3. Polarisation (``polarization``): h = tanh(α·û), α rising linearly from ``alpha_start`` to
   ``alpha_end`` over training, plus mean(relu(m − |û|)) (``lambda_pol``).
4. Code b = ST(sign(h)).
5. Contrastive similarity loss: NT-Xent between the two views' codes (τ = 0.3).
6. Reconstruction (``lambda_rec``): decoder k → 1024 → d rebuilds the backbone feature from
   the code, loss 1 − cos(g(b), sg(f)) over both views.
7. Improved contrastive framework — neighbour positives (``neighbour_prob``): before training
   the trainer mines each training image's ``neighbour_k`` nearest neighbours by cosine of
   frozen features over ``neighbour_pool`` ("train" or the unlabelled "database"); with
   probability ``neighbour_prob`` the second view is an augmentation of a random neighbour.
   No labels are used. Set ``neighbour_prob=0`` to switch it off.

Test code: sign(û) with running statistics (sign(u) when FDO is off or Bi-half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contrahash.codes import bihalf_sign, sign_pm1, sign_st
from contrahash.losses import (
    cosine_reconstruction_loss,
    decorrelation_loss,
    nt_xent,
    polarization_loss,
)
from contrahash.methods.base import HashMethod, LossOutput, OptimSpec, StepInfo, mlp_head

FDO_MODES = ("standardize", "bihalf", "none")


class FDBH(HashMethod):
    """Feature Distribution Balanced Hashing (contrastive + FDO + polarisation + reconstruction)."""

    name = "fdbh"
    default_optim = OptimSpec(name="adam", lr=1e-3, batch_size=64, epochs=80)

    @dataclass
    class Config:
        hidden: int = 1024
        temperature: float = 0.3
        fdo: str = "standardize"
        fdo_momentum: float = 0.1
        bihalf_gamma: float = 6.0
        polarization: bool = True
        alpha_start: float = 1.0
        alpha_end: float = 10.0
        margin: float = 1.0
        lambda_pol: float = 0.1
        reconstruction: bool = True
        lambda_rec: float = 0.1
        decorrelation: bool = True
        lambda_dec: float = 0.01
        neighbour_prob: float = 0.5
        neighbour_k: int = 5
        neighbour_pool: str = "database"

        def validate(self) -> None:
            if self.fdo not in FDO_MODES:
                raise ValueError(f"fdbh: fdo must be one of {FDO_MODES}, got '{self.fdo}'")
            if not 0.0 <= self.neighbour_prob <= 1.0:
                raise ValueError(f"fdbh: neighbour_prob must be in [0, 1], got {self.neighbour_prob}")
            if self.neighbour_pool not in ("train", "database"):
                raise ValueError(
                    f"fdbh: neighbour_pool must be 'train' or 'database', got '{self.neighbour_pool}'"
                )
            if self.temperature <= 0:
                raise ValueError("fdbh: temperature must be > 0")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        c = self.config
        self.encoders = nn.ModuleDict({str(k): mlp_head(feature_dim, c.hidden, k) for k in self.bits})
        self.fdo = nn.ModuleDict(
            {
                str(k): nn.BatchNorm1d(k, affine=False, momentum=c.fdo_momentum)
                for k in self.bits
            }
        )
        if c.reconstruction:
            self.decoders = nn.ModuleDict(
                {str(k): mlp_head(k, c.hidden, feature_dim) for k in self.bits}
            )

    def _balanced(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """FDO standardisation (identity when FDO is not 'standardize')."""
        if self.config.fdo == "standardize":
            return self.fdo[str(k)](u)
        return u

    def alpha(self, info: StepInfo) -> float:
        """Polarisation sharpness for the current point of training."""
        c = self.config
        return c.alpha_start + (c.alpha_end - c.alpha_start) * info.progress

    def training_loss(self, views: Sequence[torch.Tensor], info: StepInfo) -> LossOutput:
        c = self.config
        f1, f2 = views[0].float(), views[1].float()
        n = f1.shape[0]
        total = f1.new_zeros(())
        parts: dict[str, float] = {}
        for k in self.bits:
            u = self.encoders[str(k)](torch.cat([f1, f2]))
            # both views standardised together: one set of batch statistics per bit
            u_hat = self._balanced(u, k)
            if c.fdo == "bihalf":
                b = torch.cat([bihalf_sign(u_hat[:n], c.bihalf_gamma), bihalf_sign(u_hat[n:], c.bihalf_gamma)])
            elif c.polarization:
                b = sign_st(torch.tanh(self.alpha(info) * u_hat))
            else:
                b = sign_st(u_hat)
            loss_k = nt_xent(b[:n], b[n:], c.temperature)
            parts[f"contrastive_{k}"] = loss_k.detach()
            if c.polarization:
                pol = polarization_loss(u_hat, c.margin)
                loss_k = loss_k + c.lambda_pol * pol
                parts[f"polarization_{k}"] = pol.detach()
            if c.decorrelation and c.fdo != "none":
                dec = 0.5 * (decorrelation_loss(u_hat[:n]) + decorrelation_loss(u_hat[n:]))
                loss_k = loss_k + c.lambda_dec * dec
                parts[f"decorrelation_{k}"] = dec.detach()
            if c.reconstruction:
                rec = cosine_reconstruction_loss(self.decoders[str(k)](b), torch.cat([f1, f2]))
                loss_k = loss_k + c.lambda_rec * rec
                parts[f"reconstruction_{k}"] = rec.detach()
            total = total + loss_k
        return LossOutput(total, parts)

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for k in self.bits:
            u = self.encoders[str(k)](features.float())
            if self.config.fdo == "standardize":
                bn = self.fdo[str(k)]
                u = (u - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
            out[k] = sign_pm1(u)
        return out
