"""``create_app(collection, settings)``: the search service as a FastAPI application.

Routes: ``/`` (the page), ``/static/*`` (its assets), ``/healthz`` (open), ``/api/*`` (token-
protected by :class:`TokenMiddleware` when a token is set, before the body is read), ``/docs`` (Swagger UI, served from the ``swagger_ui_bundle``
package when installed so it works offline) and ``/openapi.json``.

Error mapping: :class:`UnknownItemError` → 404 naming the id, :class:`InvalidImageError` → 422,
parameter errors → 422, a body over the limit → 413, anything else → 500 (logged with its
traceback: a bare ``KeyError`` is a bug, not an unknown item); every error body is
``{"detail": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from contrahash.runtime import use_threads_in_this_thread
from contrahash.serve import routes_duplicates, routes_items, routes_meta, routes_search
from contrahash.serve.batching import MicroBatcher
from contrahash.serve.deps import ServeState
from contrahash.serve.middleware import LimitsMiddleware, TokenMiddleware
from contrahash.serve.settings import ServeSettings
from contrahash.serve.types import Collection, InvalidImageError, UnknownItemError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def create_app(collection: Collection, settings: ServeSettings | None = None) -> FastAPI:
    """The service for ``collection`` (see the module docstring for the routes)."""
    settings = settings or ServeSettings()
    swagger_dir = swagger_assets_dir()

    def encode_batch(prepared: list[Any]) -> list[dict[int, np.ndarray]]:
        codes = collection.encode_prepared(prepared)
        return [{int(b): np.asarray(c[i]) for b, c in codes.items()} for i in range(len(prepared))]

    state = ServeState(
        collection=collection, settings=settings,
        batcher=MicroBatcher(encode_batch, max_batch=settings.batch_max_size,
                             window_s=settings.batch_window_ms / 1000.0, name="encode",
                             initializer=_threads_initializer(settings.encode_threads)),
        decode_pool=_decode_pool(settings))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = None
        if settings.reload_interval_s > 0:
            task = asyncio.create_task(_auto_reload(state, settings.reload_interval_s))
        if settings.warm_up:
            await _warm_up(state)
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            await state.batcher.aclose()  # restarts by itself if the app is started again
            old_pool, state.decode_pool = state.decode_pool, _decode_pool(settings)
            old_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="contrahash search",
        summary="Hamming search over a contrahash collection: by uploaded image or stored item.",
        version=_version(), lifespan=lifespan, docs_url=None if swagger_dir else "/docs",
        redoc_url=None)
    app.state.serve = state

    app.include_router(routes_meta.health_router)
    app.include_router(routes_search.router, prefix="/api", tags=["search"])
    app.include_router(routes_items.router, prefix="/api", tags=["items"])
    app.include_router(routes_meta.router, prefix="/api", tags=["collection"])
    app.include_router(routes_duplicates.router, prefix="/api", tags=["duplicates"])

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:  # browsers ask for it whatever the page links
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if swagger_dir is not None:
        _offline_docs(app, swagger_dir)
    _error_handlers(app)
    _document_bearer_auth(app)
    app.add_middleware(LimitsMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.token is not None:  # added last = outermost: checked before anything else
        app.add_middleware(TokenMiddleware, token=settings.token)
    return app


# ----------------------------------------------------------------------------- errors


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownItemError)
    async def unknown_item(_: Request, exc: UnknownItemError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse({"detail": "internal server error (logged on the server)"},
                            status_code=500)

    @app.exception_handler(InvalidImageError)
    async def invalid_image(_: Request, exc: InvalidImageError) -> JSONResponse:
        return JSONResponse({"detail": f"not a usable image: {exc}"}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": detail or "invalid request", "errors": errors},
                            status_code=422)


# ----------------------------------------------------------------------------- docs


def swagger_assets_dir() -> Path | None:
    """Swagger UI ≥ 5 (needed for OpenAPI 3.1) from the ``swagger_ui_bundle`` package
    (``swagger-ui-bundle-v2`` on PyPI), or ``None`` when not installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(str(swagger_ui_path))
    match = re.search(r"(\d+)\.\d+", path.name)
    if not (path / "swagger-ui-bundle.js").is_file() or not match or int(match.group(1)) < 5:
        return None
    return path


def _offline_docs(app: FastAPI, assets: Path) -> None:
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png")


def _document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer token in the OpenAPI schema (the check itself is TokenMiddleware),
    so that /docs shows an "Authorize" button."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer",
                "description": "needed when the server runs with --token / CONTRAHASH_TOKEN"}
            for path, operations in schema.get("paths", {}).items():
                if path.startswith("/api/"):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- helpers


def _threads_initializer(threads: int | None) -> Callable[[], None] | None:
    """What a thread of the service runs first when ``encode_threads`` is set (see
    :class:`ServeSettings`): the team size for its OpenMP regions."""
    if threads is None:
        return None
    return functools.partial(use_threads_in_this_thread, threads)


def _decode_pool(settings: ServeSettings) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode",
                              initializer=_threads_initializer(
                                  None if settings.encode_threads is None else 1))


def _warm_up_jpeg() -> bytes:
    """A small JPEG made here (a gradient), for :func:`_warm_up`."""
    import io

    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.uint8)
    pixels = np.stack([np.add.outer(ramp, ramp) // 2] * 3, axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


async def _warm_up(state: ServeState) -> None:
    """Decode and encode one image before the first request: the first decode imports and
    initialises the decoder (1.4 s measured on the 2-core host) and the first forward sets up
    the encoder thread and its kernels, which would otherwise land on the first user."""
    start = time.perf_counter()
    try:
        loop = asyncio.get_running_loop()
        prepared, _ = await loop.run_in_executor(state.decode_pool, routes_search.decode_query,
                                                 state.collection, _warm_up_jpeg())
        await state.batcher.submit(prepared)
    except Exception:  # noqa: BLE001 - a failed warm-up costs only the first request's time
        log.warning("warm-up query failed; serving anyway", exc_info=True)
        return
    log.info("warm-up query decoded and encoded in %.0f ms", 1000 * (time.perf_counter() - start))


async def _auto_reload(state: ServeState, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            if await run_in_threadpool(state.reload):
                log.info("collection reloaded: %d items", len(state.collection))
        except Exception:  # noqa: BLE001 - keep serving the old data
            log.exception("automatic reload failed; still serving the previous data")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("contrahash")
    except Exception:  # noqa: BLE001 - not installed (source tree)
        return "0"
