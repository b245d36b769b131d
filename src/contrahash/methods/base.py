"""The contract every hashing method fulfils, and the registry that names them.

A method is an ``nn.Module`` holding its heads (one per code length, so 16/32/64 bits
train from one backbone forward) and computing its own loss from backbone outputs: the
base class loops over the code lengths, a method returns each one's named terms
(:meth:`HashMethod.code_loss`). The one training loop (:mod:`contrahash.training.loop`, run
by :mod:`contrahash.training.train`) owns data, augmentation, backbone, optimiser,
checkpoints; the method owns heads, losses and how codes are read out.

Configuration: each method declares a ``Config`` dataclass whose defaults follow
``docs/methods.md``; :func:`make_config` rejects unknown keys with a message naming them. The registry of
methods by name is :data:`contrahash.methods.METHODS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from contrahash.losses.context import LOCAL, BatchContext


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


class MethodConfig:
    """Base of every method's ``Config`` dataclass: defaults follow ``docs/methods.md``;
    :meth:`validate` (called by :func:`make_config`) raises ``ValueError`` naming the key."""

    def validate(self) -> None:
        """Check value ranges; the default accepts everything."""


@dataclass(frozen=True)
class NeighbourSpec:
    """What a method asks of the trainer's neighbour mining (:mod:`contrahash.training.neighbours`).

    Before training, each training image's ``k`` nearest neighbours are mined by cosine of the
    frozen backbone's un-augmented features over ``pool`` (``"train"``: the training images;
    ``"database"``: the unlabelled database images). At every step, with probability ``prob``
    per image, the *last* view of the image's batch slot is replaced by a random one of its
    neighbours (else it stays the image's own view). ``refresh`` > 0 re-mines every ``refresh``
    epochs by cosine of :meth:`HashMethod.embed` of the model being trained. No labels are used.
    """

    k: int = 5
    pool: str = "database"
    prob: float = 1.0
    refresh: int = 0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"neighbour k must be >= 1, got {self.k}")
        if self.pool not in ("train", "database"):
            raise ValueError(f"neighbour pool must be 'train' or 'database', got '{self.pool}'")
        if not 0.0 < self.prob <= 1.0:
            raise ValueError(f"neighbour prob must be in (0, 1], got {self.prob}")
        if self.refresh < 0:
            raise ValueError(f"neighbour refresh must be >= 0 epochs, got {self.refresh}")


@dataclass
class StepInfo:
    """What a training step receives besides its views: where training is, and which images.

    ``positions`` are the batch rows' positions in the training split — the row order of the
    features :meth:`HashMethod.fit` was given (HARR looks up its similarity structure by them).
    ``batch`` is the batch context every loss reduces through (:mod:`contrahash.losses.context`):
    the one-process :data:`~contrahash.losses.context.LOCAL`, or in a distributed run the
    :class:`~contrahash.training.distributed.BatchGroup` whose global batch this process holds
    a slice of (the views are that slice). It is never None.
    """

    epoch: int = 0
    epochs: int = 1
    step: int = 0
    steps_per_epoch: int = 1
    positions: torch.Tensor | None = None
    batch: BatchContext = LOCAL

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


@dataclass(frozen=True)
class Term:
    """A weighted term of a method's loss: ``weight · value`` enters the total, ``value``
    (unweighted) is logged. A bare tensor in :meth:`HashMethod.code_loss`'s answer is a term
    of weight 1."""

    value: torch.Tensor
    weight: float = 1.0


#: one code length's loss as named terms (``{"contrastive": l_c, "quantization": Term(l_q, λ)}``)
Terms = Mapping[str, torch.Tensor | Term]


class HashMethod(nn.Module):
    """Base class of trainable and training-free hashing methods: the whole method contract.

    Everything the trainer may ask of a method is declared here, with its default:

    ========================  ======================================================  ==========
    member                    meaning                                                 default
    ========================  ======================================================  ==========
    ``name``                  registry name (the CLI vocabulary)                      —
    ``input_kind``            ``"vector"`` ([N, d]) or ``"tokens"`` ([N, T, d])        vector
    ``trainable``             False: training-free, everything happens in :meth:`fit`  True
    ``needs_fit``             a trainable method that also wants :meth:`fit` first     False
    ``augmentation``          augmentation recipe name (:mod:`contrahash.data.augment`)     contrastive
    ``max_batch``             largest batch the loss supports                          None (any)
    ``default_optim``         the method's optimisation recipe                         OptimSpec()
    ``n_views``               views per image one step takes (may depend on config)   2
    ``neighbours()``          a :class:`NeighbourSpec`, or None                        None
    ``fit(features)``         fit from the training split's test-time features        nothing
    ``step_inputs(views,      what every code length's loss shares in a step          the views
    step)``
    ``code_loss(bits,         one code length's loss as named :class:`Term` s          —
    inputs, step)``           (``step.positions``: the rows' places in the split)
    ``training_loss(views,    Σ over code lengths of :meth:`code_loss`, parts named   the loop
    step)``                   ``<term>_<bits>``
    ``encode(features)``      ±1 codes per code length                                —
    ``embed(features)``       continuous embedding for re-mining neighbours           refuses
    ``check_distributed()``   whether the loss is global through ``step.batch``        refuses
    ========================  ======================================================  ==========

    Inputs are backbone outputs: ``[N, d]`` feature vectors, or ``[N, T, d]`` token grids
    when ``input_kind == "tokens"``. ``tests/test_method_contract.py`` checks every
    registered method against this table; ``docs/architecture.md`` has the checklist for
    adding a method.
    """

    name: ClassVar[str] = "base"
    #: "vector" ([N, d]) or "tokens" ([N, T, d], e.g. ViT patch grid)
    input_kind: ClassVar[str] = "vector"
    #: False for LSH/PCAH/ITQ: they are fitted by :meth:`fit` on training features only
    trainable: ClassVar[bool] = True
    #: a trainable method that needs :meth:`fit` on the training features before training
    needs_fit: ClassVar[bool] = False
    #: augmentation recipe name (see contrahash.data.augment): "contrastive", "resize", "harr"
    augmentation: ClassVar[str] = "contrastive"
    #: largest batch the loss supports (NSH is O(N^3) in memory); None = any
    max_batch: ClassVar[int | None] = None
    default_optim: ClassVar[OptimSpec] = OptimSpec()

    @dataclass
    class Config(MethodConfig):
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

    # -- what the trainer asks ---------------------------------------------------------
    @property
    def n_views(self) -> int:
        """Augmented views per image one training step takes (``views`` has this length)."""
        return 2

    def neighbours(self) -> NeighbourSpec | None:
        """Neighbour positives this method wants mined and sampled, or None (the default).

        With a spec, the last of the :attr:`n_views` views of an image is, with probability
        ``spec.prob``, a view of one of its mined neighbours instead.
        """
        return None

    # -- training ---------------------------------------------------------------------
    def fit(self, features: torch.Tensor) -> None:
        """Fit from training-set features before (or instead of) gradient training.

        Called for every training-free method, and for trainable ones with ``needs_fit``,
        with the training split's test-time (un-augmented) features in split order.
        Training-free methods (LSH, PCAH, ITQ) do all their work here; HARR builds its
        similarity structure here. Default: nothing.
        """

    def step_inputs(self, views: Sequence[torch.Tensor], step: StepInfo) -> Any:
        """What the losses of all code lengths share in one step, computed once (a target,
        a similarity structure, the views concatenated); default: the views themselves."""
        return views

    def code_loss(self, bits: int, inputs: Any, step: StepInfo) -> Terms:
        """The named terms of the loss of one code length, from :meth:`step_inputs`; a
        reduction over the batch goes through ``step.batch`` (one process or many)."""
        raise NotImplementedError

    def training_loss(self, views: Sequence[torch.Tensor], step: StepInfo) -> LossOutput:
        """Loss for one batch given backbone outputs of :attr:`n_views` augmented views:
        Σ over code lengths of Σ weight · value of :meth:`code_loss`'s terms; every term is
        logged (unweighted, detached) as ``<name>_<bits>``.

        ``views[v][i]`` belongs to image i of the batch, view v; ``step.positions[i]`` is
        image i's position in the training split.
        """
        inputs = self.step_inputs(views, step)
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor | float] = {}
        for k in self.bits:
            loss_k: torch.Tensor | None = None
            for name, term in self.code_loss(k, inputs, step).items():
                value, weight = (term.value, term.weight) if isinstance(term, Term) else (term, 1.0)
                weighted = value if weight == 1.0 else weight * value
                loss_k = weighted if loss_k is None else loss_k + weighted
                parts[f"{name}_{k}"] = value.detach()
            if loss_k is None:
                raise RuntimeError(f"{self.name}: code_loss({k}) returned no term")
            total = loss_k if total is None else total + loss_k
        assert total is not None  # bits is never empty (checked in __init__)
        return LossOutput(total, parts)

    # -- inference --------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """±1 codes per code length for test-time (un-augmented) backbone outputs."""
        raise NotImplementedError

    def check_distributed(self) -> None:
        """Raise ``ValueError`` (saying why) unless every reduction of :meth:`code_loss` goes
        through ``step.batch`` (:mod:`contrahash.losses.context`), so that with a
        :class:`~contrahash.training.distributed.BatchGroup` it computes this process's share of
        the global batch's loss: contrastive negatives from every process, batch statistics
        over the global batch, shares of every mean. The default refuses: a loss written with
        plain batch means would silently train differently."""
        raise ValueError(
            f"method '{self.name}' does not support distributed training: its loss uses "
            "batch statistics that each process would compute on its own rows; train it in "
            "one process")

    @torch.no_grad()
    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Continuous embedding ``[N, e]`` of test-time features, compared by cosine when
        neighbours are re-mined from the model (``NeighbourSpec.refresh``). Methods whose
        neighbour spec can ask for a refresh must implement it."""
        raise NotImplementedError(
            f"method '{self.name}' has no embed(): it cannot re-mine neighbours from the model"
        )


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
    cfg.validate()
    return cfg


def mlp_head(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Linear → ReLU → Linear, the encoder shape shared by CIBHash and FDBH."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_out))
