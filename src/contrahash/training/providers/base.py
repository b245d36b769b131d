"""The feature-provider interface, and the extraction work it shares between the processes
of a distributed run.

A provider serves three consumers with one interface:

* training: :meth:`FeatureProvider.epoch` yields one epoch of batches of per-view method
  inputs (plus the rows' positions in the training split) and says how to turn a batch into
  backbone outputs (``forward``; identity for cached features) and which modules train;
* neighbour mining and ``fit``: :meth:`FeatureProvider.clean_features` (frozen backbone,
  un-augmented);
* evaluation: :meth:`FeatureProvider.test_features` (the current backbone, test transform).

The base class holds what every provider needs: image store and cache keys, clean and test
features, the cached augmented views, and the chunked extraction that the processes of a
distributed run share (:func:`~contrahash.training.distributed.share_pieces`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from contrahash.config import TrainConfig
from contrahash.methods.base import NeighbourSpec
from contrahash.models.features import FeatureCache
from contrahash.models.model import HashingModel
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.training.distributed import context
from contrahash.training.neighbours import MinedNeighbours
from contrahash.training.providers.sampling import Batch, recipe_cycle, with_overrides

__all__ = ["Batch", "Epoch", "FeatureProvider", "Forward", "hash_indices", "tensor_view"]

Forward = Callable[[list[torch.Tensor]], list[torch.Tensor]]


@dataclass
class Epoch:
    """One epoch's batches, the forward from batch to method inputs (None: the batch already
    holds them) and the backbone modules that train."""

    batches: Iterator[Batch]
    forward: Forward | None = None
    trainables: tuple[torch.nn.Module, ...] = ()


class FeatureProvider:
    """Backbone outputs of one run's images (see the module docstring)."""

    def __init__(self, model: HashingModel, dataset: Any, split: Any, cfg: TrainConfig,
                 cache: FeatureCache, progress: Progress | ProgressCallback | None = None) -> None:
        self.model = model
        self.dataset = dataset
        self.split = split
        self.cfg = cfg
        self.cache = cache
        self.progress = as_progress(progress)
        self._clean: np.ndarray | None = None
        self._clean_row: np.ndarray | None = None
        self._images_on_device: torch.Tensor | None = None
        self.ctx = context()
        #: how many augmentation recipes the cached views alternate (HARR: 3)
        self.recipes = 1

    # -- images and keys ---------------------------------------------------------------
    def images(self) -> Any:
        """The uint8 image store, moved to the GPU once when it fits there."""
        if self.model.device.type != "cuda":
            return self.dataset.images
        if self._images_on_device is None:
            tensor = getattr(self.dataset.images, "tensor", None)
            if tensor is None or tensor.numel() > 8e9:
                return self.dataset.images
            self._images_on_device = tensor.to(self.model.device)
        return self._images_on_device

    def generator_device(self) -> str:
        """Where augmentation draws its random numbers (the GPU's own generator on CUDA)."""
        return "cuda" if self.model.device.type == "cuda" else "cpu"

    def used_indices(self) -> np.ndarray:
        """Dataset indices of every image the split uses (query ∪ database ∪ train), sorted."""
        s = self.split
        return np.unique(np.concatenate([s.query, s.database, s.train]))

    def feature_key(self, kind: str, **extra: Any) -> dict[str, Any]:
        """The cache key of a feature array: everything its values depend on."""
        bb = self.cfg.backbone
        weights = bb.weights or (f"random-init-seed-{self.cfg.seed}" if bb.random_init
                                 else "pretrained")
        return {"backbone": bb.name, "weights": weights, "size": self.model.image_size,
                "dataset": self.dataset.fingerprint, "kind": kind, "tokens": self.model.tokens,
                "precision": self.model.precision, **extra}

    def extract(self, indices: np.ndarray, transform: Any = None, *, out: np.ndarray | None = None,
                start: int = 0, generator: torch.Generator | None = None,
                phase: str = "feature extraction") -> np.ndarray:
        """Backbone outputs of dataset images ``indices`` (a progress phase of its own)."""
        with self.progress.phase(phase, len(indices) - start) as ph:
            return self.model.extract(self.images(), indices, transform, out=out, start=start,
                                      generator=generator, on_batch=ph.advance)

    def probe_shape(self) -> tuple[int, ...]:
        """Per-image shape of the backbone output (one training image's features)."""
        probe = self.model.extract(self.images(), self.split.train[:1])
        return tuple(probe.shape[1:])

    # -- clean and test features -------------------------------------------------------
    def clean_features(self, indices: np.ndarray) -> np.ndarray:
        """Un-augmented features of dataset images ``indices`` (any of the split's images).

        Computed once for every image the split uses, in dataset order — through the
        feature cache when the backbone is frozen.
        """
        if self._clean is None:
            used = self.used_indices()
            self._clean_row = np.full(len(self.dataset.images), -1, dtype=np.int64)
            self._clean_row[used] = np.arange(len(used))
            if self.model.frozen:
                key = self.feature_key("clean", images=hash_indices(used))
                shape = (len(used), *self.probe_shape())
                self._clean = self.cached_rows(key, shape, used, "features of the evaluated images",
                                               lambda rows, on_batch: self.model.extract(
                                                   self.images(), rows, on_batch=on_batch))
            else:
                self._clean = self.together(used, "features of the evaluated images")
        rows = self._clean_row[np.asarray(indices)]
        if (rows < 0).any():
            raise IndexError("clean_features: index outside the split's images")
        return np.asarray(self._clean[rows])

    def test_features(self, indices: np.ndarray) -> np.ndarray:
        """Features of ``indices`` with the current (possibly fine-tuned) backbone."""
        if self.model.frozen:
            return self.clean_features(indices)
        return self.together(np.asarray(indices), "encoding")

    def evaluation_views(self, indices: np.ndarray) -> np.ndarray:
        """Backbone outputs (current backbone) of one fresh augmented view of each image: the
        fixed ``contrastive`` recipe with its own seed, never a cached training view (the
        label-free evaluation, :func:`contrahash.evaluation.evaluate.self_retrieval`)."""
        from contrahash.data.augment import view_augmenters

        augmenter = view_augmenters("contrastive", self.model.image_size, 1)[0]
        gen = torch.Generator(device=self.generator_device()).manual_seed(
            self.cfg.seed * 1000 + 999_983)
        return self.extract(np.asarray(indices), augmenter, generator=gen,
                            phase="evaluation views")

    def augmented_views(self, kind: str, item_shape: tuple[int, ...], phase: str,
                        compute: Callable[..., np.ndarray], **key: Any) -> np.ndarray:
        """A cached ``[n_train, V, *item_shape]`` array: view j of every training image made
        with recipe ``j mod`` the method's recipes, by its own generator seeded from
        ``(seed, j)``; ``compute(augmenter, generator, on_batch)`` gives one view's rows."""
        from contrahash.data.augment import view_augmenters

        method, cfg = self.model.method, self.cfg
        v = cfg.cache.views
        if v < method.n_views:
            raise ValueError(f"cache.views={v} but method '{method.name}' needs "
                             f"{method.n_views} views per image")
        train = self.split.train
        augmenters = view_augmenters(method.augmentation, self.model.image_size, method.n_views)
        recipes = [a.recipe for a in augmenters]
        self.recipes = len(set(recipes))
        # the key names the recipes' cycle, not one per view position: FDBH's three views and
        # CIBHash's two of one recipe share one cache (view j uses recipe j mod the cycle)
        parts = self.feature_key(kind, **key, views=v, recipes=recipe_cycle(recipes),
                                 augment=cfg.augment, train=hash_indices(train),
                                 view_seed=cfg.seed)
        with self.progress.phase(phase, len(train) * v) as ph:

            def view(j: int) -> np.ndarray:
                aug = with_overrides(augmenters[j % len(augmenters)], cfg.augment)
                gen = torch.Generator(device=self.generator_device()).manual_seed(
                    cfg.seed * 1000 + j)
                return compute(aug, gen, ph.advance)

            return self.cache.get_or_compute_parts(
                parts, (len(train), v, *item_shape), [(slice(None), j) for j in range(v)], view,
                lambda j: (j + 1) * len(train), ctx=self.ctx)

    # -- work shared by the processes of a distributed run ---------------------------------
    def chunks(self, n: int) -> list[tuple[slice]]:
        """Row chunks of ``n`` rows, whole extraction batches each (results do not depend on
        how rows are chunked)."""
        step = self.model.eval_batch_size * 64
        return [(slice(lo, min(n, lo + step)),) for lo in range(0, n, step)]

    def cached_rows(self, key: dict[str, Any], shape: tuple[int, ...], rows: np.ndarray,
                    phase: str, compute: Callable[..., np.ndarray]) -> np.ndarray:
        """A cached array whose row i is ``compute`` of ``rows[i]``, computed in chunks (by
        every process of a distributed run together)."""
        pieces = self.chunks(len(rows))
        with self.progress.phase(phase, len(rows)) as ph:
            return self.cache.get_or_compute_parts(
                key, shape, pieces, lambda p: compute(rows[pieces[p][0]], ph.advance),
                lambda p: pieces[p][0].stop, ctx=self.ctx)

    def together(self, indices: np.ndarray, phase: str) -> np.ndarray:
        """Test-transform features of ``indices``, the processes of a distributed run each
        extracting a share of the rows."""
        if self.ctx.world_size == 1:
            return self.extract(indices, phase=phase)
        from contrahash.training.distributed import share_pieces

        shape = (len(indices), *self.probe_shape())
        out = np.empty(shape, dtype=np.float16)
        pieces = self.chunks(len(indices))
        with self.progress.phase(phase, len(indices)) as ph:
            share_pieces(self.ctx, pieces, shape, np.float16,
                         lambda p: self.model.extract(self.images(), indices[pieces[p][0]],
                                                      on_batch=ph.advance),
                         lambda p, values: out.__setitem__(pieces[p], values))
        return out

    # -- training ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Compute what training reads (e.g. the cached views) before the first epoch."""

    def use_neighbours(self, mined: MinedNeighbours | None, spec: NeighbourSpec | None) -> None:
        """Draw the last view from ``mined`` neighbours as ``spec`` says (None: never)."""
        raise NotImplementedError

    def epoch(self, batch_size: int, generator: torch.Generator) -> Epoch:
        """One epoch of shuffled full batches drawn from ``generator``."""
        raise NotImplementedError


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """A tensor over a (read-only, memory-mapped) array, without a copy: pages are read when
    rows are gathered."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.asarray(array))


def hash_indices(indices: np.ndarray) -> str:
    """Short stable hash of an index list (part of cache keys)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
