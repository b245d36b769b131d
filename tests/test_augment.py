"""Batched augmentation: shapes, determinism, per-sample randomness, ops against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps

from contrahash.data import augment as A
from contrahash.data.augment import (
    RECIPES,
    BatchAugment,
    apply_views,
    test_transform,
    view_augmenters,
)

# Everything off but the geometry: the output is a pure function of crop/flip.
NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int = 8, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g)


def smooth_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Colourful images without saturated pixels (so clamping never kicks in)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    planes = [0.2 + 0.6 * xs, 0.2 + 0.6 * ys, 0.5 + 0.3 * torch.sin(6 * xs * ys)]
    img = torch.stack(planes, dim=-1)
    batch = torch.stack([img.roll(i * 3, dims=1) for i in range(n)])
    return (batch * 255).round().to(torch.uint8)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("size", [24, 40])
def test_every_recipe_shape_dtype_range(recipe: str, size: int) -> None:
    images = random_images(6)
    out = BatchAugment(recipe, size)(images, generator=gen())
    assert out.shape == (6, 3, size, size)
    assert out.dtype == torch.float32
    assert out.device == images.device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_channels_first_input_gives_the_same_result(recipe: str) -> None:
    images = random_images(5, 20, 28)
    aug = BatchAugment(recipe, 16)
    last = aug(images, generator=gen(4))
    first = aug(images.permute(0, 3, 1, 2).contiguous(), generator=gen(4))
    torch.testing.assert_close(last, first)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_seeded_generator_is_deterministic(recipe: str) -> None:
    images = random_images(8)
    aug = BatchAugment(recipe, 32)
    a = aug(images, generator=gen(7))
    b = aug(images, generator=gen(7))
    assert torch.equal(a, b)
    if recipe != "resize":  # the only deterministic recipe
        assert not torch.equal(a, aug(images, generator=gen(8)))


def test_consecutive_calls_on_one_generator_differ() -> None:
    images = random_images(4)
    aug = BatchAugment("contrastive", 32)
    g = gen(1)
    assert not torch.equal(aug(images, generator=g), aug(images, generator=g))


def test_each_sample_gets_its_own_crop() -> None:
    one = random_images(1)
    batch = one.expand(16, -1, -1, -1)
    out = BatchAugment("contrastive", 32, flip_p=0.0, **NO_COLOUR)(batch, generator=gen())
    flat = out.flatten(1)
    distinct = {tuple(row[:64].tolist()) for row in flat}
    assert len(distinct) == 16


def test_each_sample_gets_its_own_colour() -> None:
    batch = smooth_images(1).expand(16, -1, -1, -1)
    out = BatchAugment(
        "contrastive", 32, crop=False, flip_p=0.0, jitter_p=1.0, grayscale_p=0.0, blur_p=0.0
    )(batch, generator=gen())
    means = out.mean(dim=(1, 2, 3))
    assert len(set(means.tolist())) == 16


def test_empty_batch() -> None:
    out = BatchAugment("contrastive", 16)(torch.zeros(0, 8, 8, 3, dtype=torch.uint8))
    assert out.shape == (0, 3, 16, 16)


def test_float_input_in_unit_range_is_accepted() -> None:
    images = random_images(3)
    as_float = images.float() / 255
    aug = BatchAugment("harr_strong", 16)
    torch.testing.assert_close(aug(images, generator=gen()), aug(as_float, generator=gen()))


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [16, 32, 80])  # down-sampling, identity, up-sampling
def test_full_box_crop_equals_resize(size: int) -> None:
    images = random_images(4, 32, 32)
    aug = BatchAugment(
        "contrastive", size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, **NO_COLOUR
    )
    torch.testing.assert_close(
        aug(images, generator=gen()), test_transform(images, size), atol=2e-6, rtol=0
    )


def test_test_transform_matches_antialiased_interpolate() -> None:
    images = random_images(3, 37, 53)
    x = images.permute(0, 3, 1, 2).float() / 255
    for size in (16, 64):
        ref = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
        torch.testing.assert_close(test_transform(images, size), ref)
    assert torch.equal(test_transform(images[:, :32, :32], 32), x[:, :, :32, :32])


def test_resize_recipe_is_test_transform() -> None:
    images = random_images(3, 30, 30)
    assert torch.equal(BatchAugment("resize", 48)(images), test_transform(images, 48))


def test_non_square_images_are_resized_to_square() -> None:
    images = random_images(3, 20, 50)
    for recipe in RECIPES:
        assert BatchAugment(recipe, 24)(images, generator=gen()).shape == (3, 3, 24, 24)


def test_flip_on_a_known_image() -> None:
    images = random_images(4, 16, 16)
    base = test_transform(images, 16)
    flipped = BatchAugment("resize", 16, flip_p=1.0)(images, generator=gen())
    assert torch.equal(flipped, base.flip(-1))
    # a crop of the full image with flip always on: mirrored resize
    aug = BatchAugment(
        "contrastive", 24, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0, **NO_COLOUR
    )
    torch.testing.assert_close(aug(images, generator=gen()), test_transform(images, 24).flip(-1))


def test_flip_probability_is_per_sample() -> None:
    images = random_images(1, 16, 16).expand(64, -1, -1, -1)
    base = test_transform(images[:1], 16)
    out = BatchAugment("resize", 16, flip_p=0.5)(images, generator=gen())
    flipped = torch.tensor([torch.equal(o, base[0].flip(-1)) for o in out])
    kept = torch.tensor([torch.equal(o, base[0]) for o in out])
    assert (flipped | kept).all()
    assert 15 < int(flipped.sum()) < 49


def test_crop_boxes_follow_scale_and_ratio() -> None:
    boxes = A._crop_boxes(2000, 32, 48, (0.3, 0.6), (0.5, 2.0), gen())
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 48 + 1e-4).all() and (boxes[:, 3] <= 32 + 1e-4).all()
    area = w * h / (32 * 48)
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 0.6 + 1e-4
    aspect = w / h
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2.0 + 1e-4
    assert area.std() > 0.05  # spread over the range, not one value


def test_crop_boxes_fall_back_to_a_centred_crop() -> None:
    # No box of aspect ratio >= 4 fits a tall image: torchvision's fallback applies.
    boxes = A._crop_boxes(5, 40, 10, (0.9, 1.0), (4.0, 5.0), gen())
    expected = torch.tensor([0.0, 18.75, 10.0, 21.25], dtype=torch.float64)
    torch.testing.assert_close(boxes, expected.expand(5, 4))


# ----------------------------------------------------------------------------- colour


def test_colour_ops_at_identity_strength_leave_the_image_unchanged() -> None:
    images = random_images(6)
    base = test_transform(images, 32)
    aug = BatchAugment(
        "contrastive",
        32,
        crop=False,
        flip_p=0.0,
        jitter_p=1.0,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
    )
    assert torch.equal(aug(images, generator=gen()), base)
    x = base
    ones = torch.ones(len(x))
    assert torch.equal(A.adjust_brightness(x, ones), x)
    assert torch.equal(A.adjust_contrast(x, ones), x)
    assert torch.equal(A.adjust_saturation(x, ones), x)
    torch.testing.assert_close(A.adjust_hue(x, torch.zeros(len(x))), x, atol=2e-6, rtol=0)


def test_jitter_skipped_samples_are_untouched() -> None:
    images = random_images(6)
    base = test_transform(images, 32)
    aug = BatchAugment(
        "contrastive", 32, crop=False, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0
    )
    assert torch.equal(aug(images, generator=gen()), base)


@pytest.mark.parametrize(
    ("ours", "reference", "factors"),
    [
        (A.adjust_brightness, TF.adjust_brightness, [0.0, 0.6, 1.0, 1.4, 2.0]),
        (A.adjust_contrast, TF.adjust_contrast, [0.0, 0.6, 1.0, 1.4, 2.0]),
        (A.adjust_saturation, TF.adjust_saturation, [0.0, 0.6, 1.0, 1.4, 2.0]),
        (A.adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.05, 0.45]),
    ],
)
def test_colour_ops_match_torchvision_per_image(ours, reference, factors) -> None:
    x = torch.rand(len(factors), 3, 12, 17, generator=gen(5))
    x[0, :, :3, :3] = 0.5  # some grey pixels (hue undefined)
    x[1, :, 0, 0] = 0.0  # black
    f = torch.tensor(factors)
    expected = torch.stack([reference(x[i], float(f[i])) for i in range(len(factors))])
    torch.testing.assert_close(ours(x, f), expected, atol=1e-5, rtol=0)


def test_grayscale_gives_equal_channels() -> None:
    images = random_images(8)
    out = BatchAugment("contrastive", 32, grayscale_p=1.0, jitter_p=0.0, blur_p=0.0)(
        images, generator=gen()
    )
    torch.testing.assert_close(out[:, 0], out[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 1], out[:, 2], atol=1e-6, rtol=0)
    ref = TF.rgb_to_grayscale(test_transform(images, 32))
    plain = BatchAugment("resize", 32, grayscale_p=1.0)(images, generator=gen())
    torch.testing.assert_close(plain[:, :1], ref, atol=1e-6, rtol=0)


def test_contrast_mean_is_the_mean_of_the_crop() -> None:
    """Jitter runs at storage resolution; weighted by the resampling it sees the crop's mean."""
    x = torch.rand(3, 3, 20, 20, generator=gen(2))
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [2.0, 5.0, 11.0, 17.0], [7.5, 1.5, 19.0, 9.5]])
    rows = A._resample_matrix(A._axis_coefficients(boxes[:, 1], boxes[:, 3], 16, None), 20, 16)
    cols = A._resample_matrix(A._axis_coefficients(boxes[:, 0], boxes[:, 2], 16, None), 20, 16)
    flat = A.adjust_contrast(x, torch.zeros(3), (rows.sum(1), cols.sum(1)))  # all = crop mean
    crop = A._apply_resample(x, rows, cols)
    expected = A._gray(crop).mean(dim=(1, 2, 3))
    torch.testing.assert_close(flat[:, 0, 0, 0], expected)


