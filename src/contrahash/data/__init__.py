"""Image sources: every format becomes one :class:`ImageDataset` (uint8 images + multi-hot labels).

>>> from contrahash.data import load_source
>>> ds = load_source("digits")
>>> ds.images[:4].shape, ds.labels.shape, ds.single_label()[:4].tolist()
(torch.Size([4, 8, 8, 3]), (1797, 10), [0, 1, 2, 3])

Protocols (query/database/train splits) live in :mod:`contrahash.data.protocols`.
"""

from contrahash.data.dataset import ImageDataset, one_hot, single_label
from contrahash.data.errors import DataError
from contrahash.data.images import ImageStore, LazyImages, TensorImages, decode_image, to_rgb
from contrahash.data.sources import (
    DEFAULT_STORE_SIZE,
    LAZY_THRESHOLD,
    default_cache_dir,
    load_cifar_pickles,
    load_digits,
    load_image_folder,
    load_list_file,
    load_packed_npz,
    load_source,
    parse_list_file,
)

__all__ = [
    "DEFAULT_STORE_SIZE",
    "LAZY_THRESHOLD",
    "DataError",
    "ImageDataset",
    "ImageStore",
    "LazyImages",
    "TensorImages",
    "decode_image",
    "default_cache_dir",
    "load_cifar_pickles",
    "load_digits",
    "load_image_folder",
    "load_list_file",
    "load_packed_npz",
    "load_source",
    "one_hot",
    "parse_list_file",
    "single_label",
    "to_rgb",
]
