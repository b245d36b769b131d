"""Loading weights into a backbone: state-dict files (``.pth``/``.pt``/``.safetensors``) and
the strict, key-checked load that names what does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from contrahash.models.backbones.base import Backbone


class WeightsNotFoundError(FileNotFoundError):
    """No pretrained weights where they were expected; the message says where and what to do."""


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.safetensors`` or torch (``.pth``/``.pt``) state dict onto the CPU.

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints and ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: object = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if isinstance(v, Tensor)
    }


def load_into(
    backbone: Backbone,
    state: Mapping[str, Tensor],
    source: object,
    head_prefixes: tuple[str, ...],
) -> None:
    """Strict load of ``state`` (minus the classifier head) into a meta- or CPU-built model."""
    own = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    for key in own:  # some converted checkpoints lack BatchNorm's step counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong_shape:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        problems = [
            f"missing keys: {few(missing)}" if missing else "",
            f"unexpected keys: {few(unexpected)}" if unexpected else "",
            f"wrong shapes: {few(wrong_shape)}" if wrong_shape else "",
        ]
        raise ValueError(
            f"weights from {source} do not fit backbone {backbone.name!r}: "
            + "; ".join(p for p in problems if p)
        )
    backbone.load_state_dict(state, strict=True, assign=True)
    for name, tensor in [*backbone.named_parameters(), *backbone.named_buffers()]:
        if tensor.is_meta:  # pragma: no cover - guarded by the key check above
            raise ValueError(f"backbone {backbone.name!r}: {name} was not loaded from {source}")


