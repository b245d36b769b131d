"""NSH: Yu, Shen, Wang, Zhang, Torr, "Learning to Hash Naturally Sorts", IJCAI 2022.

There is no official code; this follows the paper's description as written down in
docs/methods.md ("NSH"):

* Per code length, a hash head Linear(d, k) → tanh = b̃ and a latent head
  Linear(d, 1024) → l2norm = z (one latent head per code length, so code lengths train
  independently, as separate runs would).
* SortedNCE (:func:`~contrahash.losses.sorted_nce_loss`) between two views: rows of the code
  similarity s_ij = b̃¹_i·b̃²_j/(2k) + 0.5 are soft-sorted (SoftSort, τ_s = 1/k), the view-1
  latents are re-ordered with the soft permutation, the first m = 2 sorted positions are
  positives for the view-2 latent z²_i and the rest negatives, τ = 0.3.
* Quantisation: ‖b̃ − sign(b̃)‖² averaged over samples *and bits*
  (:func:`~contrahash.losses.squared_quantization_loss`), averaged over both views, weight
  ``lambda_q`` = 1 (docs/methods.md gives no weight). Decision: the per-sample squared norm
  (summed over bits, i.e. k times larger) swamps SortedNCE at initialisation — on digits
  the SortedNCE stayed at chance, log(N − 1), while tanh saturated to near-random codes and
  mAP fell below the untrained head's; averaged over bits it trains.
* Test code: sign(b̃) (0 → +1).

Memory: the soft permutations are N³ per code length. ``max_batch = 64`` and the loss builds
them 16 anchor rows at a time (``chunk``), i.e. O(chunk · N²); the sorted latents are never
materialised (see :func:`~contrahash.losses.sorted_nce_loss`): 3-4.5x faster per step on the CPU.

Optimiser: Adam lr 1e-3 for heads on a frozen backbone (our default). When fine-tuning, the
paper's lr is 1e-5: ``backbone_lr_scale = 0.01`` gives the backbone exactly that while the
heads keep 1e-3; set ``lr=1e-5, backbone_lr_scale=1`` for the paper's single learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contrahash.losses import sorted_nce_loss, squared_quantization_loss
from contrahash.methods.base import HashMethod, MethodConfig, OptimSpec, StepInfo, Term, Terms
from contrahash.models.codes import sign_pm1


class NSH(HashMethod):
    """Naturally-Sorted Hashing: SortedNCE over soft-sorted code similarities."""

    name = "nsh"
    max_batch = 64
    default_optim = OptimSpec(name="adam", lr=1e-3, batch_size=64, epochs=60, backbone_lr_scale=0.01)

    @dataclass
    class Config(MethodConfig):
        latent_dim: int = 1024
        n_positives: int = 2
        temperature: float = 0.3
        sort_temperature: float | None = None  # None → 1/k
        lambda_q: float = 1.0
        chunk: int = 16

        def validate(self) -> None:
            if self.n_positives < 1:
                raise ValueError(f"nsh: n_positives must be >= 1, got {self.n_positives}")
            if self.temperature <= 0:
                raise ValueError("nsh: temperature must be > 0")
            if self.sort_temperature is not None and self.sort_temperature <= 0:
                raise ValueError("nsh: sort_temperature must be > 0 (or None for 1/k)")
            if self.latent_dim <= 0 or self.chunk <= 0:
                raise ValueError("nsh: latent_dim and chunk must be positive")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        c = self.config
        self.hash_heads = nn.ModuleDict({str(k): nn.Linear(feature_dim, k) for k in self.bits})
        self.latent_heads = nn.ModuleDict(
            {str(k): nn.Linear(feature_dim, c.latent_dim) for k in self.bits}
        )

    def relaxed_codes(self, features: torch.Tensor, bits: int) -> torch.Tensor:
        """b̃ = tanh(Linear(f)) for one code length."""
        return torch.tanh(self.hash_heads[str(bits)](features.float()))

    def latents(self, features: torch.Tensor, bits: int) -> torch.Tensor:
        """z = l2norm(Linear(f)) of the code length's latent head."""
        return F.normalize(self.latent_heads[str(bits)](features.float()), dim=1)

    def code_loss(self, bits: int, inputs: Sequence[torch.Tensor], step: StepInfo) -> Terms:
        c = self.config
        f1, f2 = inputs[0], inputs[1]
        b1, b2 = self.relaxed_codes(f1, bits), self.relaxed_codes(f2, bits)
        z1, z2 = self.latents(f1, bits), self.latents(f2, bits)
        nce = sorted_nce_loss(b1, b2, z1, z2, c.n_positives, c.temperature, c.sort_temperature,
                              c.chunk)
        quantization = 0.5 * (squared_quantization_loss(b1) + squared_quantization_loss(b2))
        return {"sorted_nce": nce, "quantization": Term(quantization, c.lambda_q)}

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {
            k: sign_pm1(self.hash_heads[str(k)](features.float()))
            for k in self.bits
        }
