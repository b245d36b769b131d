"""Several processes, one global batch: torch.distributed for training and encoding.

contrahash runs distributed through torch.distributed's own launcher (``torchrun``, or
``contrahash train --nproc N`` which calls it): every process holds a replica of the model,
and the batch size of the config is the *global* batch. Each step, every process draws the
same global batch from the same seeded generator and takes its slice of rows
(:meth:`BatchGroup.shard`), so the batches do not depend on the number of processes.

A step's loss is made global through the :class:`BatchGroup` it finds in ``StepInfo.batch``:
the batch context of several processes (:mod:`contrahash.losses.context`; in one process the
context's reductions are identities and plain means, so a loss is written once):

* contrastive negatives come from every process, gathered *with* gradient
  (``torch.distributed.nn.functional.all_gather``; plain ``dist.all_gather`` drops it);
* batch statistics (FDBH's standardisation, its decorrelation) are sums all-reduced with
  gradient, so every process normalises with the global batch's mean and variance;
* each process's loss is its share of the global mean (sums over its rows divided by the
  global count), and the gradients are summed over processes (:meth:`BatchGroup.sum_grads`):
  the sum of the shares' gradients is the gradient of the global loss.

A method declares whether it supports this (``HashMethod.check_distributed``); one that cannot
refuses with a message instead of training differently. ``docs/scaling.md`` says what is
identical to a single process and what is not.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from contrahash.losses.context import LOCAL, BatchContext

__all__ = ["BatchGroup", "DistributedContext", "GlobalBatchNorm2d", "batch_context",
           "batch_norm_over_processes", "context", "global_batchnorm", "init_from_env",
           "is_distributed", "share_pieces"]


def is_distributed() -> bool:
    """Whether this process was started as one of several (torchrun's environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the processes of one job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files (checkpoints, metrics, events, results)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            dist.barrier()


_SINGLE = DistributedContext(0, 1, 0, "none")
_context: DistributedContext = _SINGLE


def context() -> DistributedContext:
    """The current process's context (a single process when none was initialised)."""
    return _context


def init_from_env(device: torch.device | None = None) -> DistributedContext:
    """Join the process group torchrun described in the environment (gloo on CPU, NCCL on
    CUDA); a single process returns a context of one. Idempotent."""
    global _context
    if not is_distributed():
        return _SINGLE
    if dist.is_initialized():
        return _context
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device is not None and device.type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    _context = DistributedContext(rank, world, local_rank, backend)
    return _context


def shutdown() -> None:
    """Leave the process group (end of a distributed job)."""
    global _context
    if dist.is_initialized():
        dist.destroy_process_group()
    _context = _SINGLE


@contextmanager
def _quiet() -> Iterator[None]:
    """torch 2.14 marks the differentiable collectives deprecated in favour of a private
    module; they are the documented public ones, so that FutureWarning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional",
                                category=FutureWarning)
        yield


def piece_shape(shape: Sequence[int], index: tuple) -> tuple[int, ...]:
    """The shape of ``array[index]`` for an array of ``shape``, without allocating it."""
    import numpy as np

    probe = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=tuple(shape),
                                            strides=(0,) * len(shape))
    return probe[index].shape


def share_pieces(ctx: DistributedContext, pieces: Sequence[tuple], shape: Sequence[int],
                 dtype: object, compute_piece: Callable[[int], object],
                 sink: Callable[[int, object], None] | None) -> None:
    """Build an array of ``shape`` from pieces (``array[pieces[p]]``) with every process:
    process r computes the pieces p ≡ r (mod world) — all at the same time —, then every
    piece is broadcast from its owner in order and handed to ``sink(p, values)`` where a
    sink is given (e.g. rank 0 writing a file). Works on any file system; NCCL moves the
    pieces through the GPU."""
    import numpy as np

    mine = {p: np.ascontiguousarray(compute_piece(p), dtype=dtype)
            for p in range(ctx.rank, len(pieces), ctx.world_size)}
    torch_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else None
    for p, index in enumerate(pieces):
        owner = p % ctx.world_size
        buf = (torch.from_numpy(mine.pop(p)) if owner == ctx.rank
               else torch.empty(piece_shape(shape, index), dtype=torch_dtype))
        moved = buf.to(device) if device is not None else buf
        dist.broadcast(moved, src=owner)
        if sink is not None:
            sink(p, moved.cpu().numpy())


def _all_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over processes of ``x``, differentiable (the backward sums the gradients)."""
    from torch.distributed.nn.functional import all_reduce

    with _quiet():
        return all_reduce(x.contiguous(), op=dist.ReduceOp.SUM)


def batch_norm_over_processes(x: torch.Tensor, bn: torch.nn.modules.batchnorm._BatchNorm,
                      world_size: int) -> torch.Tensor:
    """``bn`` in training mode over the global batch: ``x`` (this process's ``[N, C, ...]``)
    is standardised per channel (dim 1) with the mean and biased variance of every process's
    values, ``bn``'s affine applied if it has one; the running statistics move as one
    ``bn`` over the whole global batch would move them. The one formula behind
    :meth:`BatchGroup.batch_norm` and :class:`GlobalBatchNorm2d`."""
    dims = tuple(d for d in range(x.ndim) if d != 1)
    shape = [1] * x.ndim
    shape[1] = -1
    count = x.numel() // x.shape[1] * world_size
    xf = x.float()
    mean = _all_sum(xf.sum(dims)) / count
    centred = xf - mean.view(shape)
    var = _all_sum(centred.pow(2).sum(dims)) / count
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            momentum = bn.momentum if bn.momentum is not None else 0.1
            bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            unbiased = var.detach() * count / max(1, count - 1)
            bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
            bn.num_batches_tracked.add_(1)
    y = centred / torch.sqrt(var + bn.eps).view(shape)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y.to(x.dtype)


class BatchGroup(BatchContext):
    """The processes sharing one global batch of ``global_size`` rows, from a training step's
    point of view: the :class:`~contrahash.losses.context.BatchContext` of several processes.
    This process holds rows ``rank · local_size … (rank + 1) · local_size - 1``."""

    def __init__(self, ctx: DistributedContext, global_size: int) -> None:
        if global_size % ctx.world_size:
            raise ValueError(f"a global batch of {global_size} does not split evenly over "
                             f"{ctx.world_size} processes; choose optim.batch_size divisible by "
                             f"{ctx.world_size}")
        self.ctx = ctx
        self.global_size = int(global_size)
        self.local_size = self.global_size // ctx.world_size

    @property
    def world_size(self) -> int:  # type: ignore[override]
        return self.ctx.world_size

    @property
    def rank(self) -> int:  # type: ignore[override]
        return self.ctx.rank

    # -- the step ----------------------------------------------------------------------------
    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's slice of a global batch's rows (dim 0)."""
        start = self.rank * self.local_size
        return rows[start: start + self.local_size]

    def sum_grads(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (one flat all-reduce): the
        shares' gradients sum to the global loss's gradient."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum_values(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Σ over processes of detached scalars (logged losses), one all-reduce."""
        flat = torch.stack([v.detach().float().reshape(()) for v in values])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return list(flat.unbind())

    def first_step(self, first_bad: torch.Tensor | None) -> torch.Tensor | None:
        """The earliest step any process saw a non-finite loss at (-1: none)."""
        local = torch.tensor(-1 if first_bad is None else int(first_bad))
        big = torch.where(local < 0, torch.tensor(2**31 - 1), local)
        dist.all_reduce(big, op=dist.ReduceOp.MIN)
        return torch.where(big == 2**31 - 1, torch.tensor(-1), big)

    # -- reductions over the global batch, with gradient -------------------------------------
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``x``, in rank order (``[global, ...]``), with gradient
        flowing back to the process that owns each row (plain ``dist.all_gather`` drops it)."""
        from torch.distributed.nn.functional import all_gather

        with _quiet():
            return torch.cat(all_gather(x.contiguous()))

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over processes of ``x``, differentiable (the backward sums the gradients)."""
        return _all_sum(x)

    def mean(self, x: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
        """The global batch's mean along ``dim``: sums all-reduced, over the global count."""
        return self.all_sum(x.sum(dim=dim, keepdim=keepdim)) / (x.shape[dim] * self.world_size)

    def share_of_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Σ of this process's values over the global count."""
        return values.sum() / (values.numel() * self.world_size)

    def share(self, value: torch.Tensor) -> torch.Tensor:
        """A value every process computes alike, divided by the number of processes."""
        return value / self.world_size

    def batch_norm(self, x: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
        """:func:`batch_norm_over_processes`: statistics of the global batch's rows."""
        return batch_norm_over_processes(x, bn, self.world_size)


def batch_context(ctx: DistributedContext, global_size: int) -> BatchContext:
    """The batch context of a training step with global batches of ``global_size`` rows:
    :data:`~contrahash.losses.context.LOCAL` in one process, a :class:`BatchGroup` in
    several (the one place that tells the two apart)."""
    return BatchGroup(ctx, global_size) if ctx.world_size > 1 else LOCAL


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are the global batch's
    (:func:`batch_norm_over_processes`: per-channel sums all-reduced with gradient — what
    ``SyncBatchNorm`` does on CUDA, which refuses CPU modules). In eval mode, or in one
    process, it is ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        return batch_norm_over_processes(x, self, dist.get_world_size())


def global_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Make every ``BatchNorm2d`` of ``module`` compute global-batch statistics in training:
    ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` on the CPU. Parameters, buffers and
    state-dict names are kept."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=device)
            new.load_state_dict(child.state_dict())
            new.requires_grad_(any(p.requires_grad for p in child.parameters()))
            new.train(child.training)
            setattr(module, name, new)
        else:
            global_batchnorm(child, device)
    return module
