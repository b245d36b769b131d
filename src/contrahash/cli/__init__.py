"""The ``contrahash`` command line: thin commands that parse, load a config and call the library.

Each command lives in a small module of this package (train, index, data, bench, serve) and
is registered here, in one table, under :func:`~contrahash.cli.common.guarded`: a user's
mistake ends with one line ``error: …``, never a traceback (``--debug`` shows it). Progress of
long phases is drawn here (:mod:`contrahash.cli.progress`), never in the library.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: process settings first (before torch and faiss load their
    OpenMP runtimes: see :mod:`contrahash.runtime`), then the command."""
    from contrahash.runtime import apply_thread_policy, tune_cpu_allocator

    apply_thread_policy()
    tune_cpu_allocator()  # before any tensor work
    from contrahash.cli.commands import app

    app()


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, imported on first use (main() sets threads first)
        from contrahash.cli.commands import app

        return app
    raise AttributeError(f"module 'contrahash.cli' has no attribute {name!r}")