# ----------------------------------------------------------------------------- blur


def test_blur_preserves_a_constant_image() -> None:
    images = torch.full((4, 32, 32, 3), 77, dtype=torch.uint8)
    out = BatchAugment("contrastive", 64, blur_p=1.0, jitter_p=0.0, grayscale_p=0.0)(
        images, generator=gen()
    )
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("sigma", "side"), [(0.7, 5), (2.0, 7), (1.3, 13)])
def test_blur_matches_torchvision_gaussian_blur(sigma: float, side: int) -> None:
    images = random_images(3, 24, 24)
    aug = BatchAugment("resize", 24, blur_p=1.0, blur_sigma=(sigma, sigma), blur_kernel=side)
    ref = TF.gaussian_blur(test_transform(images, 24), [side, side], [sigma, sigma])
    torch.testing.assert_close(aug(images, generator=gen()), ref, atol=1e-5, rtol=0)


def test_blur_kernel_size_follows_the_output_size() -> None:
    assert BatchAugment("contrastive", 32).blur_kernel_size == 3
    assert BatchAugment("contrastive", 96).blur_kernel_size == 9
    assert BatchAugment("contrastive", 224).blur_kernel_size == 13  # 23, capped at 3σ_max
    assert BatchAugment("contrastive", 224, blur_kernel=5).blur_kernel_size == 5


