"""The ``contrahash`` command line: thin wrappers that parse, load a config and call the library.

Commands live in small ``cli_*.py`` modules, each exposing ``register(app)``; this module only
assembles them, so adding a command never touches another command's file.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="contrahash",
    help="Unsupervised deep hashing for image retrieval: train, encode, index, search, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Each module registers its commands on `app`; missing optional modules are skipped so a
# partial install still gives a working CLI.
_COMMAND_MODULES = (
    "contrahash.cli_index",  # index build, search, evaluate
    "contrahash.cli_data",  # data split, data info
    "contrahash.cli_train",  # train, encode, demo
    "contrahash.cli_bench",  # benchmark
)

for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # only tolerate the module itself being absent
        if exc.name != _name:
            raise
        continue
    _module.register(app)


def main() -> None:
    """Console-script entry point."""
    from contrahash.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # before any tensor work: see contrahash.runtime
    app()


if __name__ == "__main__":
    main()
