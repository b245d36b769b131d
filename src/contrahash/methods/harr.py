"""HARR: Ma, Wang, Luo, Gu, Chen, Li, Hua, Lu, "HARR: Learning Discriminative and High-quality
Hash Codes for Image Retrieval", ACM Transactions on Multimedia Computing, Communications, and
Applications (TOMM), 2023.

Official-code behaviour (docs/methods.md, "HARR"):

* Head per code length: ReLU → Linear(d, k) → tanh = v; code sign(v) (0 → +1). The ReLU is
  not in-place here (the official one is, which would overwrite a shared feature tensor).
* Similarity structure, built once by :meth:`HARR.fit` from test-time backbone features of the
  training images (training-split order): WTA codes over 512 seeded permutations, window 8
  (:mod:`contrahash.methods.wta`); w = S2/512, thr (top 30% of off-diagonal pairs), S = [w ≥ thr],
  pos = max(w) − thr, neg = thr − min(w). Only the ``[N, 512]`` codes (uint8) and the scalars
  are kept (buffers, checkpointed); each step computes its batch's block of S2 from the codes.
* Three views per image, in the order of the "harr" augmentation recipe:
  ``views[0]`` strong (SimCLR, crop scale 0.08–1), ``views[1]`` RandAugment(2, 10) + cutout 16,
  ``views[2]`` weak (crop + flip).
* Loss = L_wta + 1.0·L_bcr + 0.5·L_q, where — as in the official code —
  L_wta (:func:`~contrahash.losses.wta_contrastive_loss`, τ = 0.1) and
  L_q (−mean cos(v, sign v)) are computed on the weak view alone, within the batch (h_i·h_j
  pairs images of the same view; the diagonal is a positive since w_ii = 1 ≥ thr, which the
  official code keeps; ``self_pairs=False`` drops it), and L_bcr pairs the strong and the
  RandAugment views. Deviation: L_bcr standardises each bit over the batch as docs/methods.md
  specifies; the official code L2-normalises each bit column without centring.
* Optimiser: SGD momentum 0.9, weight decay 1e-5, head lr 1e-3, backbone lr × 0.01 (ResNet-50
  fine-tuned), batch 64. The official run uses 800 epochs (its ``--max-iter``); our default is
  100 and may be overridden.

**Contract.** ``needs_fit = True``: the trainer calls :meth:`fit` with the training split's
test-time features before training. L_wta needs the WTA structure of the batch's images,
i.e. their positions in the training split, which every step receives as
``StepInfo.positions`` (a ``[B]`` long tensor of positions into the features given to
:meth:`fit`); a step without them raises a ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from contrahash.losses import bit_correlation_loss, cosine_quantization_loss, wta_contrastive_loss
from contrahash.methods.base import HashMethod, MethodConfig, OptimSpec, StepInfo, Term, Terms
from contrahash.methods.wta import wta_codes, wta_similarity, wta_threshold
from contrahash.models.codes import sign_pm1


class HARRBatch(NamedTuple):
    """One step's inputs shared by every code length: the views and the batch's structure."""

    strong: torch.Tensor
    randaug: torch.Tensor
    weak: torch.Tensor
    positives: torch.Tensor  # S [B, B] bool
    w: torch.Tensor  # [B, B] WTA agreement rate


class HARR(HashMethod):
    """WTA-structure-guided contrastive hashing with bit-correlation reduction (official code)."""

    name = "harr"
    augmentation = "harr"
    #: the trainer calls fit(training-split test-time features) before gradient training
    needs_fit = True
    default_optim = OptimSpec(
        name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-5, batch_size=64, epochs=100,
        backbone_lr_scale=0.01,
    )

    @property
    def n_views(self) -> int:
        """Three views, in the roles of the "harr" recipe: strong, RandAugment, weak."""
        return 3

    @dataclass
    class Config(MethodConfig):
        n_perm: int = 512
        window: int = 8
        percentile: float = 0.3
        seed: int = 0
        temperature: float = 0.1
        lambda_bcr: float = 1.0
        lambda_q: float = 0.5
        self_pairs: bool = True

        def validate(self) -> None:
            if self.n_perm <= 0 or self.window <= 0:
                raise ValueError("harr: n_perm and window must be positive")
            if self.window > 255:
                raise ValueError(f"harr: window must be <= 255 (codes are stored as uint8), got {self.window}")
            if not 0.0 < self.percentile < 1.0:
                raise ValueError(f"harr: percentile must be in (0, 1), got {self.percentile}")
            if self.temperature <= 0:
                raise ValueError("harr: temperature must be > 0")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        self.heads = nn.ModuleDict(
            {
                str(k): nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, k), nn.Tanh())
                for k in self.bits
            }
        )
        self.register_buffer("wta_codes", torch.zeros(0, self.config.n_perm, dtype=torch.uint8))
        self.register_buffer("thr_count", torch.tensor(0, dtype=torch.long))
        self.register_buffer("pos", torch.tensor(0.0))
        self.register_buffer("neg", torch.tensor(0.0))

    # -- similarity structure -------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return self.wta_codes.shape[0] > 0

    @property
    def thr(self) -> float:
        return int(self.thr_count) / self.config.n_perm

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Build the WTA similarity structure from training-split test-time features [N, d]."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"harr.fit: expected [N, {self.feature_dim}] training features, got "
                f"{tuple(features.shape)}"
            )
        c = self.config
        codes = wta_codes(features.float(), c.n_perm, c.window, c.seed)
        stats = wta_threshold(codes, c.percentile)
        if stats.pos <= 0 or stats.neg <= 0:
            raise ValueError(
                "harr.fit: degenerate WTA structure (pos or neg is 0: the training features "
                "give all pairs the same similarity)"
            )
        device = self.wta_codes.device
        self.wta_codes = codes.to(device=device, dtype=torch.uint8)
        self.thr_count = torch.tensor(round(stats.thr * c.n_perm), dtype=torch.long, device=device)
        self.pos = torch.tensor(stats.pos, device=device)
        self.neg = torch.tensor(stats.neg, device=device)

    def batch_structure(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(S [B, B] bool, w [B, B] float) for training-split positions ``index``."""
        if not self.fitted:
            raise RuntimeError("harr: call fit(training features) before training")
        index = torch.as_tensor(index, dtype=torch.long, device=self.wta_codes.device)
        counts = wta_similarity(self.wta_codes[index])
        positives = counts >= self.thr_count
        if not self.config.self_pairs:
            positives &= ~torch.eye(len(index), dtype=torch.bool, device=positives.device)
        return positives, counts.float() / self.config.n_perm

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        # the codes' row count is the training-split size: take the checkpoint's shape
        key = prefix + "wta_codes"
        if key in state_dict:
            self.wta_codes = torch.empty_like(state_dict[key], device=self.wta_codes.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- training ---------------------------------------------------------------------
    def head_output(self, features: torch.Tensor, bits: int) -> torch.Tensor:
        """v = tanh(Linear(ReLU(f))) for one code length."""
        return self.heads[str(bits)](features.float())

    def step_inputs(self, views: Sequence[torch.Tensor], step: StepInfo) -> HARRBatch:
        """The three views and the batch's block of the WTA structure (from its positions)."""
        if step.positions is None:
            raise RuntimeError(
                "harr: a training step needs StepInfo.positions (the batch rows' positions in "
                "the training split given to fit)"
            )
        strong, randaug, weak = views[0], views[1], views[2]
        if len(step.positions) != weak.shape[0]:
            raise ValueError(
                f"harr: StepInfo.positions has {len(step.positions)} entries for a batch of "
                f"{weak.shape[0]}"
            )
        positives, w = self.batch_structure(step.positions)
        return HARRBatch(strong, randaug, weak, positives.to(weak.device), w.to(weak.device))

    def code_loss(self, bits: int, inputs: HARRBatch, step: StepInfo) -> Terms:
        c, x = self.config, inputs
        v_weak = self.head_output(x.weak, bits)
        l_wta = wta_contrastive_loss(v_weak, x.positives, x.w, self.thr, float(self.pos),
                                     float(self.neg), c.temperature)
        l_bcr = bit_correlation_loss(self.head_output(x.strong, bits),
                                     self.head_output(x.randaug, bits))
        return {"wta": l_wta, "bcr": Term(l_bcr, c.lambda_bcr),
                "quantization": Term(cosine_quantization_loss(v_weak), c.lambda_q)}

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: sign_pm1(self.head_output(features, k)) for k in self.bits}
