"""The optimiser of a run and its schedule: the method's recipe with the config's overrides,
Adam or SGD over the heads (and a fine-tuned backbone at a scaled learning rate), the
per-epoch learning rate, the batch size a run can use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

import torch

from contrahash.methods.base import HashMethod, OptimSpec

__all__ = ["batch_size_for", "make_optimizer", "resolve_optim", "set_epoch_lr"]


def resolve_optim(method: HashMethod, overrides: dict[str, Any]) -> OptimSpec:
    """The method's default recipe with config overrides, unknown keys named."""
    known = {f.name for f in fields(OptimSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return OptimSpec(**{**asdict(method.default_optim), **overrides})


def make_optimizer(spec: OptimSpec, head_params: Sequence[torch.nn.Parameter],
                   backbone_params: Sequence[torch.nn.Parameter] = ()) -> torch.optim.Optimizer:
    """Adam or SGD over the method's parameters (and a backbone group at lr × scale)."""
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": spec.lr}]
    backbone_params = [p for p in backbone_params if p.requires_grad]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": spec.lr * spec.backbone_lr_scale})
    for group in groups:
        group["base_lr"] = group["lr"]
    if spec.name == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    raise ValueError(f"optim.name must be 'adam' or 'sgd', got '{spec.name}'")


def set_epoch_lr(optimizer: torch.optim.Optimizer, spec: OptimSpec, epoch: int, epochs: int) -> float:
    """Apply the schedule for ``epoch`` (constant or cosine); returns the head lr."""
    factor = 1.0
    if spec.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    elif spec.schedule != "constant":
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got '{spec.schedule}'")
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def batch_size_for(method: HashMethod, spec: OptimSpec, n: int) -> int:
    """The batch size a run uses: the recipe's, capped by the data and the method."""
    batch = min(spec.batch_size, n)
    if method.max_batch is not None:
        batch = min(batch, method.max_batch)
    if batch < 2:
        raise ValueError(f"training needs at least 2 images per batch, have {n} training images")
    return batch
