"""Splitting a backbone at a block boundary: ``forward_from(block_input(x, n), n)`` is ``forward``.

The reference is the backbone's own end-to-end ``forward``/``forward_tokens`` (a separate code
path: Sequential containers and the upstream ``Encoder.forward``), compared for every split
point. Both paths run the same kernels on the same tensors in the same order, so eval outputs
and train-mode gradients must be bit-identical (``torch.equal``), not merely close. The float16
round trip (what the block-input cache stores) is compared with a stated tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from contrahash.models.backbones import BACKBONES, Backbone, build_backbone

# Small inputs keep the CPU forwards fast.
SIZE = {
    "efficientnet_lite0": 64,
    "efficientnet_lite1": 64,
    "efficientnet_lite2": 64,
    "resnet50": 64,
    "vit_b_16": 32,
    "vgg16": 64,
    "tiny_cnn": 32,
    "pixels": 8,
}
SPLITTABLE = sorted(set(BACKBONES) - {"pixels"})
# Split points for the (costlier) gradient tests: the head only, a middle cut, everything
# (n = all blocks: the block input is the image). vgg16 n=3 trains the last conv stage and
# fc6 (25088×4096).
GRAD_N = {
    "efficientnet_lite0": (1, 6, 18),
    "efficientnet_lite1": (7,),
    "efficientnet_lite2": (9,),
    "resnet50": (1, 5),
    "vit_b_16": (1, 4),
    "vgg16": (1, 3),
    "tiny_cnn": (1, 2, 3),
}
# Float16 block inputs (11-bit significand: relative rounding ≤ 2⁻¹¹ ≈ 4.9e-4 per element),
# as the block-input cache stores them, against the float32 end-to-end path: relative error of
# the loss, and relative L2 error of all trainable gradients taken together (one parameter's
# gradient alone can be ~0 by construction, e.g. a bias followed by train-mode BatchNorm, so
# its own relative error means nothing). Measured at batch 8 (random init, BatchNorm
# calibrated): loss ≤ 5.3e-4, gradients ≤ 7.1e-2 (efficientnet_lite2 n=9; most ≤ 3e-2). A
# random relative perturbation of the same size (uniform ±2⁻¹²) moves them as much: it is the
# sensitivity of a random-init network with train-mode BatchNorm over 8 images, not a float16
# defect. The exact float32 comparison above is what catches a wrong split.
FP16_LOSS_TOL = 2e-3
FP16_GRAD_TOL = 0.15


@pytest.fixture(scope="module")
def built() -> dict[str, Backbone]:
    return {}


def calibrate_batchnorm(backbone: Backbone) -> None:
    """Set every BatchNorm's running statistics to those of one batch of random images.

    With random weights and the default running statistics (mean 0, variance 1) the eval-mode
    activations shrink block after block (to ~1e-8 in EfficientNet's last blocks), below
    float16's normal range; after this they are of order 1, as with pretrained weights.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # cumulative average: one batch sets the statistics
    backbone.set_finetune(-1).train()
    torch.manual_seed(0)
    with torch.no_grad():
        backbone(inputs(backbone, n=8, seed=99))
    backbone.set_finetune(0).eval()


def get(built: dict[str, Backbone], name: str) -> Backbone:
    if name not in built:
        torch.manual_seed(0)
        built[name] = build_backbone(name, random_init=True, image_size=SIZE[name])
        if name != "pixels":
            calibrate_batchnorm(built[name])
    backbone = built[name]
    backbone.set_finetune(0)
    return backbone.eval()


def inputs(backbone: Backbone, n: int = 4, seed: int = 1) -> Tensor:
    size = backbone.input_size
    x01 = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return backbone.normalize(x01)


# ----------------------------------------------------------------------------- eval: exact


@pytest.mark.parametrize("name", SPLITTABLE)
def test_split_forward_equals_forward(built, name: str) -> None:
    backbone = get(built, name)
    x = inputs(backbone, n=2)
    count = len(backbone.blocks())
    with torch.no_grad():
        whole = backbone(x)
        whole_tokens = backbone.forward_tokens(x)
        for n in sorted({1, 2, count // 2, count}):
            a = backbone.block_input(x, n)
            assert tuple(a.shape) == (x.shape[0], *backbone.block_input_shape(n)), n
            assert torch.equal(backbone.forward_from(a, n), whole), n
            if name == "vgg16" and n == 1:
                continue  # its token grid precedes fc7 (checked below)
            assert torch.equal(backbone.forward_from(a, n, tokens=True), whole_tokens), n
    assert backbone.block_input(x, count) is x


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50", "tiny_cnn"])
def test_split_is_exact_in_channels_last(built, name: str) -> None:
    backbone = get(built, name)
    x = inputs(backbone).contiguous(memory_format=torch.channels_last)
    n = len(backbone.blocks()) // 2
    with torch.no_grad():
        assert torch.equal(backbone.forward_from(backbone.block_input(x, n), n), backbone(x))


def test_efficientnet_lite0_block_input_shapes_at_224() -> None:
    backbone = build_backbone("efficientnet_lite0", random_init=True)
    # the figure: the last six blocks (MBConv 11–15 and the head) start at 112×14×14
    assert backbone.block_input_shape(6) == (112, 14, 14)
    assert backbone.block_input_shape(1) == (320, 7, 7)  # the head conv's input
    assert backbone.block_input_shape(17) == (32, 112, 112)  # after the stride-2 stem
    assert backbone.block_input_shape(18) == (3, 224, 224)
    x = backbone.normalize(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        for n in (2, 4, 6, 8):
            assert backbone.block_input(x, n).shape[1:] == backbone.block_input_shape(n)


# ----------------------------------------------------------------------------- train: gradients


def loss_and_grads(backbone: Backbone, features: Tensor, proj: Tensor) -> tuple[Tensor, list]:
    loss = (features @ proj).tanh().square().mean()
    params = backbone.trainable_parameters()
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), list(grads)


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize(("name", "n"), [(name, n) for name in SPLITTABLE for n in GRAD_N[name]])
def test_split_training_gives_the_end_to_end_gradients(built, name: str, n: int) -> None:
    backbone = get(built, name)
    backbone.set_finetune(n).train()
    x = inputs(backbone, n=8, seed=2)
    proj = torch.randn(backbone.feature_dim, 16, generator=torch.Generator().manual_seed(3))
    buffers = {k: v.clone() for k, v in backbone.state_dict().items()}

    def run(cache_dtype: torch.dtype | None, seed: int = 7) -> tuple[Tensor, list]:
        backbone.load_state_dict(buffers)  # same BN running stats before each path
        torch.manual_seed(seed)  # drop-connect / dropout draw the same masks on each path
        if cache_dtype is None:
            return loss_and_grads(backbone, backbone(x), proj)
        a = backbone.block_input(x, n).detach().to(cache_dtype).float()
        return loss_and_grads(backbone, backbone.forward_from(a, n), proj)

    try:
        loss_e2e, grads_e2e = run(None)
        loss_split, grads_split = run(torch.float32)
        assert len(grads_e2e) == len(backbone.trainable_parameters()) > 0
        assert torch.equal(loss_split, loss_e2e)
        assert all(torch.equal(g, h) for g, h in zip(grads_split, grads_e2e, strict=True))

        if n == len(backbone.blocks()):
            return  # the "block input" is the image itself: nothing to cache
        loss_16, grads_16 = run(torch.float16)
        assert rel_err(loss_16, loss_e2e) < FP16_LOSS_TOL
        error = rel_err(flat(grads_16), flat(grads_e2e))
        assert 0 < error < FP16_GRAD_TOL
    finally:
        backbone.load_state_dict(buffers)
        backbone.set_finetune(0).eval()


def test_drop_connect_is_live_in_the_trained_suffix(built) -> None:
    """The gradient test above is not vacuous: the suffix's drop-connect draws masks (so equal
    outputs under one seed mean the per-index rates were kept)."""
    backbone = get(built, "efficientnet_lite0")
    backbone.set_finetune(6).train()
    try:
        x = inputs(backbone, n=8, seed=4)
        with torch.no_grad():
            a = backbone.block_input(x, 6)
            outs = []
            for seed in (0, 0, 1):
                torch.manual_seed(seed)
                outs.append(backbone.forward_from(a, 6))
        assert torch.equal(outs[0], outs[1])
        assert not torch.equal(outs[0], outs[2])
        backbone.eval()
        with torch.no_grad():
            assert torch.equal(backbone.forward_from(a, 6), backbone.forward_from(a, 6))
    finally:
        backbone.set_finetune(0).eval()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tiny_cnn"])
def test_bad_n_raises_a_clear_value_error(built, name: str) -> None:
    backbone = get(built, name)
    count = len(backbone.blocks())
    x = inputs(backbone, n=1)
    for bad in (0, -1, count + 1, 2.0, True):
        pattern = rf"n={bad!r} blocks for backbone '{name}', which has {count} blocks; use 1 to"
        with pytest.raises(ValueError, match=pattern):
            backbone.block_input(x, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=pattern):
            backbone.forward_from(x, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=pattern):
            backbone.block_input_shape(bad)  # type: ignore[arg-type]


def test_pixels_cannot_be_split(built) -> None:
    backbone = get(built, "pixels")
    x = inputs(backbone, n=1)
    for call in (
        lambda: backbone.block_input(x, 1),
        lambda: backbone.forward_from(x, 1),
        lambda: backbone.block_input_shape(1),
    ):
        with pytest.raises(ValueError, match="backbone 'pixels' has no blocks.*cannot be split"):
            call()


def test_vgg16_tokens_need_the_conv_stages(built) -> None:
    backbone = get(built, "vgg16")
    with torch.no_grad():
        x = inputs(backbone, n=1)
        a = backbone.block_input(x, 2)  # fc6's input: the last conv stage's map (2×2 at 64 px)
        assert a.shape == (1, 512, 2, 2)
        assert torch.equal(backbone.forward_from(a, 2, tokens=True), backbone.forward_tokens(x))
        a = backbone.block_input(x, 1)  # fc7's input: fc6's 4096-d output
    assert a.shape == (1, 4096)
    with pytest.raises(ValueError, match="vgg16.*tokens=True needs n >= 2"):
        backbone.forward_from(a, 1, tokens=True)
