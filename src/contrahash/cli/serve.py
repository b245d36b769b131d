"""``contrahash serve DIR``: run the search service on a collection directory with uvicorn."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from contrahash.cli.common import fail


def serve_command(
    directory: Annotated[Path, typer.Argument(help="collection directory "
                                                   "(from `contrahash index build`)")],
    host: Annotated[str, typer.Option(help="address to bind; anything but loopback exposes "
                                           "the service to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=0, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option(
        envvar="CONTRAHASH_TOKEN", show_default=False,
        help="require 'Authorization: Bearer TOKEN' on every /api route "
             "(default: env CONTRAHASH_TOKEN; none: open)")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted upload, MiB", min=0.001)
                             ] = 10.0,
    max_k: Annotated[int, typer.Option(help="largest k a request may ask for", min=1)] = 1000,
    batch_window_ms: Annotated[float, typer.Option(
        help="how long an image query waits for others to share its encoder batch", min=0.0)
                               ] = 3.0,
    batch_size: Annotated[int, typer.Option(help="most images encoded in one batch", min=1)
                          ] = 16,
    reload_interval: Annotated[float, typer.Option(
        help="seconds between automatic re-reads of the directory (0: only POST /api/reload)",
        min=0.0)] = 0.0,
    warm_up: Annotated[bool, typer.Option(
        help="decode and encode one image before serving, so the first query is not slow")
                       ] = True,
    header_timeout: Annotated[float, typer.Option(
        help="seconds a connection may take to send a request's line and headers before it "
             "is closed", min=0.1)] = 10.0,
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve a collection: web page at /, JSON API under /api, docs at /docs."""
    import torch
    import uvicorn

    from contrahash.retrieval.collection import open_collection
    from contrahash.runtime import use_threads_in_this_thread
    from contrahash.serve.app import create_app
    from contrahash.serve.connections import head_timeout_protocol
    from contrahash.serve.settings import MIB, ServeSettings

    if not directory.is_dir():
        fail(f"DIRECTORY {directory} is not a directory (a collection made by `contrahash "
             "index build RUN --data SOURCE --out DIR`)")
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * MIB), max_k=max_k,
                             default_k=min(24, max_k), token=token or None,
                             batch_window_ms=batch_window_ms, batch_max_size=batch_size,
                             reload_interval_s=reload_interval,
                             encode_threads=torch.get_num_threads(), warm_up=warm_up,
                             header_timeout_s=header_timeout)
    # the main thread (loading, searches by id on the event loop) stays off OpenMP teams: the
    # encoder thread alone runs on all the threads (see use_threads_in_this_thread)
    use_threads_in_this_thread(1)
    collection = open_collection(directory)

    log = logging.getLogger("contrahash.serve")
    if not _is_loopback(host) and settings.token is None:
        typer.echo(f"warning: serving on {host} without a token: anyone who can reach it can "
                   "query it (use --token or CONTRAHASH_TOKEN)", err=True)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {len(collection)} items ({directory}) at http://{shown}:{port}/"
               + (" (token required for /api)" if settings.token else ""), err=True)
    log.debug("settings: %s", settings)
    try:
        uvicorn.run(create_app(collection, settings), host=host, port=port,
                    log_level=log_level, access_log=access_log, workers=1,
                    http=head_timeout_protocol(settings.header_timeout_s))
    finally:
        collection.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
