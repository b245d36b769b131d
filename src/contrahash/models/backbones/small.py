"""Backbones for tests and speed checks: a tiny CNN and the raw pixels (no weights needed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from contrahash.models.backbones.base import Backbone, BackboneSpec, tokens_from_map
from contrahash.models.backbones.weights import load_into, load_state_dict_file


class TinyCNNBackbone(Backbone):
    """Three conv–BN–ReLU–pool blocks (16, 32, 64 channels); 64-d pooled; grid = final map."""

    def __init__(self, spec: BackboneSpec, input_size: int) -> None:
        super().__init__(spec, input_size)
        widths = (3, 16, 32, 64)
        self.stages = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x).mean(dim=(2, 3))

    def forward_tokens(self, x: Tensor) -> Tensor:
        return tokens_from_map(self.stages(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        return list(self.stages.children())

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def _build_blocks(self) -> list[nn.Module]:
        return list(self.stages.children())


def tiny_cnn_builder(
    spec: BackboneSpec, weights: Path | None, random_init: bool, size: int
) -> Backbone:
    backbone = TinyCNNBackbone(spec, size)
    if weights is not None:
        load_into(backbone, load_state_dict_file(weights), weights, head_prefixes=())
    return backbone


# ----------------------------------------------------------------------------- raw pixels


class PixelsBackbone(Backbone):
    """No learned weights: the grey-level image at ``input_size``, flattened (``S*S`` features).

    The honest floor for small grey images such as the embedded digits (``contrahash demo``):
    every method then hashes the same raw pixel vectors. Tokens are the image rows.
    It has no blocks, so it cannot be split (:meth:`block_input` raises a ValueError).
    """

    def __init__(self, spec: BackboneSpec, input_size: int) -> None:
        super().__init__(spec, input_size)
        self.feature_dim = input_size * input_size
        self.token_dim = input_size

    def _grey(self, x: Tensor) -> Tensor:
        return x.float().mean(dim=1)  # [B, S, S]

    def forward(self, x: Tensor) -> Tensor:
        return self._grey(x).flatten(1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        return self._grey(x)

    def _build_blocks(self) -> list[nn.Module]:
        return []


def pixels_builder(spec: BackboneSpec, weights: Path | None, random_init: bool, size: int) -> Backbone:
    if weights is not None:
        raise ValueError("backbone 'pixels' has no weights to load")
    return PixelsBackbone(spec, size)


