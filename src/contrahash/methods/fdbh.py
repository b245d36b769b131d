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
   frozen features over ``neighbour_pool`` ("train" or the unlabelled "database").
   Default ``neighbour_mode="extra"``: a random neighbour is a third view — an *extra*
   positive next to the image's own second view (with probability ``neighbour_prob``, else a
   third augmentation of the image), weighted ``neighbour_weight`` in the contrastive loss.
   ``neighbour_mode="replace"`` (the spec's lever, use ``neighbour_prob=0.5``): the second
   view itself is replaced by the neighbour with probability ``neighbour_prob``.
   ``neighbour_refresh`` = R > 0 re-mines the neighbours every R epochs by cosine of the
   model being trained (:meth:`FDBH.embed`: the standardised pre-quantisation outputs, with
   the fine-tuned backbone when there is one) instead of the frozen features. No labels are used. Set ``neighbour_prob=0`` to switch it off.

Test code: sign(û) with running statistics (sign(u) when FDO is off or Bi-half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from contrahash.losses import (
    cosine_reconstruction_loss,
    decorrelation_loss,
    nt_xent,
    polarization_loss,
)
from contrahash.methods.base import (
    HashMethod,
    LossOutput,
    MethodConfig,
    NeighbourSpec,
    OptimSpec,
    StepInfo,
    mlp_head,
)
from contrahash.models.codes import bihalf_sign, sign_pm1, sign_st

FDO_MODES = ("standardize", "bihalf", "none")
NEIGHBOUR_MODES = ("replace", "extra")


class FDBH(HashMethod):
    """Feature Distribution Balanced Hashing (contrastive + FDO + polarisation + reconstruction)."""

    name = "fdbh"
    default_optim = OptimSpec(name="adam", lr=1e-3, batch_size=64, epochs=80)

    @dataclass
    class Config(MethodConfig):
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
        neighbour_prob: float = 1.0
        neighbour_k: int = 5
        neighbour_pool: str = "database"
        # "extra" was chosen on the 64 px validation sweep (results/sweeps/fdbh: +1.5-2 points
        # over "replace"); at 224 px the ablation finds the two within ±1 point of each other
        neighbour_mode: str = "extra"
        neighbour_weight: float = 1.0
        neighbour_refresh: int = 0

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
            if self.neighbour_mode not in NEIGHBOUR_MODES:
                raise ValueError(f"fdbh: neighbour_mode must be one of {NEIGHBOUR_MODES}, "
                                 f"got '{self.neighbour_mode}'")
            if self.neighbour_refresh < 0:
                raise ValueError(f"fdbh: neighbour_refresh must be >= 0 (epochs; 0 = never), "
                                 f"got {self.neighbour_refresh}")
            if self.neighbour_k < 1:
                raise ValueError(f"fdbh: neighbour_k must be >= 1, got {self.neighbour_k}")
            if self.neighbour_weight < 0:
                raise ValueError(f"fdbh: neighbour_weight must be >= 0, got {self.neighbour_weight}")

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

    @property
    def n_views(self) -> int:
        """Two views; three when the neighbour is an *extra* positive (the trainer puts the
        neighbour in the last view)."""
        c = self.config
        return 3 if c.neighbour_mode == "extra" and c.neighbour_prob > 0 else 2

    def neighbours(self) -> NeighbourSpec | None:
        """Mined neighbours when ``neighbour_prob`` > 0 (the improved contrastive framework)."""
        c = self.config
        if c.neighbour_prob <= 0:
            return None
        return NeighbourSpec(k=c.neighbour_k, pool=c.neighbour_pool, prob=c.neighbour_prob,
                             refresh=c.neighbour_refresh)

    def _balanced(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """FDO standardisation (identity when FDO is not 'standardize')."""
        if self.config.fdo == "standardize":
            return self.fdo[str(k)](u)
        return u

    def alpha(self, step: StepInfo) -> float:
        """Polarisation sharpness for the current point of training."""
        c = self.config
        return c.alpha_start + (c.alpha_end - c.alpha_start) * step.progress

    def training_loss(self, views: Sequence[torch.Tensor], step: StepInfo) -> LossOutput:
        c = self.config
        group = step.group  # None in one process; the global batch otherwise
        feats = [v.float() for v in views]
        n, m = feats[0].shape[0], len(feats)
        f_all = torch.cat(feats)
        total = f_all.new_zeros(())
        parts: dict[str, torch.Tensor] = {}

        def contrastive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            if group is None:
                return nt_xent(a, b, c.temperature)
            return group.nt_xent(a, b, c.temperature)

        for k in self.bits:
            u = self.encoders[str(k)](f_all)
            # all views standardised together: one set of batch statistics per bit
            if c.fdo == "standardize" and group is not None:
                u_hat = group.batch_norm(u, self.fdo[str(k)])
            else:
                u_hat = self._balanced(u, k)
            if c.fdo == "bihalf":
                b = torch.cat([bihalf_sign(u_hat[i * n:(i + 1) * n], c.bihalf_gamma) for i in range(m)])
            elif c.polarization:
                b = sign_st(torch.tanh(self.alpha(step) * u_hat))
            else:
                b = sign_st(u_hat)
            loss_k = contrastive(b[:n], b[n:2 * n])
            parts[f"contrastive_{k}"] = loss_k.detach()
            if m == 3:  # the neighbour (extra positive) against both views of the image
                extra = 0.5 * (contrastive(b[:n], b[2 * n:]) + contrastive(b[n:2 * n], b[2 * n:]))
                loss_k = loss_k + c.neighbour_weight * extra
                parts[f"neighbour_{k}"] = extra.detach()
            if c.polarization:
                if group is None:
                    pol = polarization_loss(u_hat, c.margin)
                else:
                    pol = group.mean_rows(torch.relu(c.margin - u_hat.float().abs()).mean(dim=1),
                                          rows_per_process=m * n)
                loss_k = loss_k + c.lambda_pol * pol
                parts[f"polarization_{k}"] = pol.detach()
            if c.decorrelation and c.fdo != "none":
                views_u = [u_hat[i * n:(i + 1) * n] for i in range(m)]
                if group is None:
                    dec = sum(decorrelation_loss(x) for x in views_u) / m
                else:
                    dec = sum(group.decorrelation(x) for x in views_u) / m
                loss_k = loss_k + c.lambda_dec * dec
                parts[f"decorrelation_{k}"] = dec.detach()
            if c.reconstruction:
                rebuilt = self.decoders[str(k)](b)
                if group is None:
                    rec = cosine_reconstruction_loss(rebuilt, f_all)
                else:
                    cos = torch.nn.functional.cosine_similarity(
                        rebuilt.float(), f_all.detach().float(), dim=1)
                    rec = group.mean_rows(1 - cos, rows_per_process=m * n)
                loss_k = loss_k + c.lambda_rec * rec
                parts[f"reconstruction_{k}"] = rec.detach()
            total = total + loss_k
        return LossOutput(total, parts)

    def check_distributed(self) -> None:
        """Supported with ``fdo`` standardize or none: negatives gathered from every
        process, standardisation and decorrelation over the global batch."""
        if self.config.fdo == "bihalf":
            raise ValueError("fdbh with fdo=bihalf does not support distributed training (the "
                             "per-bit split of the batch would be per process); use "
                             "fdo=standardize, or one process")

    def _test_u(self, features: torch.Tensor, k: int) -> torch.Tensor:
        u = self.encoders[str(k)](features.float())
        if self.config.fdo == "standardize":
            bn = self.fdo[str(k)]
            u = (u - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        return u

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: sign_pm1(self._test_u(features, k)) for k in self.bits}

    @torch.no_grad()
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Continuous embedding for re-mining neighbours: every code length's test-time
        pre-quantisation output (running statistics), each scaled to unit norm, concatenated."""
        parts = [torch.nn.functional.normalize(self._test_u(features, k), dim=1) for k in self.bits]
        return torch.cat(parts, dim=1)
