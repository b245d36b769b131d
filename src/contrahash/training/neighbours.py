"""Neighbour positives: mining each training image's nearest neighbours, and drawing them.

A method that returns a :class:`~contrahash.methods.base.NeighbourSpec` from
``neighbours()`` gets, before training, each training image's ``spec.k`` nearest neighbours
by cosine of the frozen backbone's un-augmented features over ``spec.pool`` — no labels —
and, at every step, the last view of an image's batch slot replaced with probability
``spec.prob`` by a view of one of its neighbours (:func:`draw_neighbours`). With
``spec.refresh = R`` the neighbours are mined again every R epochs from
:meth:`~contrahash.methods.base.HashMethod.embed` of the model being trained.

The latest neighbours live in the run directory's ``neighbours.npz`` (dataset indices, the
pool, the epoch they were mined at: -1 for the frozen features), so a resumed run continues
with the very set its checkpoint trained on. This module is the only place that mines or
draws neighbours; the feature providers (:mod:`contrahash.training.providers`) turn the
dataset indices into rows of whatever they batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from contrahash.io import write_npz
from contrahash.methods.base import NeighbourSpec
from contrahash.progress import Progress, ProgressCallback, as_progress

__all__ = ["MinedNeighbours", "NeighbourMining", "draw_neighbours", "mine_neighbours"]


def mine_neighbours(
    anchors: np.ndarray, pool: np.ndarray, k: int, self_index: np.ndarray | None = None,
    device: torch.device | str = "cpu", chunk: int = 1024, progress: Progress | ProgressCallback | None = None,
) -> np.ndarray:
    """Indices (into ``pool``) of each anchor's ``k`` nearest pool items by cosine.

    ``self_index[i]`` is anchor i's own row in ``pool`` (excluded), or -1 when absent.

    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> mine_neighbours(x, x, 1, self_index=np.arange(3))[:, 0].tolist()
    [1, 0, 1]
    """
    device = torch.device(device)
    pool_t = torch.nn.functional.normalize(torch.as_tensor(np.asarray(pool)).float().to(device), dim=1)
    out = np.empty((len(anchors), k), dtype=np.int64)
    with as_progress(progress).phase("neighbour mining", len(anchors)) as phase:
        for lo in range(0, len(anchors), chunk):
            a = torch.as_tensor(np.asarray(anchors[lo : lo + chunk])).float().to(device)
            sim = torch.nn.functional.normalize(a, dim=1) @ pool_t.t()
            if self_index is not None:
                own = torch.as_tensor(self_index[lo : lo + chunk], device=device)
                valid = own >= 0
                rows = torch.arange(len(own), device=device)[valid]
                sim[rows, own[valid]] = -float("inf")
            out[lo : lo + len(a)] = sim.topk(k, dim=1).indices.cpu().numpy()
            phase.advance(len(a))
    return out


def draw_neighbours(
    candidates: torch.Tensor, prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch's neighbour lists ``candidates`` [B, k]: (use [B] bool, chosen [B]).

    ``use[i]`` (probability ``prob``) says whether slot i takes a neighbour; ``chosen[i]`` is
    a uniformly drawn one of its k neighbours. Two draws from ``generator``, in this order.
    """
    batch = candidates.shape[0]
    use = torch.rand(batch, generator=generator) < prob
    which = torch.randint(0, candidates.shape[1], (batch,), generator=generator)
    return use, candidates[torch.arange(batch), which]


@dataclass
class MinedNeighbours:
    """Neighbours as dataset indices ``[n_train, k]``, the pool's dataset indices, and the
    epoch they were mined at (-1: the frozen backbone's features before training)."""

    neighbours: np.ndarray
    pool: np.ndarray
    epoch: int

    def rows_in(self, order: np.ndarray) -> np.ndarray:
        """The neighbours as positions in ``order`` (e.g. the training split or the pool)."""
        position = np.full(int(max(order.max(initial=-1), self.neighbours.max(initial=-1))) + 1,
                           -1, dtype=np.int64)
        position[order] = np.arange(len(order))
        rows = position[self.neighbours]
        if (rows < 0).any():
            raise ValueError("mined neighbours fall outside the given order")
        return rows


class NeighbourMining:
    """Mining, refreshing and persisting one run's neighbours (see the module docstring).

    ``train`` and ``database`` are the split's dataset indices; ``path`` the run's
    ``neighbours.npz``; ``labels`` (optional) only feed a logged diagnostic, the share of
    neighbours that share a label with their anchor — never used for training.
    """

    def __init__(self, spec: NeighbourSpec, train: np.ndarray, database: np.ndarray,
                 path: str | os.PathLike, *, device: torch.device | str = "cpu",
                 labels: np.ndarray | None = None,
                 log_event: Callable[..., None] | None = None,
                 progress: Progress | ProgressCallback | None = None,
                 write: bool = True) -> None:
        self.spec = spec
        self.train = np.asarray(train)
        self.pool = self.train if spec.pool == "train" else np.asarray(database)
        self.path = Path(path)
        self.device = device
        self.labels = labels
        self.log_event = log_event or (lambda event, **fields: None)
        self.progress = as_progress(progress)
        self.write = write  # False in processes that only read (ranks other than 0)

    def refresh_due(self, epoch: int) -> bool:
        """Whether neighbours are re-mined before training ``epoch`` (0-based)."""
        r = self.spec.refresh
        return bool(r) and epoch > 0 and epoch % r == 0

    def initial(self, features: Callable[[np.ndarray], np.ndarray]) -> MinedNeighbours:
        """The saved set when the run has one (resume), else mined from ``features``
        (dataset indices → frozen un-augmented features)."""
        if self.path.exists():
            z = np.load(self.path)
            return MinedNeighbours(z["neighbours"], z["pool"], int(z["epoch"]))
        return self._mine(features(self.train), features(self.pool), epoch=-1)

    def refreshed(self, epoch: int, embed: Callable[[np.ndarray], torch.Tensor]
                  ) -> MinedNeighbours:
        """Neighbours mined again before ``epoch`` from ``embed`` (dataset indices →
        the current model's embedding)."""
        return self._mine(embed(self.train), embed(self.pool), epoch=epoch)

    def _mine(self, anchors, candidates, epoch: int) -> MinedNeighbours:
        position = {int(i): p for p, i in enumerate(self.pool)}
        self_index = np.array([position.get(int(i), -1) for i in self.train])
        found = mine_neighbours(anchors, candidates, self.spec.k, self_index,
                                device=self.device, progress=self.progress)
        mined = MinedNeighbours(self.pool[found], self.pool, epoch)
        if self.write:
            write_npz(self.path, neighbours=mined.neighbours, pool=mined.pool,
                      epoch=np.array(epoch))
        fields = {"pool": self.spec.pool, "k": self.spec.k, "pool_size": len(self.pool),
                  "epoch": epoch}
        if self.labels is not None:
            fields["label_agreement_diagnostic"] = label_agreement(
                self.labels, self.train, mined.neighbours)
        self.log_event("neighbours", **fields)
        return mined


def label_agreement(labels: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray) -> float:
    """Diagnostic only (never used for training): how often a mined neighbour shares a label
    with its anchor (``labels`` multi-hot [n, C])."""
    a = labels[anchors].astype(bool)[:, None, :]
    b = labels[neighbours].astype(bool)
    return float((a & b).any(axis=2).mean())
