"""Training from V cached augmented views per training image (frozen backbone): the views
are computed once into the memory-mapped feature cache and every step draws distinct ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from contrahash.methods.base import NeighbourSpec
from contrahash.training.neighbours import MinedNeighbours
from contrahash.training.providers.base import Epoch, FeatureProvider
from contrahash.training.providers.sampling import feature_view_batches

__all__ = ["CachedViews"]


class CachedViews(FeatureProvider):
    """Training from V cached augmented views per image (frozen backbone)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._views: torch.Tensor | None = None
        self._neighbour_rows: np.ndarray | None = None
        self._pool_features: torch.Tensor | None = None
        self._prob = 0.0

    def cached_views(self) -> np.ndarray:
        """[n_train, V, ...] features of V augmented views per training image (computed once)."""
        train = self.split.train
        return self.augmented_views(
            "views", self.probe_shape(), "augmented views of the training images",
            lambda aug, gen, on_batch: self.model.extract(self.images(), train, aug,
                                                          generator=gen, on_batch=on_batch))

    def prepare(self) -> None:
        if self._views is None:  # in RAM: sampled at every step
            self._views = torch.from_numpy(np.array(self.cached_views()))

    def use_neighbours(self, mined: MinedNeighbours | None, spec: NeighbourSpec | None) -> None:
        if mined is None or spec is None:
            self._neighbour_rows, self._prob = None, 0.0
            return
        self._prob = spec.prob
        if spec.pool == "train":  # neighbours are training rows: any of their cached views
            self._neighbour_rows, self._pool_features = mined.rows_in(self.split.train), None
            return
        self._neighbour_rows = mined.rows_in(mined.pool)
        if self._pool_features is None:  # frozen features: the same at every re-mining
            self._pool_features = torch.as_tensor(np.asarray(self.clean_features(mined.pool)))

    def epoch(self, batch_size: int, generator: torch.Generator) -> Epoch:
        self.prepare()
        device = self.model.device
        batches = feature_view_batches(self._views, batch_size, self.model.method.n_views,
                                       generator, self._neighbour_rows, self._prob,
                                       self._pool_features, recipes=self.recipes)
        return Epoch(([v.to(device) for v in views], positions) for views, positions in batches)
