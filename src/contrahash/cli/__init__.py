"""The ``contrahash`` command line: thin commands that parse, load a config and call the library.

Each command lives in a small module of this package (train, index, data, bench, serve) and
is registered here, in one table, under :func:`~contrahash.cli.common.guarded`: a user's
mistake ends with one line ``error: …``, never a traceback (``--debug`` shows it). Progress of
long phases is drawn here (:mod:`contrahash.cli.progress`), never in the library.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: process settings first (before torch and faiss load their
    OpenMP runtimes: see :mod:`contrahash.runtime`), then the command."""
    from contrahash.runtime import apply_thread_policy, tune_cpu_allocator

    apply_thread_policy()
    tune_cpu_allocator()  # before any tensor work
    from contrahash.cli.commands import app

    try:
        app()
    except SystemExit as exc:
        _leave_process_group(exc.code)
        raise
    _leave_process_group(0)


def _leave_process_group(code: int | str | None) -> None:
    """End a process of a ``--nproc`` / torchrun job: leave its process group, then exit
    without the interpreter's teardown. Left to that teardown, a rank would now and then
    abort after its work was done and written ("terminate called without an active
    exception": C++ static destructors running while a c10d thread is still joinable), and
    the launcher would report the whole command failed. A single process returns at once."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    from contrahash.training.distributed import shutdown

    shutdown()
    if isinstance(code, str):  # what SystemExit("message") would have printed
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, imported on first use (main() sets threads first)
        from contrahash.cli.commands import app

        return app
    raise AttributeError(f"module 'contrahash.cli' has no attribute {name!r}")
