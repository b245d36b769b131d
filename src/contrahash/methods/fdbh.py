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
    LOCAL,
    BatchContext,
    cosine_reconstruction_loss,
    decorrelation_loss,
    nt_xent,
    polarization_loss,
)
from contrahash.methods.base import (
    HashMethod,
    MethodConfig,
    NeighbourSpec,
    OptimSpec,
    StepInfo,
    Term,
    Terms,
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
        neighbour_mode: str = "extra"  # why: docs/results.md, "FDBH's neighbour recipe: the validation sweep"
        neighbour_weight: float = 1.0
        neighbour_refresh: int = 0

        def validate(self) -> None:
            if self.fdo not in FDO_MODES:
                raise ValueError(f"fdbh: fdo must be one of {FDO_MODES}, got '{self.fdo}'")
            if self.temperature <= 0:
                raise ValueError("fdbh: temperature must be > 0")
            if self.neighbour_mode not in NEIGHBOUR_MODES:
                raise ValueError(f"fdbh: neighbour_mode must be one of {NEIGHBOUR_MODES}, "
                                 f"got '{self.neighbour_mode}'")
            if self.neighbour_weight < 0:
                raise ValueError(f"fdbh: neighbour_weight must be >= 0, got {self.neighbour_weight}")
            if self.neighbour_prob < 0:
                raise ValueError(f"fdbh: neighbour_prob must be in [0, 1], got {self.neighbour_prob}")
            try:  # k, pool, prob ≤ 1 and refresh: NeighbourSpec's checks (prob 0 = off, valid)
                self.neighbour_spec()
            except ValueError as error:  # "neighbour k must …" names the key neighbour_k
                raise ValueError(f"fdbh: {str(error).replace('neighbour ', 'neighbour_', 1)}"
                                 ) from None

        def neighbour_spec(self) -> NeighbourSpec:
            """The neighbour spec these settings ask for (prob 0, "off", checked as 1)."""
            return NeighbourSpec(k=self.neighbour_k, pool=self.neighbour_pool,
                                 prob=self.neighbour_prob or 1.0, refresh=self.neighbour_refresh)

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
        return c.neighbour_spec() if c.neighbour_prob > 0 else None

    def _balanced(self, u: torch.Tensor, k: int, ctx: BatchContext = LOCAL) -> torch.Tensor:
        """FDO standardisation over the (global) batch, running statistics updated;
        the identity when FDO is not 'standardize'."""
        if self.config.fdo == "standardize":
            return ctx.batch_norm(u, self.fdo[str(k)])
        return u

    def alpha(self, step: StepInfo) -> float:
        """Polarisation sharpness for the current point of training."""
        c = self.config
        return c.alpha_start + (c.alpha_end - c.alpha_start) * step.progress

    def step_inputs(self, views: Sequence[torch.Tensor], step: StepInfo) -> tuple[torch.Tensor, int]:
        """Every view's features stacked (``[m·n, d]``: view 1, view 2, the neighbour), and m."""
        return torch.cat([v.float() for v in views]), len(views)

    def code_loss(self, bits: int, inputs: tuple[torch.Tensor, int], step: StepInfo) -> Terms:
        c, ctx = self.config, step.batch
        f, m = inputs
        n = f.shape[0] // m
        u = self.encoders[str(bits)](f)
        u_hat = self._balanced(u, bits, ctx)  # all views together: one set of statistics per bit
        if c.fdo == "bihalf":
            b = torch.cat([bihalf_sign(u_hat[i * n:(i + 1) * n], c.bihalf_gamma) for i in range(m)])
        elif c.polarization:
            b = sign_st(torch.tanh(self.alpha(step) * u_hat))
        else:
            b = sign_st(u_hat)

        def contrastive(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nt_xent(x, y, c.temperature, ctx=ctx)

        # (fresh slices per use: autograd then sums their gradients in the order it always has)
        terms: dict[str, torch.Tensor | Term] = {"contrastive": contrastive(b[:n], b[n:2 * n])}
        if m == 3:  # the neighbour (extra positive) against both views of the image
            extra = 0.5 * (contrastive(b[:n], b[2 * n:]) + contrastive(b[n:2 * n], b[2 * n:]))
            terms["neighbour"] = Term(extra, c.neighbour_weight)
        if c.polarization:
            terms["polarization"] = Term(polarization_loss(u_hat, c.margin, ctx), c.lambda_pol)
        if c.decorrelation and c.fdo != "none":
            per_view = [decorrelation_loss(u_hat[i * n:(i + 1) * n], ctx=ctx) for i in range(m)]
            terms["decorrelation"] = Term(sum(per_view) / m, c.lambda_dec)
        if c.reconstruction:
            rebuilt = self.decoders[str(bits)](b)
            terms["reconstruction"] = Term(cosine_reconstruction_loss(rebuilt, f, ctx), c.lambda_rec)
        return terms

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
