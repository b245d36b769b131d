"""Feature providers: where a run's backbone outputs come from — the feature cache, or the
backbone itself at every step.

A provider serves three consumers with one interface:

* training: :meth:`FeatureProvider.epoch` yields one epoch of batches of per-view method
  inputs (plus the rows' positions in the training split) and says how to turn a batch into
  backbone outputs (``forward``; identity for cached features) and which modules train;
* neighbour mining and ``fit``: :meth:`FeatureProvider.clean_features` (frozen backbone,
  un-augmented);
* evaluation: :meth:`FeatureProvider.test_features` (the current backbone, test transform).

:class:`CachedViews` (frozen backbone): V augmented views of every training image are computed
once into the memory-mapped :class:`~contrahash.models.features.FeatureCache` and each step draws
distinct cached views per image; with several augmentation recipes (HARR) view position p
only draws columns of recipe ``p % recipes``. :class:`EndToEnd` (fine-tuned backbone, or the
cache switched off): each step augments uint8 images and runs the backbone.
:func:`make_provider` picks one from the config.
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
from contrahash.models.features import FeatureCache, autocast_for, backbone_inputs
from contrahash.models.model import HashingModel
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.training.distributed import context
from contrahash.training.neighbours import MinedNeighbours, draw_neighbours

__all__ = [
    "Batch",
    "BlockCache",
    "CachedViews",
    "EndToEnd",
    "Epoch",
    "FeatureProvider",
    "feature_view_batches",
    "make_image_forward",
    "make_provider",
]

#: a batch: per-view method inputs, and the batch rows' positions in the training split
Batch = tuple[list[torch.Tensor], torch.Tensor]
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


class BlockCache(FeatureProvider):
    """Fine-tuning the last N blocks from cached block inputs (``cache.mode: blocks``).

    The frozen part of the backbone runs once: the activation entering the first trainable
    block (:meth:`~contrahash.models.backbones.Backbone.block_input`) is cached, float16 and
    memory-mapped, for V augmented views of every training image and for every evaluated
    image (un-augmented). Training then runs only the last N blocks and the head
    (:meth:`~contrahash.models.backbones.Backbone.forward_from`) on V fixed views per image — the
    feature cache's approximation, one level down; features for evaluation, ``fit`` and
    neighbour mining run the current last N blocks on the cached clean inputs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.blocks = int(self.cfg.backbone.finetune_blocks)
        self._views: torch.Tensor | None = None
        self._clean_blocks: torch.Tensor | None = None
        self._neighbour_rows: np.ndarray | None = None
        self._neighbour_pool: torch.Tensor | None = None
        self._prob = 0.0

    def _prefix(self, indices: np.ndarray, transform: Any, generator: torch.Generator | None,
                on_batch: Callable[[int], None]) -> np.ndarray:
        """Block inputs (float16) of ``images[indices]`` under ``transform``."""
        from contrahash.models.features import autocast_for

        model, backbone = self.model, self.model.backbone
        images = self.images()
        engine = model.compiled(("blocks", self.blocks))  # the frozen prefix, compiled (CPU)
        out = np.empty((len(indices), *backbone.block_input_shape(self.blocks)), np.float16)
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad():
                for lo in range(0, len(indices), model.eval_batch_size):
                    hi = min(lo + model.eval_batch_size, len(indices))
                    x = backbone_inputs(backbone, images[indices[lo:hi]], transform, model.device,
                                        generator=generator, channels_last=engine is None)
                    if engine is not None:
                        out[lo:hi] = engine(x.float().numpy()).astype(np.float16)
                        on_batch(hi - lo)
                        continue
                    with autocast_for(model.device, model.amp):
                        a = backbone.block_input(x, self.blocks)
                    out[lo:hi] = a.float().cpu().numpy().astype(np.float16)
                    on_batch(hi - lo)
        finally:
            backbone.train(was_training)
        return out

    def clean_blocks(self) -> torch.Tensor:
        """[n_used, ...] block inputs of every image the split uses (test transform)."""
        if self._clean_blocks is None:
            used = self.used_indices()
            self._clean_row = np.full(len(self.dataset.images), -1, dtype=np.int64)
            self._clean_row[used] = np.arange(len(used))
            key = self.feature_key("block-clean", blocks=self.blocks, images=hash_indices(used),
                                   **self._prefix_engine())
            shape = (len(used), *self.model.backbone.block_input_shape(self.blocks))
            transform = self.model.test_transform()
            array = self.cached_rows(key, shape, used, "block inputs of the evaluated images",
                                     lambda rows, on_batch: self._prefix(rows, transform, None,
                                                                         on_batch))
            self._clean_blocks = tensor_view(array)
        return self._clean_blocks

    def block_views(self) -> np.ndarray:
        """[n_train, V, ...] block inputs of V augmented views per training image."""
        train = self.split.train
        return self.augmented_views(
            "block-views", self.model.backbone.block_input_shape(self.blocks),
            "block inputs of the training views",
            lambda aug, gen, on_batch: self._prefix(train, aug, gen, on_batch),
            blocks=self.blocks, **self._prefix_engine())

    def _prefix_engine(self) -> dict[str, str]:
        """The block-input cache key's engine part: empty for torch (existing caches keep their
        keys), the engine and its precision when the prefix runs compiled."""
        engine = self.model.compiled(("blocks", self.blocks))
        return {} if engine is None else {"engine": f"{engine.engine}-{engine.precision}"}

    def _suffix(self, blocks: torch.Tensor, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
        """Features of cached block inputs ``blocks[rows]`` through the current last N blocks
        (eval mode), gathered chunk by chunk."""
        from contrahash.models.features import autocast_for

        model, backbone = self.model, self.model.backbone
        was_training = backbone.training
        backbone.eval()
        out = []
        try:
            with torch.no_grad():
                for lo in range(0, len(rows), chunk):
                    a = blocks[torch.from_numpy(rows[lo:lo + chunk])].to(model.device).float()
                    if model.channels_last and a.dim() == 4:
                        a = a.contiguous(memory_format=torch.channels_last)
                    with autocast_for(model.device, model.amp):
                        f = backbone.forward_from(a, self.blocks, tokens=model.tokens)
                    out.append(f.float().cpu().numpy().astype(np.float16))
        finally:
            backbone.train(was_training)
        return np.concatenate(out)

    def clean_features(self, indices: np.ndarray) -> np.ndarray:
        """Features of the current model (the pretrained one before training) on clean
        inputs: the cached block inputs through the current last N blocks."""
        blocks = self.clean_blocks()
        rows = self._clean_row[np.asarray(indices)]
        if (rows < 0).any():
            raise IndexError("clean_features: index outside the split's images")
        return self._suffix(blocks, rows)

    def test_features(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        if self.ctx.world_size == 1:
            with self.progress.phase("encoding", len(indices)) as phase:
                features = self.clean_features(indices)
                phase.advance(len(indices))
            return features
        from contrahash.training.distributed import share_pieces

        first = self.clean_features(indices[:1])  # the feature shape
        out = np.empty((len(indices), *first.shape[1:]), dtype=np.float16)
        pieces = self.chunks(len(indices))
        with self.progress.phase("encoding", len(indices)) as phase:
            share_pieces(self.ctx, pieces, out.shape, np.float16,
                         lambda p: self.clean_features(indices[pieces[p][0]]),
                         lambda p, values: (out.__setitem__(pieces[p], values),
                                            phase.advance(len(values))))
        return out

    def prepare(self) -> None:
        if self._views is None:
            self._views = tensor_view(self.block_views())
            self.clean_blocks()

    def use_neighbours(self, mined: MinedNeighbours | None, spec: NeighbourSpec | None) -> None:
        if mined is None or spec is None:
            self._neighbour_rows, self._prob = None, 0.0
            return
        self._prob = spec.prob
        if spec.pool == "train":
            self._neighbour_rows, self._neighbour_pool = mined.rows_in(self.split.train), None
            return
        self.clean_blocks()  # the pool's clean block inputs: rows of the clean cache
        self._neighbour_rows = self._clean_row[mined.neighbours]
        self._neighbour_pool = self.clean_blocks()

    def epoch(self, batch_size: int, generator: torch.Generator) -> Epoch:
        self.prepare()
        model = self.model
        batches = feature_view_batches(self._views, batch_size, model.method.n_views, generator,
                                       self._neighbour_rows, self._prob, self._neighbour_pool,
                                       recipes=self.recipes)
        backbone, blocks, device = model.backbone, self.blocks, model.device

        def forward(views: list[torch.Tensor]) -> list[torch.Tensor]:
            from contrahash.models.features import autocast_for

            a = torch.cat(views).to(device)
            if model.channels_last and a.dim() == 4:
                a = a.contiguous(memory_format=torch.channels_last)
            with autocast_for(device, model.amp):
                f = backbone.forward_from(a, blocks, tokens=model.tokens)
            return list(f.float().chunk(len(views)))

        return Epoch(batches, forward, (backbone,))


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


# ----------------------------------------------------------------------------- primitives
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
