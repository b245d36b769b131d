"""Peak memory of one benchmark cell.

On CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor
memory, not the caching allocator's reserve); on the CPU the resident-set high-water mark
``VmHWM`` of this process, reset per cell through ``/proc/self/clear_refs`` (Linux); where
that reset is unavailable, ``ru_maxrss`` — the lifetime peak of the process, an upper bound
for later cells — and the kind is recorded (``peak_memory_kind``) so a reader knows which one
a number is.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak memory of one cell (a context manager); see the module docstring for the kinds."""

    def __init__(self, device: str):
        self.device = device
        self.kind = ""
        self._reset_ok = False

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._rss_before = _maxrss_bytes()
        self._reset_ok = _reset_rss_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.values = self.read()

    def read(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        hwm = _vm_hwm_bytes() if self._reset_ok else None
        if hwm is not None:
            out["peak_rss_bytes"], rss_kind = hwm, "rss_hwm_per_cell"
        else:
            out["peak_rss_bytes"], rss_kind = _maxrss_bytes(), "process_maxrss"
        out["rss_peak_growth_bytes"] = max(0, _maxrss_bytes() - self._rss_before)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            out["peak_memory_kind"] = "cuda_max_memory_allocated"
        else:
            out["peak_memory_bytes"] = out["peak_rss_bytes"]
            out["peak_memory_kind"] = rss_kind
        return out


def _maxrss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: KiB


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ≥ 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
