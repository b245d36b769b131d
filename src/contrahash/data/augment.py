"""Batched, per-sample random image augmentation on uint8 tensors (CPU or CUDA).

Every function takes a whole batch of images as stored — ``[B, H, W, 3]`` uint8 (channels-last,
what the data stores return) or ``[B, 3, H, W]`` — and returns ``float32 [B, 3, S, S]`` in
``[0, 1]`` on the input's device, laid out channels-last in memory (the layout the backbones
run fastest in; ``.contiguous()`` gives plain NCHW). Normalisation is the backbone's job
(:meth:`contrahash.models.backbones.Backbone.normalize`).

This file is longer than the package's 600-line rule on purpose: it does one job (batched
augmentation), and its colour, blur, crop and flip kernels share the per-sample parameter
draws, the generator discipline and the layout handling that make a batch reproducible, so
splitting it would scatter one recipe over several files.

>>> aug = BatchAugment("contrastive", 64)
>>> images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
>>> aug(images, generator=torch.Generator().manual_seed(0)).shape
torch.Size([8, 3, 64, 64])

Every random parameter (crop box, flip, jitter factors, blur σ, RandAugment op...) is drawn
per sample. The parameters are drawn on the host — small ``[B]``-sized tensors — and shipped
to the device in one copy; the pixel work is vectorised over the batch (a Python loop runs over
the few ops of a recipe, never over samples). So a CUDA batch costs a few dozen kernel launches
and never makes the host wait for the GPU. Randomness comes from ``generator``: a CPU generator
is drawn from directly; a CUDA generator seeds a host generator from its current state and is
then advanced, so the output is a function of the generator's state either way. Without one,
torch's global (CPU) RNG is used, so ``torch.manual_seed`` makes runs repeatable.

Recipes (``docs/methods.md``, "Augmentation recipe" and HARR):

``contrastive``
    random resized crop to S (scale 0.5–1, ratio 3/4–4/3), horizontal flip p=0.5, colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1) with p=0.7, grayscale p=0.2,
    Gaussian blur σ∈[0.1, 2] with p=0.5.
``resize``
    the test-time transform: the whole image resized to S×S (bilinear, antialiased), no crop.
``harr_strong``
    the SimCLR recipe of the official HARR code: crop scale 0.08–1, jitter p=0.8, grayscale
    p=0.2, blur p=0.5, flip.
``harr_randaug``
    crop (scale 0.08–1) + flip, then RandAugment(2, 10) with the official HARR op table (14 ops,
    each of the 2 draws applied with p=0.5, magnitude 10 of 10), then cutout 16 px.
``harr_weak``
    the official HARR "weak" view, ``RandomResizedCrop(224)`` with torchvision's default scale
    (0.08–1), + flip.

How it differs from the torchvision/PIL per-image pipeline (same distributions, cheaper):

* Geometry is linear algebra: crop, flip, resize and blur of each sample are two matrices
  (rows ``[S, H]``, columns ``[S, W]``) and the output is ``rows · image · colsᵀ``. The resize
  weights are triangle (bilinear) weights of half-width ``max(1, box/S)`` — exactly
  ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)`` on the crop, i.e.
  plain bilinear when enlarging and antialiased when shrinking. Crop boxes are continuous
  (sub-pixel), drawn with torchvision's rule (10 tries, then a centred crop).
* The point-wise colour ops (jitter, grayscale) run on the stored image *before* resampling:
  they commute with the (linear) resampling up to clamping and hue's non-linearity at edges,
  and at storage resolution (32 px for CIFAR) they cost ~50× less than at 224 px. Contrast's
  mean is the crop's mean: each stored pixel is weighted by its share of the output.
* Blur: separable Gaussian per sample with reflect padding at output resolution (folded into
  the resampling matrices); kernel side ``int(0.1·S)`` made odd (SimCLR) and capped at
  ``2·ceil(3·σ_max)+1`` (13 for σ ≤ 2: weights beyond 3σ are < 1.2 % of the peak).
* Colour-jitter order: one random permutation of (brightness, contrast, saturation, hue) per
  batch (torchvision draws one per image); ``jitter_order="fixed"`` keeps torchvision's listed
  order. Samples that skip the jitter get identity factors.
* RandAugment follows the official HARR code (cv2-based ``RandomAugment(2, 10)``): ops
  Identity, AutoContrast, Equalize, Rotate (±30°), Solarize (threshold 256 at magnitude 10,
  i.e. a no-op, as in that code), Color/Contrast/Brightness/Sharpness (factor 1.9),
  ShearX/Y (±0.3, anchored at the top-left corner like cv2), TranslateX/Y (±10 px),
  Posterize (4 bits); grey (128) fill. Color and Contrast use the ITU-R 601 grey weights (the
  official code swapped the R and B weights). Pixel sizes (translation 10 px, cutout 16 px)
  are those of a 224-pixel view and scale with S (16 px at 224, 2 px at 32).
* With TF32 matmuls enabled globally on CUDA, the resampling runs in TF32 (≈1e-3 relative).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RECIPES",
    "AugmentParams",
    "BatchAugment",
    "apply_views",
    "test_transform",
    "to_float_nchw",
    "view_augmenters",
]

# ITU-R 601-2 luma weights (torchvision's rgb_to_grayscale).
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Pixel sizes in the HARR RandAugment/cutout recipe refer to a 224-pixel view.
_REFERENCE_SIZE = 224
_FILL = 128.0 / 255.0


@dataclass(frozen=True)
class AugmentParams:
    """All knobs of one augmentation recipe; :class:`BatchAugment` overrides take these names."""

    crop: bool = True  # random resized crop; False = resize the whole image
    scale: tuple[float, float] = (0.5, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h
    flip_p: float = 0.5
    jitter_p: float = 0.7
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_order: str = "random"  # "random" (one permutation per batch) | "fixed"
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 0  # 0 = automatic (see module docstring); otherwise odd side in px
    randaugment_ops: int = 0  # RandAugment N (ops drawn per sample); 0 = off
    randaugment_magnitude: float = 10.0  # RandAugment M, out of 10
    randaugment_p: float = 0.5  # each drawn op is applied with this probability
    cutout: float = 0.0  # cutout side in px of a 224-px view (scaled with S); 0 = off

    def __post_init__(self) -> None:
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"augmentation parameter {what}")

        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "randaugment_p"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name}={value} must be a probability in [0, 1]")
        lo, hi = self.scale
        check(0.0 < lo <= hi <= 1.0, f"scale={self.scale} must satisfy 0 < min <= max <= 1")
        lo, hi = self.ratio
        check(0.0 < lo <= hi, f"ratio={self.ratio} must satisfy 0 < min <= max")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            check(value >= 0.0, f"{name}={value} must be >= 0")
        check(0.0 <= self.hue <= 0.5, f"hue={self.hue} must be in [0, 0.5]")
        check(
            self.jitter_order in ("random", "fixed"),
            f"jitter_order={self.jitter_order!r} must be 'random' or 'fixed'",
        )
        lo, hi = self.blur_sigma
        check(0.0 < lo <= hi, f"blur_sigma={self.blur_sigma} must satisfy 0 < min <= max")
        check(
            self.blur_kernel == 0 or (self.blur_kernel > 0 and self.blur_kernel % 2 == 1),
            f"blur_kernel={self.blur_kernel} must be 0 (automatic) or a positive odd number",
        )
        check(self.randaugment_ops >= 0, f"randaugment_ops={self.randaugment_ops} must be >= 0")
        check(
            0.0 <= self.randaugment_magnitude <= 10.0,
            f"randaugment_magnitude={self.randaugment_magnitude} must be in [0, 10]",
        )
        check(self.cutout >= 0.0, f"cutout={self.cutout} must be >= 0")

    @property
    def is_plain_resize(self) -> bool:
        """True when the recipe is the deterministic test transform."""
        return not self.crop and not any(
            (
                self.flip_p,
                self.jitter_p,
                self.grayscale_p,
                self.blur_p,
                self.randaugment_ops,
                self.cutout,
            )
        )


_NO_COLOUR = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)

RECIPES: dict[str, AugmentParams] = {
    "contrastive": AugmentParams(),
    "resize": AugmentParams(crop=False, flip_p=0.0, **_NO_COLOUR),
    "harr_strong": AugmentParams(scale=(0.08, 1.0), jitter_p=0.8),
    "harr_randaug": AugmentParams(
        scale=(0.08, 1.0), randaugment_ops=2, randaugment_magnitude=10.0, cutout=16.0, **_NO_COLOUR
    ),
    "harr_weak": AugmentParams(scale=(0.08, 1.0), **_NO_COLOUR),
}


# ----------------------------------------------------------------------------- layout


def to_float_nchw(images: Tensor) -> Tensor:
    """``[B, H, W, 3]`` or ``[B, 3, H, W]`` uint8 (or float in [0, 1]) → float32 ``[B, 3, H, W]``.

    A channels-last uint8 batch becomes a channels-last-strided float tensor (no extra copy).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected a batch of images [B, H, W, 3] or [B, 3, H, W], got {shape}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] != 3:
        raise ValueError(
            f"expected 3 colour channels in [B, H, W, 3] or [B, 3, H, W], got {tuple(images.shape)}"
        )
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise ValueError(f"expected uint8 images (or float in [0, 1]), got dtype {images.dtype}")


