"""One optimisation step of a method, in one process of a gloo group (or alone).

Run by tests/test_distributed.py: ``python one_step.py METHOD OUT.npz [RANK WORLD PORT]``.
Every process builds the same method, optimiser and global batch (fixed seeds), takes its
slice of rows, computes its share of the loss, sums gradients over the group and steps;
rank 0 (or the single process) saves the global loss and the updated parameters.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.distributed as dist

from contrahash.distributed import BatchGroup, DistributedContext
from contrahash.methods import StepInfo, build_method
from contrahash.train import make_optimizer, resolve_optim

GLOBAL_BATCH, DIM = 16, 24
CONFIGS = {
    "fdbh": {"neighbour_mode": "extra"},  # three views: the neighbour term is covered too
    "cibhash": {},
}


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    rank, world = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 3 else (0, 1)
    torch.set_num_threads(1)
    group = None
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[5]}",
                                rank=rank, world_size=world)
        group = BatchGroup(DistributedContext(rank, world, 0, "gloo"), GLOBAL_BATCH)
    torch.manual_seed(0)
    method = build_method(name, DIM, [8, 16], CONFIGS[name])
    spec = resolve_optim(method, {"name": "sgd", "lr": 0.05, "momentum": 0.9})
    optimizer = make_optimizer(spec, list(method.parameters()))
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(GLOBAL_BATCH, DIM, generator=g).abs() for _ in range(method.n_views)]
    if group is not None:
        views = [group.shard(v) for v in views]
    method.train()
    out_loss = method.training_loss(views, StepInfo(epoch=0, epochs=2, step=0, steps_per_epoch=3,
                                                    group=group))
    optimizer.zero_grad()
    out_loss.loss.backward()
    loss = out_loss.loss.detach()
    if group is not None:
        group.sum_grads(method.parameters())
        (loss,) = group.sum_values([loss])
    grads = {f"grad.{k}": p.grad.numpy().copy() for k, p in method.named_parameters()
             if p.grad is not None}
    optimizer.step()
    if rank == 0:
        state = {k: v.detach().numpy() for k, v in method.state_dict().items()}
        np.savez(out, loss=loss.numpy(), **state, **grads)
    if group is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
