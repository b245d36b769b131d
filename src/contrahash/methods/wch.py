"""WCH: Yu, Qiu, Chen, Zhang, "Weighted Contrative Hashing" (sic), Asian Conference on Computer
Vision (ACCV) 2022, pp. 3861–3876.

Official-code behaviour as written down in docs/methods.md ("WCH"); inputs are patch-token
grids ``[N, T, d]`` (ViT-B/16: 196×768 with the class token dropped; any backbone that yields
a token grid works, frozen or fine-tuned):

* Mutual attention (training only, :func:`mutual_attention`): per image, A_ij = cos(x¹_i, x²_j)
  between the patches of its two views; x̃¹ = softmax_i(Aᵀ / T) x¹ (view-1 content laid out on
  view-2 patches), x̃² = softmax_j(A / T) x², T = 1.
* Target (:func:`weighted_target`): s_nm = mean_i max_j cos(x̃¹_{n,i}, x̃²_{m,j}) over all N×N
  pairs of the batch (computed in chunks: N²·T²·d work), P = row-softmax(s / 0.2),
  W_nm = P_nm / P_nn. Deviation: we stop the gradient through W; the official code does not
  detach it, which lets a fine-tuned backbone move its own target.
* Head per code length: mean-pool tokens → LayerNorm → Linear(d, 1024) → ReLU → Linear(1024, k)
  → tanh = h; b = ST(sign(h)).
* Loss: soft-target cross-entropy with logits b¹b²ᵀ/(k·0.3) and target rows W taken as they
  are — decision: rows are not renormalised, because normalising W's rows gives back P
  exactly and W's definition would be moot; unnormalised, the true pair has weight 1 and
  every other pair its patch-similarity weight — plus the bit term
  (mean over bits of the batch-mean of b¹)² − mean(b¹²) (:func:`~contrahash.losses.bit_balance_loss`).
* Test code: sign(h) (0 → +1).

Optimiser (official, fine-tuning ViT-B/16): Adam lr 1e-5, cosine schedule, batch 32; the
backbone gets the same lr (``backbone_lr_scale = 1``). With a frozen backbone the freshly
initialised head learns slowly at 1e-5; such runs may override ``lr`` to 1e-4–1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from contrahash.losses import bit_balance_loss, soft_target_cross_entropy
from contrahash.methods.base import HashMethod, MethodConfig, OptimSpec, StepInfo, Term, Terms
from contrahash.models.codes import sign_pm1, sign_st


def mutual_attention(
    x1: torch.Tensor, x2: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """WCH's mutual attention between the token grids of two views of the same images.

    ``x1`` [N, T1, d], ``x2`` [N, T2, d]. Returns (x̃¹ [N, T2, d], x̃² [N, T1, d]) with
    A = cos(x¹_i, x²_j), x̃¹_j = Σ_i softmax_i(A_ij / T) x¹_i and x̃²_i = Σ_j softmax_j(A_ij / T) x²_j.
    """
    if x1.ndim != 3 or x2.ndim != 3 or x1.shape[0] != x2.shape[0] or x1.shape[2] != x2.shape[2]:
        raise ValueError(
            f"mutual_attention: expected [N, T, d] grids of equal N and d, got {tuple(x1.shape)} "
            f"and {tuple(x2.shape)}"
        )
    affinity = F.normalize(x1, dim=-1) @ F.normalize(x2, dim=-1).transpose(1, 2)  # [N, T1, T2]
    x1_tilde = torch.softmax(affinity.transpose(1, 2) / temperature, dim=-1) @ x1  # [N, T2, d]
    x2_tilde = torch.softmax(affinity / temperature, dim=-1) @ x2  # [N, T1, d]
    return x1_tilde, x2_tilde


def patch_similarity(a: torch.Tensor, b: torch.Tensor, max_elements: int = 1 << 25) -> torch.Tensor:
    """s_nm = mean_i max_j cos(a_{n,i}, b_{m,j}) for token grids a [N, Ta, d], b [M, Tb, d].

    Computed a few anchors n at a time so the [n, M, Ta, Tb] block stays under ``max_elements``.
    """
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    n, ta, _ = a.shape
    m, tb, _ = b.shape
    chunk = max(1, max_elements // max(1, m * ta * tb))
    rows = []
    for start in range(0, n, chunk):
        block = torch.einsum("nid,mjd->nmij", a[start : start + chunk], b)
        rows.append(block.amax(dim=-1).mean(dim=-1))
    return torch.cat(rows)


def weighted_target(
    x1: torch.Tensor,
    x2: torch.Tensor,
    attention_temperature: float = 1.0,
    target_temperature: float = 0.2,
) -> torch.Tensor:
    """WCH's target W [N, N] (no gradient): W_nm = P_nm / P_nn, P = row-softmax(s / 0.2)."""
    with torch.no_grad():
        x1_tilde, x2_tilde = mutual_attention(x1.float(), x2.float(), attention_temperature)
        probabilities = torch.softmax(patch_similarity(x1_tilde, x2_tilde) / target_temperature, dim=1)
        return probabilities / torch.diagonal(probabilities).unsqueeze(1)


