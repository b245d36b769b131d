"""Checkpoints of a training run: the model's weights with the optimiser and every RNG
state, so that a resumed run continues exactly where it stopped (each epoch is seeded by
``(seed, epoch)``; the RNG states cover draws outside those generators), and how often
they are written."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from contrahash.training.rundir import RunDirectory

__all__ = ["CHECKPOINT_SECONDS", "load_checkpoint", "save_checkpoint"]

#: the longest time between two checkpoints of a training run: a head trained from cached
#: features runs an epoch in a fraction of a second, and writing ~100 MB of weights and
#: optimiser state after each would dominate; a resume repeats the epochs since
CHECKPOINT_SECONDS = 30.0


def save_checkpoint(run: RunDirectory, weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Write the state after ``epoch`` finished epochs: weights, optimiser, RNG states."""
    state = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
             "numpy_rng": np.random.get_state(),  # noqa: NPY002
             "python_rng": random.getstate()}
    run.save_checkpoint(weights, state, epoch)


def load_checkpoint(run: RunDirectory, optimizer: torch.optim.Optimizer, device: torch.device,
                    load_weights: Callable[[dict[str, Any]], None]) -> int:
    """Restore the run's last checkpoint, if it has one, into the model (``load_weights``),
    the optimiser and the RNGs; the number of finished epochs (0 without a checkpoint)."""
    loaded = run.load_checkpoint(device)
    if loaded is None:
        return 0
    weights, state = loaded
    load_weights(weights)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])  # noqa: NPY002
    random.setstate(state["python_rng"])
    epochs = int(state["epoch"])
    run.log_event("resume", epoch=epochs)
    return epochs
