"""Feature providers: where a run's backbone outputs come from — the feature cache, cached
block inputs, or the backbone itself at every step.

* :mod:`~contrahash.training.providers.base` — the interface (:class:`FeatureProvider`,
  :class:`Epoch`) and the extraction the processes of a distributed run share;
* :class:`CachedViews` (frozen backbone): V augmented views of every training image are
  computed once into the memory-mapped :class:`~contrahash.models.features.FeatureCache` and
  each step draws distinct cached views per image; with several augmentation recipes (HARR)
  view position p only draws columns of recipe ``p % recipes``;
* :class:`BlockCache` (the last N blocks fine-tuned, ``cache.mode: blocks``): the frozen
  prefix runs once, its outputs are cached, and training runs the last N blocks on them;
* :class:`EndToEnd` (fine-tuned backbone, or the cache switched off): each step augments
  uint8 images and runs the backbone;
* :mod:`~contrahash.training.providers.sampling` — batch sampling from cached views.

:func:`make_provider` picks one from the config.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from contrahash.config import TrainConfig
from contrahash.models.features import FeatureCache
from contrahash.models.model import HashingModel
from contrahash.progress import Progress, ProgressCallback
from contrahash.training.providers.base import Batch, Epoch, FeatureProvider, Forward
from contrahash.training.providers.block_cache import BlockCache
from contrahash.training.providers.cached_views import CachedViews
from contrahash.training.providers.end_to_end import EndToEnd, make_image_forward
from contrahash.training.providers.sampling import feature_view_batches

__all__ = [
    "Batch",
    "BlockCache",
    "CachedViews",
    "EndToEnd",
    "Epoch",
    "FeatureProvider",
    "Forward",
    "feature_view_batches",
    "make_image_forward",
    "make_provider",
]


def make_provider(model: HashingModel, dataset: Any, split: Any, cfg: TrainConfig,
                  cache: FeatureCache, progress: Progress | ProgressCallback | None = None) -> FeatureProvider:
    """The provider the config asks for: cached views for a frozen backbone (token grids only
    while their cache fits ``cache.max_token_gib``), cached block inputs for a fine-tuned one
    with ``cache.mode: blocks``, end to end otherwise."""
    mode = cfg.cache.mode
    if mode not in ("auto", "on", "off", "blocks"):
        raise ValueError(f"cache.mode must be auto, on, off or blocks, got '{mode}'")
    if mode == "on" and not model.frozen:
        raise ValueError("cache.mode=on needs a frozen backbone (backbone.finetune_blocks=0); "
                         "cache.mode=blocks caches the inputs of the fine-tuned blocks")
    if mode == "blocks" and not model.frozen:
        if cfg.backbone.finetune_blocks < 1:
            raise ValueError("cache.mode=blocks needs backbone.finetune_blocks=N >= 1 (the last "
                             "N blocks train from their cached inputs)")
        return BlockCache(model, dataset, split, cfg, cache, progress)
    cached = model.frozen and mode != "off"
    provider: FeatureProvider = CachedViews(model, dataset, split, cfg, cache, progress)
    if cached and model.tokens and mode == "auto":
        rows = len(split.train) * cfg.cache.views + len(provider.used_indices())
        gib = rows * int(np.prod(provider.probe_shape())) * 2 / 2**30
        cached = gib <= cfg.cache.max_token_gib
    if not cached:
        provider = EndToEnd(model, dataset, split, cfg, cache, progress)
    return provider