class WCH(HashMethod):
    """Weighted contrastive hashing on patch-token grids (official-code behaviour)."""

    name = "wch"
    input_kind = "tokens"
    default_optim = OptimSpec(
        name="adam", lr=1e-5, batch_size=32, epochs=60, schedule="cosine", backbone_lr_scale=1.0
    )

    @dataclass
    class Config(MethodConfig):
        hidden: int = 1024
        attention_temperature: float = 1.0
        target_temperature: float = 0.2
        code_temperature: float = 0.3
        lambda_balance: float = 1.0

        def validate(self) -> None:
            for key in ("attention_temperature", "target_temperature", "code_temperature"):
                if getattr(self, key) <= 0:
                    raise ValueError(f"wch: {key} must be > 0")

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Config | None = None):
        super().__init__(feature_dim, bits, config)
        c = self.config
        self.heads = nn.ModuleDict(
            {
                str(k): nn.Sequential(
                    nn.LayerNorm(feature_dim),
                    nn.Linear(feature_dim, c.hidden),
                    nn.ReLU(),
                    nn.Linear(c.hidden, k),
                    nn.Tanh(),
                )
                for k in self.bits
            }
        )

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 3 or tokens.shape[2] != self.feature_dim:
            raise ValueError(
                f"wch: expected a token grid [N, T, {self.feature_dim}], got {tuple(tokens.shape)}"
            )

    def relaxed_codes(self, tokens: torch.Tensor, bits: int) -> torch.Tensor:
        """h = tanh(MLP(LayerNorm(mean-pooled tokens))) for one code length."""
        self._check_tokens(tokens)
        return self.heads[str(bits)](tokens.float().mean(dim=1))

    def step_inputs(self, views: Sequence[torch.Tensor], step: StepInfo
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two views' token grids and the target W of the batch."""
        c = self.config
        x1, x2 = views[0], views[1]
        self._check_tokens(x1)
        self._check_tokens(x2)
        return x1, x2, weighted_target(x1, x2, c.attention_temperature, c.target_temperature)

    def code_loss(self, bits: int, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  step: StepInfo) -> Terms:
        c = self.config
        x1, x2, target = inputs
        b1 = sign_st(self.relaxed_codes(x1, bits))
        b2 = sign_st(self.relaxed_codes(x2, bits))
        contrastive = soft_target_cross_entropy(b1 @ b2.t() / (bits * c.code_temperature), target)
        return {"weighted_contrastive": contrastive,
                "balance": Term(bit_balance_loss(b1), c.lambda_balance)}

    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        return {k: sign_pm1(self.relaxed_codes(features, k)) for k in self.bits}
