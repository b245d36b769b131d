"""Loss functions, one per module (plain functions; methods compose them).

A loss that reduces over the batch takes a :class:`~contrahash.losses.context.BatchContext`
(``ctx``, default the one-process :data:`~contrahash.losses.context.LOCAL`): the same code is
the loss of one process's batch and this process's share of a global batch's loss.
"""

from contrahash.losses.bernoulli_kl import bernoulli_kl_rows, symmetric_bernoulli_kl
from contrahash.losses.bit_balance import bit_balance_loss
from contrahash.losses.bit_correlation import bit_correlation_loss
from contrahash.losses.context import LOCAL, BatchContext
from contrahash.losses.cosine_quantization import cosine_quantization_loss
from contrahash.losses.cubic_quantization import cubic_quantization_loss
from contrahash.losses.decorrelation import decorrelation_loss
from contrahash.losses.feature_reconstruction import cosine_reconstruction_loss
from contrahash.losses.nt_xent import nt_xent
from contrahash.losses.polarization import polarization_loss
from contrahash.losses.similarity_mse import half_batch_similarity_mse
from contrahash.losses.soft_sort import soft_sort
from contrahash.losses.soft_target_ce import soft_target_cross_entropy
from contrahash.losses.sorted_nce import sorted_nce_loss
from contrahash.losses.squared_quantization import squared_quantization_loss
from contrahash.losses.wta_contrastive import wta_contrastive_loss

__all__ = [
    "LOCAL",
    "BatchContext",
    "bit_balance_loss",
    "bit_correlation_loss",
    "cosine_quantization_loss",
    "cosine_reconstruction_loss",
    "cubic_quantization_loss",
    "decorrelation_loss",
    "half_batch_similarity_mse",
    "nt_xent",
    "polarization_loss",
    "soft_sort",
    "soft_target_cross_entropy",
    "sorted_nce_loss",
    "squared_quantization_loss",
    "bernoulli_kl_rows",
    "symmetric_bernoulli_kl",
    "wta_contrastive_loss",
]
