"""Batch sampling from cached views: shuffled full batches of distinct views per image,
recipe-aware view picks, neighbour views drawn into the last position; and the view
recipes' helpers (the config's augmentation overrides, the recipe cycle a cache is keyed by)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from contrahash.training.neighbours import draw_neighbours

__all__ = ["Batch", "feature_view_batches", "recipe_cycle", "with_overrides"]

#: a batch: per-view method inputs, and the batch rows' positions in the training split
Batch = tuple[list[torch.Tensor], torch.Tensor]


def feature_view_batches(
    views: torch.Tensor,
    batch_size: int,
    n_views: int,
    generator: torch.Generator,
    neighbours: np.ndarray | None = None,
    neighbour_prob: float = 0.0,
    neighbour_features: torch.Tensor | None = None,
    recipes: int = 1,
) -> Iterator[Batch]:
    """Batches of ``n_views`` distinct cached views per image (one epoch, shuffled, full batches).

    With ``recipes`` > 1 the cache's column j was made with recipe ``j % recipes`` and view
    position p of a batch only draws from columns of recipe ``p % recipes`` (HARR's strong /
    RandAugment / weak views stay in their roles).

    ``views`` is [N, V, ...]. With ``neighbours`` ([N, k]) the last view is, with probability
    ``neighbour_prob``, taken from a random neighbour: a random cached view of it when
    ``neighbours`` index rows of ``views``, or its (un-augmented) feature when
    ``neighbour_features`` ([P, ...], e.g. an unlabelled pool) is given and indexed instead.
    """
    n, v = views.shape[0], views.shape[1]
    if 1 < v < n_views:
        raise ValueError(f"feature cache holds {v} views per image, the method needs {n_views}")
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        picks = torch.argsort(torch.rand(batch_size, v, generator=generator), dim=1)[:, :n_views]
        if v == 1:
            picks = torch.zeros(batch_size, n_views, dtype=torch.long)
        elif recipes > 1:
            picks = _recipe_picks(batch_size, v, n_views, recipes, generator)
        rows = idx.unsqueeze(1).expand(-1, n_views).clone()
        pool_rows = None
        if neighbours is not None and neighbour_prob > 0:
            use, chosen = draw_neighbours(torch.as_tensor(neighbours)[idx], neighbour_prob,
                                          generator)
            if neighbour_features is None:
                rows[:, -1] = torch.where(use, chosen, rows[:, -1])
            else:
                pool_rows = (use, chosen)
        out = [views[rows[:, j], picks[:, j]].float() for j in range(n_views)]
        if pool_rows is not None:
            use, chosen = pool_rows
            mask = use.view(-1, *([1] * (out[-1].ndim - 1)))
            out[-1] = torch.where(mask, neighbour_features[chosen].float(), out[-1])
        yield out, idx


def _recipe_picks(batch: int, v: int, n_views: int, recipes: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Per view position p, a random cache column among those made with recipe p % recipes."""
    cols = []
    for p in range(n_views):
        slots = torch.arange(p % recipes, v, recipes)
        if len(slots) == 0:
            raise ValueError(f"feature cache holds {v} views; recipe {p % recipes} has none")
        cols.append(slots[torch.randint(0, len(slots), (batch,), generator=generator)])
    return torch.stack(cols, dim=1)


def with_overrides(augmenter: Any, overrides: dict[str, Any]) -> Any:
    """The augmenter with the config's ``augment`` overrides applied."""
    if not overrides:
        return augmenter
    from contrahash.data.augment import BatchAugment

    return BatchAugment(augmenter.recipe, augmenter.size, **overrides)


def recipe_cycle(recipes: list[str]) -> list[str]:
    """The shortest list whose repetition gives ``recipes``: the views a cache holds depend
    only on it (``["contrastive"] * 3`` → ``["contrastive"]``).

    >>> recipe_cycle(["a", "b", "a", "b"]), recipe_cycle(["c", "c", "c"])
    (['a', 'b'], ['c'])
    """
    for period in range(1, len(recipes) + 1):
        if all(recipes[i] == recipes[i % period] for i in range(len(recipes))):
            return recipes[:period]
    return recipes