def test_transform(images: Tensor, size: int) -> Tensor:
    """Test-time transform: resize the whole image to ``size × size`` (bilinear, antialiased).

    Returns float32 ``[B, 3, size, size]`` in ``[0, 1]`` on the input's device (channels-last).
    """
    x = to_float_nchw(images).contiguous(memory_format=torch.channels_last)
    if x.shape[-2:] != (size, size):
        with torch.autocast(x.device.type, enabled=False):
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        x = x.clamp_(0.0, 1.0)  # antialiased bilinear can overshoot by a hair
    return x.contiguous(memory_format=torch.channels_last)


test_transform.__test__ = False  # type: ignore[attr-defined]  # a transform, not a pytest test


# ----------------------------------------------------------------------------- host-side draws


def _host_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The CPU generator every parameter is drawn from (None: torch's global CPU RNG).

    A CUDA generator's state (seed and offset) lives on the host: hashing it seeds a CPU
    generator without waiting for the GPU, and the offset is then advanced so that the next
    call draws differently.
    """
    if generator is None or generator.device.type == "cpu":
        return generator
    digest = hashlib.blake2b(generator.get_state().numpy().tobytes(), digest_size=8).digest()
    generator.set_offset(generator.get_offset() + 4)
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 2)


def _uniform(shape: Sequence[int], lo: float, hi: float, gen: torch.Generator | None) -> Tensor:
    return torch.rand(tuple(shape), generator=gen, dtype=torch.float64) * (hi - lo) + lo


def _coin(n: int, p: float, gen: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) < p


def _crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None,
) -> Tensor:
    """torchvision's RandomResizedCrop rule, vectorised; ``[B, 4]`` (x1, y1, x2, y2), float64."""
    tries = 10
    area = float(height * width)
    target = _uniform((batch, tries), scale[0], scale[1], gen) * area
    aspect = torch.exp(_uniform((batch, tries), math.log(ratio[0]), math.log(ratio[1]), gen))
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    valid = (w <= width) & (h <= height)
    first = valid.to(torch.int8).argmax(dim=1, keepdim=True)  # first valid try
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    pos = torch.rand((batch, 2), generator=gen, dtype=torch.float64)
    # Fallback (no valid try): centred crop with the aspect ratio clamped into range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], float(height)
    else:
        fw, fh = float(width), float(height)
    ok = valid.any(dim=1)
    w = torch.where(ok, w, fw)
    h = torch.where(ok, h, fh)
    x1 = torch.where(ok, pos[:, 0] * (width - w), (width - fw) / 2)
    y1 = torch.where(ok, pos[:, 1] * (height - h), (height - fh) / 2)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def _axis_coefficients(lo: Tensor, hi: Tensor, size: int, flip: Tensor | None) -> Tensor:
    """``[B, 3]`` (α, β, half-width): output pixel i samples source coordinate α + β·(i + ½).

    Source coordinates are pixel indices (pixel j covers [j, j+1)); a flip mirrors the span.
    """
    scale = (hi - lo) / size
    alpha = lo - 0.5
    beta = scale
    if flip is not None:
        alpha = torch.where(flip, alpha + scale * size, alpha)
        beta = torch.where(flip, -scale, scale)
    return torch.stack([alpha, beta, scale.clamp(min=1.0)], dim=1)


def _gaussian_kernels(sigma: Tensor, side: int) -> Tensor:
    """``[B, side]`` normalised 1-D Gaussian kernels (torchvision's formula)."""
    half = side // 2
    t = torch.arange(-half, half + 1, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _ship(tensors: Sequence[Tensor], device: torch.device) -> list[Tensor]:
    """Move small host tensors to ``device`` in one copy per dtype, without a host wait."""
    if device.type == "cpu":
        return list(tensors)
    out: list[Tensor | None] = [None] * len(tensors)
    for dtype in {t.dtype for t in tensors}:
        picked = [i for i, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[i].reshape(-1) for i in picked])
        # Pinned memory makes the copy asynchronous; from pageable memory the host would wait
        # for all queued GPU work first.
        moved = flat.pin_memory().to(device, non_blocking=True)
        start = 0
        for i in picked:
            n = tensors[i].numel()
            out[i] = moved[start : start + n].view(tensors[i].shape)
            start += n
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------- device-side ops


def _resample_matrix(coefficients: Tensor, n_in: int, size: int) -> Tensor:
    """``[B, size, n_in]`` triangle-weight rows from :func:`_axis_coefficients`' output."""
    alpha, beta, half_width = coefficients.unsqueeze(2).unbind(1)  # each [B, 1]
    steps = torch.arange(size, device=coefficients.device, dtype=coefficients.dtype) + 0.5
    centre = torch.addcmul(alpha, beta, steps)  # [B, size]
    source = torch.arange(n_in, device=coefficients.device, dtype=coefficients.dtype)
    distance = (centre.unsqueeze(2) - source).abs_()
    weights = (1.0 - distance / half_width.unsqueeze(2)).clamp_(min=0.0)
    return weights / weights.sum(dim=2, keepdim=True).clamp_(min=1e-12)


@functools.lru_cache(maxsize=32)
def _reflect_onehot(size: int, side: int, device: torch.device) -> Tensor:
    """``[side, size·size]``: entry (t, i·size + j) = [reflect(i + t − side//2) == j]."""
    half = side // 2
    i = torch.arange(size, device=device).view(-1, 1)
    t = torch.arange(side, device=device).view(1, -1)
    j = (i + t - half).abs()  # reflect at 0
    j = torch.where(j > size - 1, 2 * (size - 1) - j, j).clamp_(0, size - 1)  # reflect at end
    onehot = j.T.unsqueeze(2) == torch.arange(size, device=device)  # [side, size, size]
    return onehot.to(torch.float32).reshape(side, size * size)


def _blur_matrix(kernels: Tensor, size: int) -> Tensor:
    """``[B, size, size]`` matrices applying 1-D kernels ``[B, k]`` with reflect padding.

    A matmul (not a scatter) keeps it exact and deterministic on CUDA.
    """
    onehot = _reflect_onehot(size, kernels.shape[1], kernels.device)
    return (kernels @ onehot).view(-1, size, size)


def _apply_resample(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``rows @ x @ colsᵀ`` per sample: ``[B,3,H,W]`` → ``[B,3,S,S]`` (channels-last memory)."""
    batch, channels, height, width = x.shape
    size = rows.shape[1]
    # [B, W, H·3] ← x; columns first: [B, S_j, H·3]
    by_width = x.permute(0, 3, 2, 1).reshape(batch, width, height * channels)
    partial = cols @ by_width
    # [B, H, S_j·3] ← partial; rows: [B, S_i, S_j·3] = [B, S, S, 3] in memory
    by_height = partial.view(batch, size, height, channels).transpose(1, 2)
    out = rows @ by_height.reshape(batch, height, size * channels)
    return out.view(batch, size, size, channels).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=64)
def _const(
    values: tuple[float, ...], shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> Tensor:
    """A small constant tensor on ``device``, copied there once (cached)."""
    return torch.tensor(values, dtype=dtype).view(shape).to(device)


def _gray(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` ITU-R 601 luma."""
    return (x * _const(_GRAY_WEIGHTS, (1, 3, 1, 1), x.device, x.dtype)).sum(dim=1, keepdim=True)


def _per_sample(factor: Tensor | float, x: Tensor) -> Tensor | float:
    return factor.view(-1, 1, 1, 1).to(x.dtype) if isinstance(factor, Tensor) else factor


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample brightness (torchvision semantics); ``factor`` ``[B]`` or a float."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(
    x: Tensor, factor: Tensor | float, weights: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """Per-sample contrast: blend with the mean grey level of each image.

    ``weights`` (``[B, H]``, ``[B, W]``) make it a weighted mean over pixels — each stored
    pixel's weight in a later resampling, so that the mean is the one of the crop.
    """
    gray = _gray(x)
    if weights is None:
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    else:
        wy, wx = weights
        weighted = (wy.unsqueeze(1) @ gray.squeeze(1)) @ wx.unsqueeze(2)  # [B, 1, 1]
        mean = weighted.view(-1, 1, 1, 1) / (wy.sum(1) * wx.sum(1)).view(-1, 1, 1, 1)
    return torch.lerp(mean.expand_as(x), x, _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Per-sample saturation: blend with the image's grey version."""
    return torch.lerp(_gray(x).expand_as(x), x, _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor | float) -> Tensor:
    """Per-sample hue rotation by ``shift`` (fraction of a turn, [-0.5, 0.5]) through HSV.

    Matches torchvision's ``adjust_hue`` (to float rounding) in about 15 kernels.
    """
    maxc, argmax = x.max(dim=1, keepdim=True)  # first maximum: r, then g, then b (torchvision)
    delta = maxc - x.amin(dim=1, keepdim=True)  # = v·s
    # Hue in sixths of a turn: (g−b)/δ, 2 + (b−r)/δ or 4 + (r−g)/δ for max r, g or b.
    differences = x.roll(-1, dims=1) - x.roll(-2, dims=1)  # (g−b, b−r, r−g)
    hue = (differences.gather(1, argmax) / delta.clamp(min=1e-12)).add_(argmax, alpha=2.0)
    # HSV → RGB: channel n ∈ (5, 3, 1) is v − v·s·clamp(min(k, 4 − k), 0, 1), k = (n + h) mod 6.
    offsets = _const((5.0, 3.0, 1.0), (1, 3, 1, 1), x.device, x.dtype)
    k = torch.remainder(hue + (offsets + 6.0 * _per_sample(shift, x)), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(maxc, delta, ramp, value=-1.0)


# ----------------------------------------------------------------------------- RandAugment


def _affine(x: Tensor, theta: Tensor, fill: float = _FILL) -> Tensor:
    """Per-sample affine warp (``theta`` maps output to input, normalised coords), grey fill."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(
        x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return warped.add_(fill)


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    span = x.amax(dim=(2, 3), keepdim=True) - lo
    out = (x - lo) / span.clamp(min=1e-12)
    return torch.where(span > 0, out, x).clamp_(0.0, 1.0)


def _equalize(x: Tensor) -> Tensor:
    """PIL's ImageOps.equalize per sample and channel, on 8-bit levels."""
    batch, channels, height, width = x.shape
    levels = (x * 255.0).round_().clamp_(0, 255).to(torch.int64).reshape(batch * channels, -1)
    hist = torch.zeros(batch * channels, 256, device=x.device, dtype=torch.int64)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    last = 255 - (hist > 0).flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    step = (hist.sum(dim=1, keepdim=True) - hist.gather(1, last)) // 255
    shifted = torch.cat([step // 2, hist[:, :-1]], dim=1)
    table = (shifted.cumsum(dim=1) // step.clamp(min=1)).clamp_(0, 255)
    identity = torch.arange(256, device=x.device).expand_as(table)
    table = torch.where(step > 0, table, identity)
    out = table.gather(1, levels).to(x.dtype).div_(255.0)
    return out.view(batch, channels, height, width)


def _sharpness(x: Tensor, factor: float) -> Tensor:
    """PIL's ImageEnhance.Sharpness: blend with a 3×3 smoothed copy; borders untouched."""
    # kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 = (3×3 box sum + 4·centre) / 13; pooling
    # rather than a convolution: sub-batch sizes vary, and cuDNN would re-tune for each.
    centre = x[:, :, 1:-1, 1:-1]
    smooth = (F.avg_pool2d(x, 3, stride=1) * 9.0 + 4.0 * centre) / 13.0
    inner = torch.lerp(smooth, centre, factor).clamp_(0.0, 1.0)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _posterize(x: Tensor, bits: int) -> Tensor:
    levels = (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    mask = (0xFF << (8 - bits)) & 0xFF
    return (levels & mask).to(x.dtype).div_(255.0)


def _geometric_theta(kind: str, amount: Tensor, size: int) -> Tensor:
    """Output→input affine maps (normalised coords) of the cv2-style ops of the HARR code."""
    n = amount.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=amount.dtype)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    if kind == "rotate":  # about the centre, amount in degrees
        rad = amount * (math.pi / 180.0)
        cos, sin = torch.cos(rad), torch.sin(rad)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    elif kind == "shear_x":  # cv2 [[1, f, 0], [0, 1, 0]]: anchored at the top-left corner
        theta[:, 0, 1], theta[:, 0, 2] = -amount, -amount
    elif kind == "shear_y":
        theta[:, 1, 0], theta[:, 1, 2] = -amount, -amount
    elif kind == "translate_x":  # amount in pixels
        theta[:, 0, 2] = -2.0 * amount / size
    elif kind == "translate_y":
        theta[:, 1, 2] = -2.0 * amount / size
    else:
        raise ValueError(f"not a geometric op: {kind!r}")
    return theta


_RANDAUG_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "translate_x",
    "translate_y",
    "posterize",
    "shear_y",
)
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
# Sub-batch groups, in order: identity, all geometric ops (one warp), then each other op.
_RANDAUG_GROUPS = ("identity", "geometric", *(o for o in _RANDAUG_OPS[1:] if o not in _GEOMETRIC))


def _geometric_amount(name: str, level: float, size: int) -> float:
    if name == "rotate":
        return level * 30.0  # degrees
    if name in ("shear_x", "shear_y"):
        return level * 0.3
    return level * 10.0 * size / _REFERENCE_SIZE  # translate: 10 px of a 224-px view


# op index → sub-batch group index
_GROUP_OF_OP = torch.tensor(
    [_RANDAUG_GROUPS.index("geometric" if op in _GEOMETRIC else op) for op in _RANDAUG_OPS]
)


def _pointwise_randaug(name: str, x: Tensor, magnitude: float) -> Tensor:
    """One non-geometric RandAugment op (official HARR argument mapping, MAX_LEVEL 10)."""
    level = magnitude / 10.0
    factor = level * 1.8 + 0.1
    if name == "identity":
        return x
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    if name == "solarize":
        threshold = int(level * 256) / 255.0
        return x if threshold > 1.0 else torch.where(x < threshold, x, 1.0 - x)
    if name == "posterize":
        return _posterize(x, int(level * 4))
    if name == "color":
        return adjust_saturation(x, factor)
    if name == "contrast":
        return adjust_contrast(x, factor)
    if name == "brightness":
        return adjust_brightness(x, factor)
    if name == "sharpness":
        return _sharpness(x, factor)
    raise ValueError(f"unknown RandAugment op {name!r}")


def _cutout_mask(centres: Tensor, side: int, height: int, width: int) -> Tensor:
    """``[B, 1, H, W]`` mask of grey squares of ``side`` px at integer ``centres`` ``[B, 2]``."""
    half = side // 2
    cy, cx = centres[:, 0].view(-1, 1), centres[:, 1].view(-1, 1)
    ys = torch.arange(height, device=centres.device, dtype=centres.dtype).view(1, -1)
    xs = torch.arange(width, device=centres.device, dtype=centres.dtype).view(1, -1)
    rows = (ys >= cy - half) & (ys < cy + half)
    cols = (xs >= cx - half) & (xs < cx + half)
    return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)


# ----------------------------------------------------------------------------- the augmenter


@dataclass
class _Plan:
    """One batch's random parameters, drawn on the host."""

    rows: Tensor  # [B, 3] axis coefficients (α, β, half-width) for y
    cols: Tensor  # [B, 3] for x
    blur: Tensor | None  # [B, k] kernels (delta where not blurred); None: nobody blurred
    jitter: Tensor | None  # [B, 4] brightness, contrast, saturation, hue (identity if skipped)
    jitter_order: list[int]
    gray: Tensor | None  # [B] 1.0 where grayscale; None: nobody
    randaug: list[tuple[Tensor, list[int], Tensor]]  # per round: order, group sizes, theta
    cutout: Tensor | None  # [B, 2] integer centres (y, x)


class BatchAugment:
    """One augmentation recipe for whole batches, with per-sample random parameters.

    ``overrides`` replace fields of :class:`AugmentParams` (e.g. ``scale=(0.2, 1.0)``,
    ``jitter_p=0.5``); an unknown recipe or field raises ``ValueError`` naming it.
    Several views of one recipe are cheapest as one call on the repeated batch
    (:func:`apply_views` does this): every sample still gets its own parameters.
    """

    def __init__(self, recipe: str, size: int, **overrides: object) -> None:
        if recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; known: {sorted(RECIPES)}")
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"augmentation size must be a positive int, got {size!r}")
        fields = {f.name for f in dataclasses.fields(AugmentParams)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"unknown augmentation parameter(s) {unknown} for recipe {recipe!r}; "
                f"known: {sorted(fields)}"
            )
        for key in ("scale", "ratio", "blur_sigma"):
            if key in overrides:
                overrides[key] = tuple(float(v) for v in overrides[key])  # type: ignore[union-attr]
        self.recipe = recipe
        self.size = size
        self.params: AugmentParams = dataclasses.replace(RECIPES[recipe], **overrides)

    def __repr__(self) -> str:
        return f"BatchAugment({self.recipe!r}, size={self.size}, params={self.params})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchAugment):
            return NotImplemented
        return (self.size, self.params) == (other.size, other.params)

    def __hash__(self) -> int:
        return hash((self.size, self.params))

    @property
    def blur_kernel_size(self) -> int:
        """Side of the blur kernel at this output size (see the module docstring)."""
        p = self.params
        if p.blur_kernel:
            return p.blur_kernel
        side = int(0.1 * self.size)
        side += 1 - side % 2
        cap = 2 * math.ceil(3.0 * p.blur_sigma[1]) + 1
        return max(1, min(side, cap))

    # -- drawing ------------------------------------------------------------------------

    def _plan(self, batch: int, height: int, width: int, gen: torch.Generator | None) -> _Plan:
        p, size = self.params, self.size
        if p.crop:
            boxes = _crop_boxes(batch, height, width, p.scale, p.ratio, gen)
        else:
            boxes = torch.tensor([0.0, 0.0, width, height], dtype=torch.float64).repeat(batch, 1)
        flip = _coin(batch, p.flip_p, gen) if p.flip_p > 0 else None
        rows = _axis_coefficients(boxes[:, 1], boxes[:, 3], size, None)
        cols = _axis_coefficients(boxes[:, 0], boxes[:, 2], size, flip)

        blur = None
        if p.blur_p > 0:
            apply = _coin(batch, p.blur_p, gen)
            sigma = _uniform((batch,), *p.blur_sigma, gen)
            if bool(apply.any()):
                side = self.blur_kernel_size
                delta = (torch.arange(side) == side // 2).to(torch.float64)
                blur = torch.where(apply.view(-1, 1), _gaussian_kernels(sigma, side), delta)

        jitter, order = None, [0, 1, 2, 3]
        if p.jitter_p > 0:
            apply = _coin(batch, p.jitter_p, gen)
            strengths = (p.brightness, p.contrast, p.saturation)
            factors = [_uniform((batch,), max(0.0, 1.0 - s), 1.0 + s, gen) for s in strengths]
            factors.append(_uniform((batch,), -p.hue, p.hue, gen))
            identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
            jitter = torch.where(apply.view(-1, 1), torch.stack(factors, dim=1), identity)
            if p.jitter_order == "random":
                order = torch.randperm(4, generator=gen).tolist()
            if not bool(apply.any()):
                jitter = None

        gray = None
        if p.grayscale_p > 0:
            chosen = _coin(batch, p.grayscale_p, gen)
            gray = chosen.to(torch.float64) if bool(chosen.any()) else None

        randaug = [self._plan_randaug_round(batch, gen) for _ in range(p.randaugment_ops)]

        cutout = None
        if p.cutout > 0:
            cutout = (torch.rand((batch, 2), generator=gen, dtype=torch.float64) * size).floor()
        return _Plan(rows, cols, blur, jitter, order, gray, randaug, cutout)

    def _plan_randaug_round(
        self, batch: int, gen: torch.Generator | None
    ) -> tuple[Tensor, list[int], Tensor]:
        """Sort the batch by the op each sample drew; geometric ops share one warp."""
        p = self.params
        choice = torch.randint(0, len(_RANDAUG_OPS), (batch,), generator=gen)
        applied = _coin(batch, p.randaugment_p, gen)
        signs = torch.where(_coin(batch, 0.5, gen), -1.0, 1.0).to(torch.float64)
        choice = torch.where(applied, choice, torch.zeros_like(choice))  # 0 = identity
        group = _GROUP_OF_OP[choice]
        order = torch.argsort(group, stable=True)
        sizes = torch.bincount(group, minlength=len(_RANDAUG_GROUPS)).tolist()
        geometric = order[sizes[0] : sizes[0] + sizes[1]]
        ops, signs = choice[geometric], signs[geometric]
        theta = torch.zeros(len(geometric), 2, 3, dtype=torch.float64)
        level = p.randaugment_magnitude / 10.0
        for name in _GEOMETRIC:
            chosen = ops == _RANDAUG_OPS.index(name)
            if bool(chosen.any()):
                amount = signs[chosen] * _geometric_amount(name, level, self.size)
                theta[chosen] = _geometric_theta(name, amount, self.size)
        return order, sizes, theta

    # -- applying -----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch: uint8 ``[B, H, W, 3]``/``[B, 3, H, W]`` → float32 ``[B, 3, S, S]``.

        ``generator``: a CPU generator, or a CUDA one (its state seeds the draws; see the
        module docstring); None uses torch's global CPU RNG.
        """
        p, size = self.params, self.size
        x = to_float_nchw(images)
        batch, _, height, width = x.shape
        if batch == 0:
            return x.new_zeros((0, 3, size, size))
        if p.is_plain_resize:
            return test_transform(x, size)
        plan = self._plan(batch, height, width, _host_generator(generator))
        with torch.autocast(x.device.type, enabled=False):  # float32 whatever the caller runs
            return self._apply(x, plan)

    def _apply(self, x: Tensor, plan: _Plan) -> Tensor:
        p, size = self.params, self.size
        _, _, height, width = x.shape
        device = x.device

        small = [plan.rows, plan.cols]
        for t in (plan.blur, plan.jitter, plan.gray, plan.cutout):
            if t is not None:
                small.append(t)
        for _, _, theta in plan.randaug:
            small.append(theta)
        shipped = iter(_ship([t.to(torch.float32) for t in small], device))
        row_coef, col_coef = next(shipped), next(shipped)
        blur = next(shipped) if plan.blur is not None else None
        jitter = next(shipped) if plan.jitter is not None else None
        gray = next(shipped) if plan.gray is not None else None
        cutout = next(shipped) if plan.cutout is not None else None
        thetas = [next(shipped) for _ in plan.randaug]
        orders = _ship([order for order, _, _ in plan.randaug], device) if plan.randaug else []

        rows = _resample_matrix(row_coef, height, size)
        cols = _resample_matrix(col_coef, width, size)
        if blur is not None:
            matrix = _blur_matrix(blur, size)
            rows, cols = matrix @ rows, matrix @ cols

        # Point-wise colour ops at storage resolution (see the module docstring).
        if jitter is not None:
            x = self._jitter(x, jitter, plan.jitter_order, (rows.sum(dim=1), cols.sum(dim=1)))
        if gray is not None:
            x = torch.lerp(x, _gray(x).expand_as(x), gray.view(-1, 1, 1, 1))

        x = _apply_resample(x, rows, cols).clamp_(0.0, 1.0)

        for (_, sizes, _), order, theta in zip(plan.randaug, orders, thetas, strict=True):
            x = self._randaug_round(x, order, sizes, theta)
        if cutout is not None:
            side = max(1, round(p.cutout * size / _REFERENCE_SIZE))
            mask = _cutout_mask(cutout, side, size, size)
            x = x.masked_fill_(mask, _FILL)
        return x.contiguous(memory_format=torch.channels_last)

    def _jitter(
        self, x: Tensor, factors: Tensor, order: list[int], weights: tuple[Tensor, Tensor]
    ) -> Tensor:
        p = self.params
        brightness, contrast, saturation, hue = factors.unbind(1)
        for i in order:
            if i == 0 and p.brightness > 0:
                x = adjust_brightness(x, brightness)
            elif i == 1 and p.contrast > 0:
                x = adjust_contrast(x, contrast, weights)
            elif i == 2 and p.saturation > 0:
                x = adjust_saturation(x, saturation)
            elif i == 3 and p.hue > 0:
                x = adjust_hue(x, hue)
        return x

    def _randaug_round(self, x: Tensor, order: Tensor, sizes: list[int], theta: Tensor) -> Tensor:
        """Gather the batch sorted by op group, run each group on its slice, scatter back."""
        if sizes[0] == x.shape[0]:
            return x
        grouped = x.index_select(0, order)
        start = 0
        for name, count in zip(_RANDAUG_GROUPS, sizes, strict=True):
            stop = start + count
            if count and name == "geometric":
                grouped[start:stop] = _affine(grouped[start:stop], theta)
            elif count and name != "identity":
                grouped[start:stop] = _pointwise_randaug(
                    name, grouped[start:stop], self.params.randaugment_magnitude
                )
            start = stop
        return x.index_copy_(0, order, grouped)


def view_augmenters(recipe: str, size: int, n_views: int) -> list[BatchAugment]:
    """The augmenters of a method's training views.

    ``"contrastive"`` / ``"resize"``: ``n_views`` copies of that recipe; ``"harr"``: the three
    HARR views ``[harr_strong, harr_randaug, harr_weak]`` (``n_views`` must be 3). Any single
    recipe name of :data:`RECIPES` also works, like ``"contrastive"``.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    if recipe == "harr":
        if n_views != 3:
            raise ValueError(f"the 'harr' recipe has exactly 3 views, got n_views={n_views}")
        return [BatchAugment(name, size) for name in ("harr_strong", "harr_randaug", "harr_weak")]
    if recipe not in RECIPES:
        raise ValueError(
            f"unknown augmentation recipe {recipe!r}; known: {sorted([*RECIPES, 'harr'])}"
        )
    return [BatchAugment(recipe, size) for _ in range(n_views)]


def apply_views(
    augmenters: Sequence[BatchAugment], images: Tensor, generator: torch.Generator | None = None
) -> list[Tensor]:
    """One augmented view per augmenter, ``[B, 3, S, S]`` each, in the augmenters' order.

    Equal augmenters (same recipe parameters and size) run as one call on the repeated batch —
    half the kernel launches for two contrastive views — with every sample and view drawing its
    own parameters.
    """
    batch = images.shape[0]
    views: list[Tensor | None] = [None] * len(augmenters)
    groups: dict[BatchAugment, list[int]] = {}
    for i, aug in enumerate(augmenters):
        groups.setdefault(aug, []).append(i)
    for aug, indices in groups.items():
        stacked = images if len(indices) == 1 else images.repeat(len(indices), 1, 1, 1)
        out = aug(stacked, generator=generator)
        for j, i in enumerate(indices):
            views[i] = out[j * batch : (j + 1) * batch]
    return views  # type: ignore[return-value]
