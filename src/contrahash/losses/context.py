"""The batch a loss reduces over: one process's batch, or the global batch of several.

Every loss in :mod:`contrahash.losses` takes its batch-wide reductions — means over the
batch's rows, batch statistics, the rows that serve as contrastive negatives — from a
:class:`BatchContext`, so each formula is written once. This base class *is* the one-process
context: gathering is the identity, a sum over processes is the value itself, a share of a
mean is the plain mean, BatchNorm is the module's own forward. With several processes the
trainer passes :class:`~contrahash.training.distributed.BatchGroup`, which overrides exactly
these reductions with collectives over the global batch (solo-learn's ``gather`` and
lightly's ``world_size()`` fallback follow the same idea).

The loss a process back-propagates is its **share** of the global loss: the shares of all
processes sum to the loss of the global batch, and summing their gradients gives its
gradient. Two kinds of terms exist:

* a mean of per-row (or per-element) values — :meth:`BatchContext.share_of_mean`: this
  process's values summed, divided by the global count;
* a term every process computes identically from global statistics (a correlation matrix
  of the gathered batch) — :meth:`BatchContext.share`: the value divided by the number of
  processes, so it counts once in the sum.

The same object also carries what the training loop does with a step in one process or
many (:meth:`shard` the drawn global batch, :meth:`sum_grads`, :meth:`sum_values`,
:meth:`first_step`); in one process each is the identity, so the loop never branches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["LOCAL", "BatchContext"]


class BatchContext:
    """One process holding the whole batch (see the module docstring); the base of
    :class:`~contrahash.training.distributed.BatchGroup`."""

    #: how many processes share the batch (each holds the same number of rows)
    world_size: int = 1
    #: this process's place among them (its rows come ``rank``-th in a gathered batch)
    rank: int = 0

    # -- the step, for the training loop ---------------------------------------------------
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's rows (dim 0) of the batch every process drew: all of them."""
        return rows

    def sum_grads(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum gradients over the processes: nothing to do in one."""

    def sum_values(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Σ over processes of detached scalars (logged losses): the values themselves."""
        return [v.detach() for v in values]

    def first_step(self, first_bad: torch.Tensor | None) -> torch.Tensor | None:
        """The earliest step any process saw a non-finite loss at: this process's."""
        return first_bad

    # -- reductions, for the losses --------------------------------------------------------
    def rows(self, x: torch.Tensor) -> int:
        """The number of rows of the global batch that ``x`` (this process's rows) is part of."""
        return x.shape[0] * self.world_size

    def offset(self, x: torch.Tensor) -> int:
        """Where this process's rows ``x`` start in :meth:`gather`'s result."""
        return self.rank * x.shape[0]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``x`` in rank order, with gradient: ``x`` itself."""
        return x

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over processes of ``x``, differentiable: ``x`` itself."""
        return x

    def mean(self, x: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
        """The mean over the global batch's rows along ``dim`` (a batch statistic every
        process sees the same): here ``x.mean(dim)``."""
        return x.mean(dim=dim, keepdim=keepdim)

    def share_of_mean(self, values: torch.Tensor) -> torch.Tensor:
        """This process's share of the mean of ``values`` over the global batch (every
        element of every process's equally shaped tensor weighs the same): the mean."""
        return values.mean()

    def share(self, value: torch.Tensor) -> torch.Tensor:
        """A term every process computes identically from global statistics, counted once
        in the sum of the processes' losses: the value."""
        return value

    def batch_norm(self, x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
        """``bn`` (no affine) in training mode over the batch's rows, running statistics
        included: the module's own forward."""
        return bn(x)


#: the one-process context (stateless: one instance serves every step)
LOCAL = BatchContext()
