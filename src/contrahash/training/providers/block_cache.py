"""Fine-tuning the last N blocks of the backbone from cached block inputs
(``cache.mode: blocks``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from contrahash.methods.base import NeighbourSpec
from contrahash.models.features import backbone_inputs
from contrahash.training.neighbours import MinedNeighbours
from contrahash.training.providers.base import Epoch, FeatureProvider, hash_indices, tensor_view
from contrahash.training.providers.sampling import feature_view_batches

__all__ = ["BlockCache"]


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
