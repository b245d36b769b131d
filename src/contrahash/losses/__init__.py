"""Loss functions, one per module (plain functions; methods compose them)."""

from contrahash.losses.bernoulli_kl import symmetric_bernoulli_kl
from contrahash.losses.decorrelation import decorrelation_loss
from contrahash.losses.feature_reconstruction import cosine_reconstruction_loss
from contrahash.losses.nt_xent import nt_xent
from contrahash.losses.polarization import polarization_loss

__all__ = [
    "cosine_reconstruction_loss",
    "decorrelation_loss",
    "nt_xent",
    "polarization_loss",
    "symmetric_bernoulli_kl",
]
