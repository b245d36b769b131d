"""Training-free baselines on frozen features: LSH, PCAH, ITQ (docs/methods.md).

* LSH — sign random projections: Charikar, "Similarity Estimation Techniques from Rounding
  Algorithms", ACM Symposium on Theory of Computing (STOC) 2002. Centred by the training
  mean, Gaussian projections seeded per code length.
* PCAH — sign of the top-k principal components, the PCA-hashing baseline of Wang, Kumar,
  Chang, "Semi-Supervised Hashing for Large-Scale Search", IEEE TPAMI 2012.
* ITQ — Gong, Lazebnik, "Iterative Quantization: A Procrustean Approach to Learning Binary
  Codes", IEEE CVPR 2011: PCA to k dimensions, then 50 alternating steps
  B = sign(VR), R = argmin ‖B − VR‖ (orthogonal Procrustes, R = UA·UBᵀ from svd(BᵀV))
  from a seeded random orthogonal R.

All three are fitted by :meth:`fit` on training-split test-time features (``trainable =
False``: no gradient training) and hold, per code length, one ``[d, k]`` projection plus the
shared mean as buffers, so they checkpoint with the state dict. Fitting runs in float64
(one covariance + one ``eigh`` shared by all code lengths); codes are sign((x − μ)W), 0 → +1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from contrahash.methods.base import HashMethod, LossOutput, MethodConfig, StepInfo
from contrahash.models.codes import sign_pm1


def _generator(seed: int, bits: int) -> torch.Generator:
    """Independent, reproducible stream per (seed, code length)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(bits))


def principal_directions(centred: torch.Tensor, n_components: int) -> torch.Tensor:
    """Top principal directions [d, n_components] (float64, descending variance).

    Signs are fixed (largest-magnitude entry positive) so fits are reproducible.
    """
    x = centred.double()
    covariance = x.t() @ x / max(1, x.shape[0] - 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    top = vectors[:, -n_components:].flip(-1)
    pivot = top.abs().argmax(dim=0)
    signs = torch.sign(top[pivot, torch.arange(top.shape[1])])
    return top * torch.where(signs == 0, 1.0, signs).to(top.dtype)


def random_rotation(k: int, generator: torch.Generator) -> torch.Tensor:
    """A random k×k orthogonal matrix (QR of a Gaussian, sign-corrected), float64."""
    q, r = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def itq_rotation(
    v: torch.Tensor, n_iter: int = 50, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[float]]:
    """ITQ's rotation R [k, k] for PCA-projected data ``v`` [N, k], and the error history.

    errors[t] = ‖sign(V R_t) − V R_t‖²_F before update t (non-increasing: both alternating
    steps minimise the same objective); the last entry is the error of the returned R.
    """
    v = v.double()
    k = v.shape[1]
    generator = generator or torch.Generator().manual_seed(0)
    rotation = random_rotation(k, generator).to(v.device)
    errors = []
    for _ in range(n_iter):
        projected = v @ rotation
        codes = sign_pm1(projected).to(v.dtype)
        errors.append(float((codes - projected).pow(2).sum()))
        u_b, _, u_a_t = torch.linalg.svd(codes.t() @ v)  # BᵀV = UB Σ UAᵀ
        rotation = u_a_t.t() @ u_b.t()  # R = UA UBᵀ maximises tr(Bᵀ V R)
    projected = v @ rotation
    errors.append(float((sign_pm1(projected) - projected).pow(2).sum()))
    return rotation, errors


class _ProjectionHash(HashMethod):
    """sign((x − μ) W_k) with μ and W_k fitted on training features; buffers only."""

    trainable = False
    augmentation = "resize"
    needs_k_le_d = True

    @property
    def n_views(self) -> int:
        """Training-free: never asked for views (one, for completeness)."""
        return 1

    @dataclass
    class Config(MethodConfig):
        seed: int = 0

    def __init__(self, feature_dim: int, bits: Sequence[int], config=None):
        super().__init__(feature_dim, bits, config)
        if self.needs_k_le_d and max(self.bits) > feature_dim:
            raise ValueError(
                f"{self.name}: code length {max(self.bits)} exceeds the feature dimension "
                f"{feature_dim} (at most one bit per principal direction)"
            )
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("fitted", torch.tensor(False))
        for k in self.bits:
            self.register_buffer(f"projection_{k}", torch.zeros(feature_dim, k))

    def projection(self, bits: int) -> torch.Tensor:
        return getattr(self, f"projection_{bits}")

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"{self.name}.fit: expected [N, {self.feature_dim}] training features, got "
                f"{tuple(features.shape)}"
            )
        if features.shape[0] < 2:
            raise ValueError(f"{self.name}.fit needs at least two training vectors")
        x = features.double()
        mean = x.mean(dim=0)
        projections = self._fit_projections(x - mean)
        self.mean.copy_(mean.to(self.mean))
        for k, w in projections.items():
            self.projection(k).copy_(w.to(self.mean))
        self.fitted.fill_(True)

    def _fit_projections(self, centred: torch.Tensor) -> dict[int, torch.Tensor]:
        raise NotImplementedError

    def training_loss(self, views: Sequence[torch.Tensor], step: StepInfo) -> LossOutput:
        raise RuntimeError(f"{self.name} is training-free: call fit(training features), not training")

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        if not bool(self.fitted):
            raise RuntimeError(f"{self.name}: call fit(training features) before encode")
        x = features.float() - self.mean
        return {k: sign_pm1(x @ self.projection(k)) for k in self.bits}


class LSH(_ProjectionHash):
    """Centred sign random projections (Gaussian, seeded per code length)."""

    name = "lsh"
    needs_k_le_d = False

    def _fit_projections(self, centred: torch.Tensor) -> dict[int, torch.Tensor]:
        d = centred.shape[1]
        return {
            k: torch.randn(d, k, generator=_generator(self.config.seed, k), dtype=torch.float64)
            for k in self.bits
        }


class PCAH(_ProjectionHash):
    """Sign of the top-k principal components."""

    name = "pcah"

    def _fit_projections(self, centred: torch.Tensor) -> dict[int, torch.Tensor]:
        directions = principal_directions(centred, max(self.bits))
        return {k: directions[:, :k] for k in self.bits}


class ITQ(_ProjectionHash):
    """PCA to k dimensions, then the ITQ rotation (50 iterations, seeded start)."""

    name = "itq"

    @dataclass
    class Config(MethodConfig):
        seed: int = 0
        n_iter: int = 50

        def validate(self) -> None:
            if self.n_iter < 0:
                raise ValueError(f"itq: n_iter must be >= 0, got {self.n_iter}")

    def __init__(self, feature_dim: int, bits: Sequence[int], config=None):
        super().__init__(feature_dim, bits, config)
        #: per code length, ‖B − VR‖² over the iterations of the last fit (not checkpointed)
        self.quantization_errors: dict[int, list[float]] = {}

    def _fit_projections(self, centred: torch.Tensor) -> dict[int, torch.Tensor]:
        directions = principal_directions(centred, max(self.bits))
        out = {}
        for k in self.bits:
            pca = directions[:, :k]
            rotation, errors = itq_rotation(
                centred @ pca, self.config.n_iter, _generator(self.config.seed, k)
            )
            self.quantization_errors[k] = errors
            out[k] = pca @ rotation
        return out
