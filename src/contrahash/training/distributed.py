"""Several processes, one global batch: torch.distributed for training and encoding.

contrahash runs distributed through torch.distributed's own launcher (``torchrun``, or
``contrahash train --nproc N`` which calls it): every process holds a replica of the model,
and the batch size of the config is the *global* batch. Each step, every process draws the
same global batch from the same seeded generator and takes its slice of rows
(:meth:`BatchGroup.shard`), so the batches do not depend on the number of processes.

A method's loss is made global through a :class:`BatchGroup` it finds in
``StepInfo.group``:

* contrastive negatives come from every process, gathered *with* gradient
  (``torch.distributed.nn.functional.all_gather``; plain ``dist.all_gather`` drops it);
* batch statistics (FDBH's standardisation, its decorrelation) are sums all-reduced with
  gradient, so every process normalises with the global batch's mean and variance;
* each process's loss is its share of the global mean (sums over its rows divided by the
  global count), and the gradients are summed over processes (:meth:`BatchGroup.sum_grads`):
  the sum of the shares' gradients is the gradient of the global loss.

With one process no group exists and every loss runs its single-process code unchanged. A
method declares whether it supports this (``HashMethod.check_distributed``); one that cannot
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
import torch.nn.functional as F

__all__ = ["BatchGroup", "DistributedContext", "GlobalBatchNorm2d", "context", "global_batchnorm",
           "init_from_env", "is_distributed", "share_pieces"]


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


class BatchGroup:
    """The processes sharing one global batch of ``global_size`` rows, from a training step's
    point of view; this process holds rows ``offset … offset + local_size - 1``."""

    def __init__(self, ctx: DistributedContext, global_size: int) -> None:
        if global_size % ctx.world_size:
            raise ValueError(f"a global batch of {global_size} does not split evenly over "
                             f"{ctx.world_size} processes; choose optim.batch_size divisible by "
                             f"{ctx.world_size}")
        self.ctx = ctx
        self.global_size = int(global_size)
        self.local_size = self.global_size // ctx.world_size
        self.offset = ctx.rank * self.local_size

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's slice of a global batch's rows (dim 0)."""
        return rows[self.offset: self.offset + self.local_size]

    # -- collectives with gradient ------------------------------------------------------
    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's rows of ``x``, in rank order (``[global, ...]``), with gradient
        flowing back to the process that owns each row."""
        from torch.distributed.nn.functional import all_gather

        with _quiet():
            return torch.cat(all_gather(x.contiguous()))

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ over processes of ``x``, differentiable (the backward sums the gradients)."""
        from torch.distributed.nn.functional import all_reduce

        with _quiet():
            return all_reduce(x.contiguous(), op=dist.ReduceOp.SUM)

    def mean_rows(self, per_row: torch.Tensor, rows_per_process: int | None = None
                  ) -> torch.Tensor:
        """This process's share of a mean over the global batch's rows: Σ of its rows divided
        by the global count (``rows_per_process`` per process; default the batch's)."""
        n = rows_per_process if rows_per_process is not None else self.local_size
        return per_row.sum() / (n * self.world_size)

    def share(self, value: torch.Tensor) -> torch.Tensor:
        """A term every process computes identically from global statistics, counted once
        in the sum of the processes' losses."""
        return value / self.world_size

    # -- the optimiser step ----------------------------------------------------------------
    def sum_grads(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes (one flat all-reduce)."""
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

    # -- global batch statistics -----------------------------------------------------------
    def batch_norm(self, u: torch.Tensor, bn: torch.nn.BatchNorm1d, views: int = 1
                   ) -> torch.Tensor:
        """``bn`` (no affine) in training mode over the global batch: every process's ``u``
        (``views`` views of its rows, concatenated) is standardised with the mean and
        (biased) variance of all processes' rows; the running statistics move as one
        ``BatchNorm1d`` over the whole global batch would move them."""
        count = u.shape[0] * self.world_size
        mean = self.all_sum(u.sum(dim=0)) / count
        centred = u - mean
        var = self.all_sum(centred.pow(2).sum(dim=0)) / count
        with torch.no_grad():
            if bn.track_running_stats and bn.running_mean is not None:
                momentum = bn.momentum if bn.momentum is not None else 0.1
                bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * count / max(1, count - 1)
                bn.running_var.mul_(1 - momentum).add_(momentum * unbiased)
                bn.num_batches_tracked.add_(1)
        return centred / torch.sqrt(var + bn.eps)

    def decorrelation(self, u: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
        """:func:`~contrahash.losses.decorrelation_loss` of the global batch's rows (this
        process's rows ``u``), as this process's share."""
        if u.ndim != 2 or u.shape[1] < 2:
            return u.new_zeros(())
        count = u.shape[0] * self.world_size
        x = u.float()
        x = x - self.all_sum(x.sum(dim=0, keepdim=True)) / count
        x = x / (torch.sqrt(self.all_sum(x.pow(2).sum(dim=0, keepdim=True)) / count) + eps)
        corr = self.all_sum(x.t() @ x) / count
        k = corr.shape[0]
        off = corr - torch.diag_embed(torch.diagonal(corr))
        return self.share(off.pow(2).sum() / (k * (k - 1)))

    def nt_xent(self, z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
        """:func:`~contrahash.losses.nt_xent` over the global batch (every process's rows
        are negatives of every anchor), as this process's share: its anchors' terms over
        the global number of anchors."""
        n, offset, total = z1.shape[0], self.offset, self.global_size
        everyone = F.normalize(torch.cat([self.gather(z1.float()), self.gather(z2.float())]),
                               dim=1)
        local = torch.cat([torch.arange(offset, offset + n),
                           torch.arange(total + offset, total + offset + n)]).to(z1.device)
        sim = everyone[local] @ everyone.t() / temperature
        own = torch.zeros_like(sim, dtype=torch.bool)
        own[torch.arange(2 * n, device=z1.device), local] = True
        sim = sim.masked_fill(own, float("-inf"))  # an anchor is not its own negative
        target = torch.cat([local[n:], local[:n]])
        return F.cross_entropy(sim, target, reduction="sum") / (2 * total)


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are the global batch's: per-channel sums
    all-reduced over the processes with gradient (what ``SyncBatchNorm`` does on CUDA, which
    refuses CPU modules). In eval mode, or in one process, it is ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        world = dist.get_world_size()
        count = x.numel() // x.shape[1] * world
        dims = (0, 2, 3)
        xf = x.float()
        with _quiet():
            mean = all_reduce(xf.sum(dims), op=dist.ReduceOp.SUM) / count
            centred = xf - mean[None, :, None, None]
            var = all_reduce(centred.pow(2).sum(dims), op=dist.ReduceOp.SUM) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * count / max(1, count - 1)
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
                self.num_batches_tracked.add_(1)
        y = centred / torch.sqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


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
