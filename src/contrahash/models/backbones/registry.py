"""The registry of backbones by name (the config's ``backbone.name`` vocabulary) and
:func:`build_backbone`.
"""

from __future__ import annotations

from pathlib import Path

from contrahash.models.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_MEAN,
    LITE_STD,
    Backbone,
    BackboneSpec,
)
from contrahash.models.backbones.efficientnet import efficientnet_lite_builder
from contrahash.models.backbones.small import pixels_builder, tiny_cnn_builder
from contrahash.models.backbones.torchvision_models import (
    ResNet50Backbone,
    VGG16Backbone,
    ViTB16Backbone,
    torchvision_builder,
)
from contrahash.models.backbones.weights import WeightsNotFoundError


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
                builder=efficientnet_lite_builder(level),
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
            builder=torchvision_builder("vgg16", VGG16Backbone, ("classifier.6.",)),
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
            builder=torchvision_builder("resnet50", ResNet50Backbone, ("fc.",)),
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
            builder=torchvision_builder("vit_b_16", ViTB16Backbone, ("heads.",)),
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
            builder=pixels_builder,
        ),
        _spec(
            name="tiny_cnn",
            feature_dim=64,
            input_size=32,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            supports_tokens=True,
            token_dim=64,
            builder=tiny_cnn_builder,
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
