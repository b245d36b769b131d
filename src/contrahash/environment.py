"""What a result depends on besides its config: versions, machine, device, threads, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["environment_info"]


def environment_info(device: Any = None) -> dict[str, Any]:
    """Versions, machine, device and thread facts for a run's ``environment.json``."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module in ("torchvision", "faiss", "contrahash"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - optional packages
            info[module] = None
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["device"] = str(device) if device is not None else None
    info["threads"] = thread_record()
    info["git_commit"] = _git_commit()
    return info


def thread_record() -> dict[str, Any]:
    """The thread settings in effect (results at one seed depend on them)."""
    from contrahash.runtime import thread_settings

    return thread_settings()


def _git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except Exception:  # noqa: BLE001 - git is optional
        return None
    return commit.stdout.strip() or None
