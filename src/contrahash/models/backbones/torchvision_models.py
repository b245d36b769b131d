"""torchvision's VGG16, ResNet-50 and ViT-B/16, with weights from the torch hub cache or a
file (never downloaded).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from contrahash.models.backbones.base import Backbone, BackboneSpec, BlockGroup, tokens_from_map
from contrahash.models.backbones.weights import (
    WeightsNotFoundError,
    load_into,
    load_state_dict_file,
)


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
        return tokens_from_map(self.features(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        *stages, fc6, fc7 = self.blocks()

        def pool_fc6(x: Tensor) -> Tensor:
            return fc6(torch.flatten(self.avgpool(x), 1))

        return [*stages, pool_fc6, fc7]

    def _token_units(self) -> int:
        return len(self.blocks()) - 2

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return tokens_from_map(a) if tokens else a

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
        return tokens_from_map(self.feature_map(x))

    def _units(self) -> list[Callable[[Tensor], Tensor]]:
        def stem(x: Tensor) -> Tensor:
            return self.maxpool(self.relu(self.bn1(self.conv1(x))))

        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        return [stem, *[block for layer in layers for block in layer]]

    def _pool(self, a: Tensor, tokens: bool) -> Tensor:
        return tokens_from_map(a) if tokens else a.mean(dim=(2, 3))

    def _build_blocks(self) -> list[nn.Module]:
        stem = BlockGroup(self.conv1, self.bn1)
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
        embed = BlockGroup(self.conv_proj, self.class_token, self.encoder.pos_embedding)
        return [embed, *layers[:-1], BlockGroup(layers[-1], self.encoder.ln)]


def torchvision_builder(
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
            load_into(backbone, state, source, head_prefixes=head_prefixes)
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


