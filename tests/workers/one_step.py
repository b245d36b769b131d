"""One optimisation step of a method, in one process of a gloo group (or alone).

Run by tests/test_distributed.py: ``python one_step.py METHOD OUT.npz [RANK WORLD PORT]``.
Every process builds the same method (and backbone), optimiser and global batch (fixed
seeds), takes its slice of rows, computes its share of the loss, sums gradients over the
group and steps; rank 0 (or the single process) saves the global loss, the gradients and the
updated parameters. The step is SGD: Adam's first step is lr·sign(g), which would turn
float-noise differences of near-zero gradients into ±lr; the saved gradients are what Adam
would get.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.distributed as dist

from contrahash.methods import StepInfo, build_method
from contrahash.models.backbones import build_backbone
from contrahash.training.distributed import DistributedContext, batch_context, global_batchnorm
from contrahash.training.optim import make_optimizer, resolve_optim

GLOBAL_BATCH, DIM = 16, 24
CONFIGS = {
    "fdbh": {"neighbour_mode": "extra"},  # three views: the neighbour term is covered too
    "cibhash": {},
    "cibhash-finetune": {},  # through a fine-tuned backbone's BatchNorm layers
}


def main() -> None:
    name, out = sys.argv[1], sys.argv[2]
    rank, world = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 3 else (0, 1)
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[5]}",
                                rank=rank, world_size=world)
    batch = batch_context(DistributedContext(rank, world, 0, "gloo" if world > 1 else "none"),
                          GLOBAL_BATCH)
    torch.manual_seed(0)
    backbone = None
    if name.endswith("-finetune"):
        backbone = build_backbone("tiny_cnn", random_init=True, finetune_blocks=2, image_size=16)
        if world > 1:
            global_batchnorm(backbone, torch.device("cpu"))
            backbone.refresh_blocks()
        backbone.train()
    dim = backbone.feature_dim if backbone is not None else DIM
    method = build_method(name.removesuffix("-finetune"), dim, [8, 16], CONFIGS[name])
    params = [p for p in list(method.parameters())
              + (list(backbone.parameters()) if backbone is not None else []) if p.requires_grad]
    spec = resolve_optim(method, {"name": "sgd", "lr": 0.05, "momentum": 0.9})
    optimizer = make_optimizer(spec, params)
    g = torch.Generator().manual_seed(1)
    shape = (3, 16, 16) if backbone is not None else (DIM,)
    views = [torch.rand(GLOBAL_BATCH, *shape, generator=g) for _ in range(method.n_views)]
    views = [batch.shard(v) for v in views]
    if backbone is not None:  # all views through the backbone at once, as the trainer does
        views = list(backbone(torch.cat(views)).chunk(method.n_views))
    method.train()
    step = StepInfo(epoch=0, epochs=2, step=0, steps_per_epoch=3, batch=batch)
    result = method.training_loss(views, step)
    optimizer.zero_grad()
    result.loss.backward()
    loss = result.loss.detach()
    batch.sum_grads(params)
    (loss,) = batch.sum_values([loss])
    named = list(method.named_parameters())
    if backbone is not None:
        named += [(f"backbone.{k}", p) for k, p in backbone.named_parameters()]
    grads = {f"grad.{k}": p.grad.numpy().copy() for k, p in named if p.grad is not None}
    optimizer.step()
    if rank == 0:
        state = {k: v.detach().numpy() for k, v in method.state_dict().items()}
        if backbone is not None:  # BatchNorm running statistics included
            state.update({f"backbone.{k}": v.detach().numpy()
                          for k, v in backbone.state_dict().items()})
        np.savez(out, loss=loss.numpy(), **state, **grads)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        # Leave without the interpreter's teardown: in about one run in 30 the last rank's
        # exit ran C++ static destructors while a c10d thread was still joinable and aborted
        # ("terminate called without an active exception", no Python frame) after its work
        # was done and saved. The result is written; nothing is left to clean up.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