def test_unblurred_samples_are_exact() -> None:
    images = random_images(4)
    aug = BatchAugment("resize", 32, blur_p=0.0)
    assert torch.equal(aug(images), test_transform(images, 32))


# ----------------------------------------------------------------------------- RandAugment


@pytest.mark.parametrize("op", A._RANDAUG_OPS)
def test_each_randaugment_op_keeps_shape_and_range(op: str) -> None:
    x = torch.rand(5, 3, 24, 24, generator=gen(1))
    if op in A._GEOMETRIC:
        amount = torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0]) * A._geometric_amount(op, 1.0, 24)
        out = A._affine(x, A._geometric_theta(op, amount.double(), 24).float())
    else:
        out = A._pointwise_randaug(op, x, 10.0)
    assert out.shape == x.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    if op in ("identity", "solarize"):  # solarize's threshold is 256 at magnitude 10 (HARR)
        assert torch.equal(out, x)
    else:
        assert not torch.equal(out, x)


def test_solarize_below_full_magnitude() -> None:
    x = torch.tensor([0.1, 0.4, 0.6, 0.9]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    out = A._pointwise_randaug("solarize", x, 5.0)  # threshold 128/255
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.1, 0.4, 0.4, 0.1]))


def test_equalize_matches_pil() -> None:
    images = random_images(3, 16, 16)
    images[0] = images[0] // 4  # low-contrast image
    images[1, :, :, 0] = 9  # constant channel: identity
    x = images.permute(0, 3, 1, 2).float() / 255
    ours = (A._equalize(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    for i in range(3):
        ref = np.asarray(ImageOps.equalize(Image.fromarray(images[i].numpy())))
        np.testing.assert_array_equal(ours[i].numpy(), ref)


def test_posterize_and_geometric_ops() -> None:
    x = torch.rand(2, 3, 8, 8, generator=gen())
    levels = (A._posterize(x, 4) * 255).round().to(torch.int64)
    assert (levels % 16 == 0).all()
    # a 10-px translation of a 224-px view moves the picture by exactly 10 px
    img = torch.zeros(1, 1, 224, 224)
    img[..., 100, 100] = 1.0
    theta = A._geometric_theta("translate_x", torch.tensor([10.0]), 224).float()
    moved = A._affine(img, theta, fill=0.0)
    assert moved[0, 0, 100].argmax().item() == 110


def test_cutout_blanks_a_square_of_the_scaled_size() -> None:
    images = torch.zeros(32, 40, 40, 3, dtype=torch.uint8)
    aug = BatchAugment("harr_randaug", 224, randaugment_ops=0)  # cutout 16 px at 224
    out = aug(images, generator=gen())
    grey = (out[:, 0] == A._FILL).sum(dim=(1, 2))
    assert (grey <= 256).all() and (grey > 0).all()
    assert (grey == 256).float().mean() > 0.5  # most squares lie fully inside
    assert (out[:, 0][out[:, 0] != A._FILL] == 0).all()
    assert A._cutout_mask(torch.tensor([[0.0, 5.0]]), 4, 8, 8).sum() == 2 * 4  # clipped at top


def test_randaugment_ops_are_drawn_per_sample() -> None:
    batch = smooth_images(1).expand(32, -1, -1, -1)
    aug = BatchAugment("harr_randaug", 32, crop=False, flip_p=0.0, cutout=0.0)
    out = aug(batch, generator=gen())
    distinct = {tuple(o.flatten()[:256].tolist()) for o in out}
    assert len(distinct) > 5


# ----------------------------------------------------------------------------- API


def test_view_augmenters() -> None:
    views = view_augmenters("contrastive", 32, 2)
    assert [v.recipe for v in views] == ["contrastive", "contrastive"]
    assert [v.recipe for v in view_augmenters("resize", 32, 3)] == ["resize"] * 3
    harr = view_augmenters("harr", 32, 3)
    assert [v.recipe for v in harr] == ["harr_strong", "harr_randaug", "harr_weak"]
    with pytest.raises(ValueError, match="3 views"):
        view_augmenters("harr", 32, 2)
    with pytest.raises(ValueError, match="'nope'"):
        view_augmenters("nope", 32, 2)


def test_recipe_parameters() -> None:
    assert RECIPES["contrastive"].scale == (0.5, 1.0)
    assert RECIPES["contrastive"].jitter_p == 0.7
    assert RECIPES["harr_strong"].scale == (0.08, 1.0) and RECIPES["harr_strong"].jitter_p == 0.8
    assert RECIPES["harr_randaug"].randaugment_ops == 2 and RECIPES["harr_randaug"].cutout == 16
    aug = BatchAugment("contrastive", 32, scale=[0.2, 1.0], jitter_p=0.5)
    assert aug.params.scale == (0.2, 1.0) and aug.params.jitter_p == 0.5


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        BatchAugment("bogus", 32)
    with pytest.raises(ValueError, match="jiter_p"):
        BatchAugment("contrastive", 32, jiter_p=0.5)
    with pytest.raises(ValueError, match="flip_p"):
        BatchAugment("contrastive", 32, flip_p=1.5)
    with pytest.raises(ValueError, match="scale"):
        BatchAugment("contrastive", 32, scale=(0.9, 0.1))
    with pytest.raises(ValueError, match="size"):
        BatchAugment("contrastive", 0)
    aug = BatchAugment("contrastive", 16)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.zeros(2, 8, 8, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B, H, W, 3"):
        aug(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        aug(torch.zeros(2, 8, 8, 3, dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_cuda_matches_cpu_without_host_syncs(recipe: str) -> None:
    images = random_images(16)
    aug = BatchAugment(recipe, 48)
    expected = aug(images, generator=gen(0))
    on_gpu = images.cuda()
    aug(on_gpu, generator=gen(0))  # warm-up: cached constants are copied once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = aug(on_gpu, generator=gen(0))  # same host draws: same result as on the CPU
        g = torch.Generator(device="cuda").manual_seed(0)
        first, second = aug(on_gpu, generator=g), aug(on_gpu, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device.type == "cuda" and out.shape == (16, 3, 48, 48)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-4, rtol=0)
    again = aug(on_gpu, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(first, again)
    if recipe != "resize":
        assert not torch.equal(first, second)


def test_apply_views_batches_equal_augmenters() -> None:
    images = random_images(5)
    views = apply_views(view_augmenters("contrastive", 24, 2), images, generator=gen(3))
    assert len(views) == 2 and all(v.shape == (5, 3, 24, 24) for v in views)
    assert not torch.equal(views[0], views[1])
    stacked = BatchAugment("contrastive", 24)(images.repeat(2, 1, 1, 1), generator=gen(3))
    assert torch.equal(torch.cat(views), stacked)
    harr = apply_views(view_augmenters("harr", 24, 3), images, generator=gen(3))
    assert [v.shape for v in harr] == [(5, 3, 24, 24)] * 3


def test_global_rng_is_used_without_a_generator() -> None:
    images = random_images(4)
    aug = BatchAugment("contrastive", 24)
    torch.manual_seed(11)
    a = aug(images)
    torch.manual_seed(11)
    assert torch.equal(a, aug(images))


def test_autocast_does_not_reach_the_augmentation() -> None:
    images = random_images(4)
    aug = BatchAugment("contrastive", 24)
    expected = aug(images, generator=gen(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(images, generator=gen(5))
        resized = test_transform(images, 40)
    assert out.dtype == torch.float32 and resized.dtype == torch.float32
    assert torch.equal(out, expected)
