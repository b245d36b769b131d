"""The ``contrahash`` typer application: every command, registered in one table."""

from __future__ import annotations

from typing import Annotated

import typer

from contrahash.cli import bench, data, duplicates, index, serve, train
from contrahash.cli.common import guarded, state

__all__ = ["app"]

app = typer.Typer(
    name="contrahash",
    help="Unsupervised deep hashing for image retrieval: train, encode, index, search, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="show the full traceback of an error (also CONTRAHASH_DEBUG=1)")] = False,
    threads: Annotated[str | None, typer.Option(
        "--threads", help="CPU threads for torch and faiss (a number, or auto; also "
        "CONTRAHASH_THREADS); results at one seed depend on it, runs record it")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="CPU inference engine of frozen backbone forwards: auto, torch, "
        "openvino or onnxruntime (also CONTRAHASH_ENGINE; docs/engine.md)")] = None,
) -> None:
    """Unsupervised deep hashing for image retrieval: train, encode, index, search, evaluate."""
    from contrahash.runtime import apply_thread_policy

    if debug:
        state["debug"] = True
    if threads is not None:
        apply_thread_policy(threads)
    if engine is not None:
        from contrahash.models.engine import set_default_engine

        try:
            set_default_engine(engine)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--engine") from None


index_app = typer.Typer(help="Build, extend, follow and inspect indexes: a collection directory "
                         "from a folder of images (its model learnt from them) or from a "
                         "trained run and images, or an index file from codes.",
                         no_args_is_help=True)

COMMANDS = [
    (app, "train", train.train_command),
    (app, "encode", train.encode_command),
    (app, "demo", train.demo_command),
    (index_app, "build", index.build_command),
    (index_app, "add", index.add_command),
    (index_app, "info", index.info_command),
    (index_app, "sync", index.sync_command),
    (index_app, "remove", index.remove_command),
    (app, "search", index.search_command),
    (app, "evaluate", index.evaluate_command),
    (data.data_app, "info", data.info),
    (data.data_app, "split", data.split),
    (app, "benchmark", bench.benchmark_command),
    (app, "serve", serve.serve_command),
    (app, "duplicates", duplicates.duplicates_command),
]
for _group, _name, _function in COMMANDS:
    _group.command(_name)(guarded(_function))
app.add_typer(index_app, name="index")
app.add_typer(data.data_app, name="data")
