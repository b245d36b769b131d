"""Training through the backbone at every step (a fine-tuned backbone, or the cache switched
off): uint8 image batches are augmented and run through the backbone in one call."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from contrahash.methods.base import NeighbourSpec
from contrahash.models.features import autocast_for, backbone_inputs
from contrahash.training.neighbours import MinedNeighbours, draw_neighbours
from contrahash.training.providers.base import Batch, Epoch, FeatureProvider, Forward
from contrahash.training.providers.sampling import with_overrides

__all__ = ["EndToEnd", "make_image_forward"]


class EndToEnd(FeatureProvider):
    """Training through the backbone at every step (fine-tuning, or the cache switched off)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._neighbours: np.ndarray | None = None
        self._prob = 0.0

    def use_neighbours(self, mined: MinedNeighbours | None, spec: NeighbourSpec | None) -> None:
        self._neighbours = None if mined is None or spec is None else mined.neighbours
        self._prob = spec.prob if self._neighbours is not None and spec is not None else 0.0

    def epoch(self, batch_size: int, generator: torch.Generator) -> Epoch:
        # the augmentation generator's seed is drawn before any batch is drawn
        forward = self.image_forward(generator)
        return Epoch(self.image_batches(batch_size, generator), forward,
                     (self.model.backbone,))

    def image_batches(self, batch: int, generator: torch.Generator) -> Iterator[Batch]:
        """Per-view uint8 image batches of the training split (shuffled, full batches)."""
        train = torch.as_tensor(self.split.train)
        store = self.images()
        on_device = isinstance(store, torch.Tensor) and store.device.type == "cuda"
        n_views = self.model.method.n_views
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train) - batch + 1, batch):
            pos = order[start : start + batch]
            rows = [train[pos] for _ in range(n_views)]
            if self._neighbours is not None and self._prob > 0:
                use, chosen = draw_neighbours(torch.as_tensor(self._neighbours)[pos], self._prob,
                                              generator)
                rows[-1] = torch.where(use, chosen, rows[-1])
            if on_device:
                yield [store[r.to(self.model.device)] for r in rows], pos
            else:
                yield [store[r.numpy()] for r in rows], pos

    def image_forward(self, generator: torch.Generator) -> Forward:
        """Augment each view, run the backbone once on all views, split the outputs."""
        from contrahash.data.augment import view_augmenters

        method = self.model.method
        augmenters = [with_overrides(a, self.cfg.augment) for a in
                      view_augmenters(method.augmentation, self.model.image_size, method.n_views)]
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        gen = torch.Generator(device=self.generator_device()).manual_seed(seed)
        return make_image_forward(self.model.backbone, augmenters, self.model.device,
                                  amp=self.model.amp, channels_last=self.model.channels_last,
                                  tokens=self.model.tokens, generator=gen)


def make_image_forward(
    backbone: Any,
    augmenters: list[Callable[..., torch.Tensor]],
    device: torch.device,
    *,
    amp: bool = True,
    channels_last: bool = True,
    tokens: bool = False,
    generator: torch.Generator | None = None,
) -> Forward:
    """Batch forward for the end-to-end path: uint8 view batches → backbone outputs per view.

    Each view gets its own augmenter; all views go through the backbone in one call (bf16
    autocast where native, channels-last); a frozen backbone runs without autograd.
    """
    frozen = not any(p.requires_grad for p in backbone.parameters())

    def forward(views: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [backbone_inputs(backbone, v, aug, device, channels_last, generator)
              for v, aug in zip(views, augmenters, strict=True)]
        x = torch.cat(xs)
        with autocast_for(device, amp), torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            f = backbone.forward_tokens(x) if tokens else backbone(x)
        return list(f.float().chunk(len(views)))

    return forward
