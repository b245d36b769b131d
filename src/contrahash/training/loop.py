"""The one epoch loop: optimisation steps over an epoch's batches, epochs seeded by
``(seed, epoch)``, and training heads on in-memory features (:func:`train_on_features`).

A step's losses reduce through the batch context in ``StepInfo.batch``
(:mod:`contrahash.losses.context`), and so does the loop: sharding the drawn global batch,
summing gradients and logged values over processes are identities in one process, so the
loop is the same for one process and many. Losses are summed on the device and read once
per epoch; a non-finite loss stops training with the step where it first appeared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from contrahash.losses.context import LOCAL, BatchContext
from contrahash.methods.base import HashMethod, OptimSpec, StepInfo
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.training.optim import batch_size_for, make_optimizer, set_epoch_lr
from contrahash.training.providers.base import Epoch
from contrahash.training.providers.sampling import feature_view_batches

__all__ = ["EpochFactory", "TrainingError", "epoch_seed", "run_epoch", "train_epochs",
           "train_on_features"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume); the message says why."""


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's generators (batch order, view picks, augmentation)."""
    return seed * 100_003 + epoch * 7_919 + 1


def run_epoch(
    method: HashMethod,
    optimizer: torch.optim.Optimizer,
    epoch: Epoch,
    info: StepInfo,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One pass of optimisation steps over ``epoch``'s batches; mean loss and loss parts.

    Each batch's positions in the training split reach the method as ``StepInfo.positions``.
    Losses are summed on the device and read once at the end of the epoch: no step waits for
    the GPU, so the host queues the next batch's augmentation while the GPU computes. A
    non-finite loss is detected at the end of the epoch (before any checkpoint is written)
    and reported with the step where it first appeared.
    """
    method.train()
    for module in epoch.trainables:
        module.train()
    ctx = info.batch  # one process: every call below is the identity
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, torch.Tensor | float] = {}
    first_bad: torch.Tensor | None = None
    steps = 0
    for step, (batch, positions) in enumerate(epoch.batches):
        # every process drew the global batch: take this one's rows
        batch, positions = [ctx.shard(v) for v in batch], ctx.shard(positions)
        info.step = step
        info.positions = positions
        inputs = epoch.forward(batch) if epoch.forward is not None else batch
        out = method.training_loss(inputs, info)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.sum_grads(params)  # the shares' gradients sum to the global loss's gradient
        optimizer.step()
        steps += 1
        value = loss.detach()
        bad = ~torch.isfinite(value)
        first_bad = (torch.where(bad, step, -1) if first_bad is None
                     else torch.where((first_bad < 0) & bad, step, first_bad))
        sums["loss"] = sums.get("loss", 0.0) + value
        for key, part in out.parts.items():
            sums[key] = sums.get(key, 0.0) + part
        if on_step is not None:
            on_step(len(positions) * ctx.world_size)
    info.positions = None
    if sums:  # the processes' shares of every logged value, summed
        keys = list(sums)
        sums = dict(zip(keys, ctx.sum_values([torch.as_tensor(sums[k]) for k in keys]),
                        strict=True))
    first_bad = ctx.first_step(first_bad)
    if first_bad is not None and int(first_bad) >= 0:
        raise TrainingError(
            f"non-finite loss at epoch {info.epoch + 1}, step {int(first_bad) + 1}; "
            "try a lower optim.lr. The last good checkpoint is kept."
        )
    return {key: float(v) / max(1, steps) for key, v in sums.items()}


EpochFactory = Callable[[int, torch.Generator], Epoch]


def train_epochs(
    method: HashMethod,
    optimizer: torch.optim.Optimizer,
    spec: OptimSpec,
    epochs_for: EpochFactory,
    *,
    steps_per_epoch: int,
    images_per_epoch: int,
    seed: int = 0,
    start_epoch: int = 0,
    device: torch.device | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | ProgressCallback | None = None,
    batch: BatchContext = LOCAL,
) -> list[dict[str, Any]]:
    """The one epoch loop: epochs ``start_epoch … spec.epochs - 1`` of :func:`run_epoch`.

    ``epochs_for(epoch, generator)`` makes an epoch's batches from the epoch's seeded
    generator; ``before_epoch(epoch)`` runs first (e.g. neighbour re-mining);
    ``after_epoch(record)`` gets each epoch's record (checkpoint, log) and returns False to
    stop early. ``batch`` is every step's batch context (a
    :class:`~contrahash.training.distributed.BatchGroup` with several processes). Returns the
    records of the epochs run.
    """
    progress = as_progress(progress)
    sync = device is not None and device.type == "cuda"
    logs: list[dict[str, Any]] = []
    for epoch in range(start_epoch, spec.epochs):
        if before_epoch is not None:
            before_epoch(epoch)
        lr = set_epoch_lr(optimizer, spec, epoch, spec.epochs)
        torch.manual_seed(epoch_seed(seed, epoch))  # dropout and other in-loss draws
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        info = StepInfo(epoch=epoch, epochs=spec.epochs, steps_per_epoch=steps_per_epoch,
                        batch=batch)
        batches = epochs_for(epoch, generator)
        seen = [0]
        with progress.phase("training", images_per_epoch, epoch=epoch + 1,
                            epochs=spec.epochs) as phase:

            def on_step(n: int, seen: list[int] = seen, phase: Any = phase) -> None:
                seen[0] += n
                phase.advance(n)

            if sync:
                torch.cuda.synchronize()
            t = time.perf_counter()
            stats = run_epoch(method, optimizer, batches, info, on_step)
            if sync:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            phase.advance(0, loss=stats.get("loss"))
        record = {"epoch": epoch + 1, "lr": lr, "seconds": round(dt, 3),
                  "images_per_second": round(seen[0] / dt, 1) if dt else 0.0,
                  "images": seen[0], **stats}
        logs.append(record)
        if after_epoch is not None and after_epoch(record) is False:
            break
    method.eval()
    return logs


def train_on_features(
    method: HashMethod,
    views: torch.Tensor,
    *,
    epochs: int | None = None,
    optim: OptimSpec | None = None,
    seed: int = 0,
    neighbours: np.ndarray | None = None,
    neighbour_prob: float = 0.0,
    neighbour_features: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Train a method's heads from precomputed backbone outputs of augmented views.

    ``views``: [N, V, d] (or [N, V, T, d] token grids); each step draws ``method.n_views``
    distinct views per image; ``neighbours`` ([N, k] rows of ``views``, or of
    ``neighbour_features``) feed the last view with probability ``neighbour_prob``. Returns
    the per-epoch records.

    >>> from contrahash.methods import build_method
    >>> m = build_method("cibhash", feature_dim=8, bits=[8])
    >>> logs = train_on_features(m, torch.randn(64, 4, 8), epochs=2,
    ...                          optim=OptimSpec(batch_size=16))
    >>> len(logs)
    2
    """
    spec = optim or method.default_optim
    if epochs is not None:
        spec = OptimSpec(**{**asdict(spec), "epochs": epochs})
    batch = batch_size_for(method, spec, views.shape[0])
    optimizer = make_optimizer(spec, list(method.parameters()))

    def epochs_for(epoch: int, generator: torch.Generator) -> Epoch:
        return Epoch(feature_view_batches(views, batch, method.n_views, generator, neighbours,
                                          neighbour_prob, neighbour_features))

    steps = views.shape[0] // batch
    return train_epochs(method, optimizer, spec, epochs_for, steps_per_epoch=steps,
                        images_per_epoch=steps * batch, seed=seed)
