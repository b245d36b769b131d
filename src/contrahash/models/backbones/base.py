"""The :class:`Backbone` contract every architecture implements: blocks from input to
output, which of them train, normalisation, pooled features and token grids, and the split at a
block boundary that lets the last blocks train from cached activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF reference): (pixel − 127) / 128 on 0..255, i.e. on [0, 1] inputs:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about a backbone before building it."""

    name: str
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    supports_tokens: bool
    token_dim: int | None
    builder: Callable[..., Backbone]
    #: file names of torchvision's ImageNet weights in the torch hub cache, preferred first
    hub_files: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- base class


class BlockGroup(nn.Module):
    """Several modules/parameters counted as one block (not registered on the backbone)."""

    def __init__(self, *members: nn.Module | nn.Parameter) -> None:
        super().__init__()
        for i, member in enumerate(members):
            if isinstance(member, nn.Parameter):
                self.register_parameter(f"p{i}", member)
            else:
                self.add_module(f"m{i}", member)


class Backbone(nn.Module):
    """A feature extractor: ``normalize`` → ``forward`` / ``forward_tokens``, split in blocks.

    Subclasses register their layers under the upstream model's attribute names (so the
    ``state_dict`` keys are the upstream ones), implement ``forward``/``forward_tokens`` and
    ``_build_blocks``, and list in ``_always_follow_mode`` modules whose train/eval mode
    follows ``train()`` even when frozen.
    """

    def __init__(self, spec: BackboneSpec, input_size: int) -> None:
        super().__init__()
        self.name = spec.name
        self.feature_dim = spec.feature_dim
        self.input_size = input_size
        self.supports_tokens = spec.supports_tokens
        self.token_dim = spec.token_dim
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        self._block_list: list[nn.Module] | None = None  # plain list: not registered twice

    # -- the feature contract ------------------------------------------------------------

    def normalize(self, x01: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``[B, 3, S, S]`` → this backbone's normalised input."""
        return (x01 - self.mean.to(x01.dtype)) / self.std.to(x01.dtype)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Normalised images ``[B, 3, S, S]`` → features ``[B, feature_dim]``."""
        raise NotImplementedError

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Normalised images → token grid ``[B, T, token_dim]`` (e.g. patches, final map)."""
        raise NotImplementedError(f"backbone {self.name!r} has no token grid")

    # -- blocks and fine-tuning ----------------------------------------------------------

    def _build_blocks(self) -> list[nn.Module]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _always_follow_mode(self) -> Iterable[nn.Module]:
        return ()

    def blocks(self) -> list[nn.Module]:
        """The fine-tuning units, ordered from input to output (the stem is the first)."""
        if self._block_list is None:
            self._block_list = self._build_blocks()
        return list(self._block_list)

    def refresh_blocks(self) -> None:
        """Rebuild :meth:`blocks` from the current sub-modules (after modules were replaced,
        e.g. BatchNorm layers converted for distributed training)."""
        self._block_list = None

    def set_finetune(self, n: int) -> Backbone:
        """Train the last ``n`` blocks (0: frozen, -1: every parameter), freeze the rest."""
        blocks = self.blocks()
        if n == -1:
            self.requires_grad_(True)
        elif 0 <= n <= len(blocks):
            self.requires_grad_(False)
            for block in blocks[len(blocks) - n :]:
                block.requires_grad_(True)
        else:
            raise ValueError(
                f"finetune_blocks={n} for backbone {self.name!r}, which has {len(blocks)} "
                f"blocks; use 0 (frozen) to {len(blocks)}, or -1 for all"
            )
        return self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (the backbone's optimiser group)."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def is_frozen(self) -> bool:
        """True when no parameter is trained (features can then be cached)."""
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> Backbone:
        """Trainable blocks follow ``mode``; frozen ones stay in eval mode (BN stats fixed)."""
        super().train(False)
        for block in self.blocks():
            block.train(mode and any(p.requires_grad for p in block.parameters()))
        for module in self._always_follow_mode():
            module.train(mode)
        self.training = mode
        return self

    # -- splitting at a block boundary --------------------------------------------------

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        """One function per block (same order as :meth:`blocks`): the block's modules plus the
        parameter-free operations between it and the next block."""
        raise ValueError(f"backbone {self.name!r} cannot be split at a block boundary")

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        """The last block's output → features ``[B, feature_dim]`` or tokens ``[B, T, d]``."""
        raise ValueError(f"backbone {self.name!r} cannot be split at a block boundary")

    def _token_units(self) -> int:
        """How many units run before the token grid is read (all of them unless overridden)."""
        return len(self.blocks())

    def _split_start(self, n: int) -> int:
        """Index of the first of the last ``n`` blocks; a clear ValueError for a bad ``n``."""
        count = len(self.blocks())
        if count == 0:
            raise ValueError(
                f"backbone {self.name!r} has no blocks (no learned weights), so it cannot be "
                "split for block-input caching"
            )
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= count:
            raise ValueError(
                f"n={n!r} blocks for backbone {self.name!r}, which has {count} blocks; "
                f"use 1 to {count}"
            )
        return count - n

    def block_input(self, x: Tensor, n: int) -> Tensor:
        """Normalised images → the activation entering the first of the last ``n`` blocks.

        Runs the blocks before it (in their current train/eval mode; run it under
        ``torch.no_grad()`` to cache). ``n == len(blocks())`` returns ``x`` itself.
        """
        start = self._split_start(n)
        for unit in self._units()[:start]:
            x = unit(x)
        return x

    def forward_from(self, a: Tensor, n: int, *, tokens: bool = False) -> Tensor:
        """:meth:`block_input`'s activation → features ``[B, feature_dim]`` (or, with
        ``tokens=True``, the token grid ``[B, T, token_dim]``): runs exactly the last ``n``
        blocks and the pooling, so ``forward_from(block_input(x, n), n) == forward(x)`` and
        likewise for :meth:`forward_tokens`.
        """
        start = self._split_start(n)
        units = self._units()
        if tokens:
            if not self.supports_tokens:
                raise ValueError(f"backbone {self.name!r} has no token grid")
            stop = self._token_units()
            if start > stop:
                raise ValueError(
                    f"backbone {self.name!r} reads its token grid after block {stop} of "
                    f"{len(units)}, before the last n={n} blocks; tokens=True needs "
                    f"n >= {len(units) - stop}"
                )
            units = units[:stop]
        for unit in units[start:]:
            a = unit(a)
        return self._pool(a, tokens)

    def block_input_shape(self, n: int) -> tuple[int, ...]:
        """Per-image shape of :meth:`block_input`'s output at ``input_size`` (for sizing a
        cache). This default runs one zero image through the prefix in eval mode."""
        self._split_start(n)
        was_training = self.training
        param = next(self.parameters(), None)
        device = param.device if param is not None else self.mean.device
        try:
            self.eval()
            with torch.no_grad():
                x = torch.zeros(1, 3, self.input_size, self.input_size, device=device)
                return tuple(self.block_input(x, n).shape[1:])
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, feature_dim={self.feature_dim}, input_size={self.input_size}, "
            f"blocks={len(self.blocks())}, trainable={len(self.trainable_parameters())} tensors"
        )


def tokens_from_map(feature_map: Tensor) -> Tensor:
    """``[B, C, H, W]`` → ``[B, H·W, C]``."""
    return feature_map.flatten(2).transpose(1, 2)


