"""The contract every hashing method fulfils, and the registry that names them.

A method is an ``nn.Module`` holding its heads (one per code length, so 16/32/64 bits
train from one backbone forward) and computing its own loss from backbone outputs.
The one training loop (:mod:`contrahash.train`) owns data, augmentation, backbone,
optimiser, checkpoints; the method owns heads, losses and how codes are read out.

Configuration: each method declares a ``Config`` dataclass whose defaults follow
``docs/methods.md``; :func:`build_method` rejects unknown keys with a message naming them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class OptimSpec:
    """A method's default optimisation recipe (the trainer may override any field)."""

    name: str = "adam"  # "adam" | "sgd"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    epochs: int = 60
    backbone_lr_scale: float = 0.1  # backbone lr = lr * scale when fine-tuning
    schedule: str = "constant"  # "constant" | "cosine"


@dataclass
class StepInfo:
    """Where training is; methods with schedules (e.g. FDBH's polarisation α) read it."""

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps_per_epoch: int = 1

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        total = max(1, self.epochs * self.steps_per_epoch)
        return min(1.0, (self.epoch * self.steps_per_epoch + self.step) / total)


@dataclass
class LossOutput:
    """Total loss to back-propagate plus named scalar parts for logging.

    Parts are detached 0-d tensors (or floats): the trainer sums them on the device and reads
    them once per epoch, so logging never makes the host wait for the GPU mid-epoch.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor | float] = field(default_factory=dict)


class HashMethod(nn.Module):
    """Base class of trainable and training-free hashing methods.

    Subclasses set the class attributes, define ``Config`` and implement
    :meth:`training_loss` and :meth:`encode`.

    Inputs are backbone outputs: ``[N, d]`` feature vectors, or ``[N, T, d]`` token grids
    when ``input_kind == "tokens"``.
    """

    name: ClassVar[str] = "base"
    #: number of augmented views per image a training step needs (HARR uses 3)
    n_views: ClassVar[int] = 2
    #: "vector" ([N, d]) or "tokens" ([N, T, d], e.g. ViT patch grid)
    input_kind: ClassVar[str] = "vector"
    #: False for LSH/PCAH/ITQ: they are fitted by :meth:`fit` on training features only
    trainable: ClassVar[bool] = True
    #: augmentation recipe name (see contrahash.augment): "contrastive", "resize", "harr"
    augmentation: ClassVar[str] = "contrastive"
    #: largest batch the loss supports (NSH is O(N^3) in memory); None = any
    max_batch: ClassVar[int | None] = None
    default_optim: ClassVar[OptimSpec] = OptimSpec()

    @dataclass
    class Config:
        pass

    def __init__(self, feature_dim: int, bits: Sequence[int], config: Any | None = None):
        super().__init__()
        bits = [int(b) for b in bits]
        if not bits or any(b <= 0 for b in bits):
            raise ValueError(f"{self.name}: code lengths must be positive integers, got {bits}")
        if len(set(bits)) != len(bits):
            raise ValueError(f"{self.name}: duplicate code lengths in {bits}")
        self.feature_dim = int(feature_dim)
        self.bits = bits
        self.config = config if config is not None else self.Config()

    # -- training ---------------------------------------------------------------
    def fit(self, features: torch.Tensor) -> None:
        """Fit from training-set features before (or instead of) gradient training.

        Training-free methods (LSH, PCAH, ITQ) do all their work here; HARR builds its
        similarity structure here. Default: nothing.
        """

    def training_loss(self, views: Sequence[torch.Tensor], info: StepInfo) -> LossOutput:
        """Loss for one batch given backbone outputs of ``n_views`` augmented views.

        ``views[v][i]`` belongs to image i of the batch, view v.
        """
        raise NotImplementedError

    # -- inference ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """±1 codes per code length for test-time (un-augmented) backbone outputs."""
        raise NotImplementedError

    def extra_state_arrays(self) -> dict[str, torch.Tensor]:
        """Non-parameter tensors to checkpoint (buffers are saved automatically)."""
        return {}


def make_config(cls: type[HashMethod], overrides: Mapping[str, Any] | None) -> Any:
    """Build ``cls.Config`` from defaults plus overrides, naming any unknown key."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"method '{cls.name}': unknown config key(s) {unknown}; "
            f"known keys: {sorted(fields)}"
        )
    cfg = cls.Config(**overrides)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


# name -> class; filled by contrahash.methods.__init__ (explicit, no import magic)
METHODS: dict[str, type[HashMethod]] = {}


def build_method(
    name: str,
    feature_dim: int,
    bits: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
) -> HashMethod:
    """Instantiate a registered method by name.

    >>> from contrahash.methods import build_method
    >>> m = build_method("cibhash", feature_dim=32, bits=[16, 32])
    >>> sorted(m.encode(torch.randn(4, 32)))
    [16, 32]
    """
    from contrahash import methods as _registry  # noqa: F401  (fills METHODS)

    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; available: {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(feature_dim, bits, make_config(cls, overrides))


def mlp_head(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Linear → ReLU → Linear, the encoder shape shared by CIBHash and FDBH."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))
