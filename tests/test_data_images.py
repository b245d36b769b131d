"""Decoding to RGB uint8, index handling and the two image stores."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from contrahash.data.images import (
    PLACEHOLDER_VALUE,
    LazyImages,
    TensorImages,
    decode_image,
    normalize_index,
    probe_image,
    resize_tensor_images,
    to_rgb,
)


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_gray_rgba_palette_become_rgb():
    gray = Image.fromarray(np.full((4, 5), 77, dtype=np.uint8), "L")
    out = np.asarray(to_rgb(gray))
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and (out == 77).all()

    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the white background shows
    rgba[0, 0, 3] = 255  # one opaque red pixel
    rgba[0, 1, 3] = 128  # one half-transparent red pixel over white
    out = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (3, 3, 3) and out[0, 0].tolist() == [200, 0, 0]
    assert (out[1:] == 255).all()
    # alpha compositing by hand: c = a * c_fg + (1 - a) * 255
    expected = [round(128 / 255 * v + (1 - 128 / 255) * 255) for v in (200, 0, 0)]
    assert np.abs(out[0, 1].astype(int) - expected).max() <= 1

    pal = Image.new("P", (2, 2))
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    out = np.asarray(to_rgb(pal))
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [10, 20, 30]


def test_sixteen_bit_scales_to_eight_bit():
    values = np.array([[0, 257, 257 * 100], [65535, 32896, 128]], dtype=np.uint16)
    img = Image.open(io.BytesIO(_png_bytes(Image.fromarray(values))))
    assert img.mode in ("I;16", "I")
    out = decode_image(_png_bytes(Image.fromarray(values)))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 3)
    assert out[..., 0].tolist() == [[0, 1, 100], [255, 128, 0]]
    assert (out[..., 0] == out[..., 2]).all()
    # 32-bit "I" (how older Pillow opens 16-bit PNGs) uses the same 0..65535 range
    as_i = Image.fromarray(values.astype(np.int32), "I")
    assert np.asarray(to_rgb(as_i))[..., 1].tolist() == [[0, 1, 100], [255, 128, 0]]


def test_float_and_bilevel_and_cmyk():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 128, 255]
    bilevel = Image.new("1", (2, 2), 1)
    assert (np.asarray(to_rgb(bilevel)) == 255).all()
    cmyk = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    assert (np.asarray(to_rgb(cmyk)) == 255).all()


def test_decode_resizes_and_uses_jpeg_draft():
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))
    out = decode_image(_png_bytes(big, "JPEG"), size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert decode_image(_png_bytes(big), size=None).shape == (120, 90, 3)


def test_decode_rejects_bad_bytes(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - Pillow's error type varies by format
        decode_image(b"not an image at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        probe_image(empty)


def test_normalize_index_forms():
    n = 5
    assert normalize_index(3, n)[0].tolist() == [3] and normalize_index(3, n)[1]
    assert normalize_index(-1, n)[0].tolist() == [4]
    assert normalize_index(np.int64(2), n)[1]
    assert normalize_index(slice(1, 4), n)[0].tolist() == [1, 2, 3]
    assert normalize_index([0, -2], n)[0].tolist() == [0, 3]
    assert normalize_index(np.array([4, 0]), n)[0].tolist() == [4, 0]
    assert normalize_index(torch.tensor([1, 2]), n)[0].tolist() == [1, 2]
    pos, single = normalize_index(torch.tensor(2), n)
    assert pos.tolist() == [2] and single
    assert normalize_index(np.array([True, False, True, False, False]), n)[0].tolist() == [0, 2]
    assert normalize_index([], n)[0].tolist() == []
    with pytest.raises(IndexError):
        normalize_index(5, n)
    with pytest.raises(IndexError):
        normalize_index([0, 7], n)


def test_tensor_images_indexing():
    data = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 2, 3, 3).contiguous()
    store = TensorImages(data)
    assert len(store) == 4 and store.image_size == (2, 3) and store.tensor is data
    assert store[2].shape == (2, 3, 3) and int(store[2][0, 0, 0]) == 2
    assert store[1:3].shape == (2, 2, 3, 3)
    for idx in ([3, 0], np.array([3, 0]), torch.tensor([3, 0])):
        assert store[idx][:, 0, 0, 0].tolist() == [3, 0]
    with pytest.raises(ValueError):
        TensorImages(torch.zeros(2, 4, 4, dtype=torch.uint8))


def test_resize_tensor_images():
    x = torch.full((3, 8, 8, 3), 90, dtype=torch.uint8)
    y = resize_tensor_images(x, 4)
    assert y.shape == (3, 4, 4, 3) and y.dtype == torch.uint8 and (y == 90).all()


def test_lazy_images_decode_and_placeholder(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    good = (tmp_path / "0.png").read_bytes()
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good[: len(good) // 2])  # header fine, body cut
    paths.append(truncated)
    store = LazyImages(paths, size=12, workers=2)
    assert len(store) == 7 and store.image_size == (12, 12)
    batch = store[[0, 1, 2, 3, 4, 5]]
    assert batch.shape == (6, 12, 12, 3) and batch.dtype == torch.uint8
    assert torch.equal(batch[1], torch.from_numpy(decode_image(str(paths[1]), 12)))
    with pytest.warns(RuntimeWarning, match="placeholder"):
        single = store[6]
    assert single.shape == (12, 12, 3) and (single == PLACEHOLDER_VALUE).all()
    assert 6 in store.failures
    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers pickle the store
    assert torch.equal(clone[[0]], store[[0]])
    store.close()
