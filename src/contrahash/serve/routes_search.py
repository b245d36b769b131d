"""``/api/search``: query by uploaded image (POST, multipart) or by stored item id (GET)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from contrahash.serve.deps import (
    ServeState,
    get_state,
    item_response,
    request_start,
    resolve_bits,
    resolve_k,
    thumbnail_url,
)
from contrahash.serve.models import ErrorResponse, QueryInfo, ResultItem, SearchResponse
from contrahash.serve.types import Hit

router = APIRouter()

_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}
MAX_ID = 2**63 - 1


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


async def _search(state: ServeState, fn, *args) -> list[list[Hit]]:  # noqa: ANN001
    if state.settings.search_in_thread:
        return await run_in_threadpool(fn, *args)
    return fn(*args)  # documented as fast (< 1 ms for 60k codes): a thread hop costs more


def _results(request: Request, state: ServeState, hits: list[Hit]) -> list[ResultItem]:
    out = []
    for hit in hits:
        item = state.collection.item(int(hit.id))
        out.append(ResultItem(id=int(hit.id), name=str(item.name),
                              labels=[str(x) for x in item.labels],
                              thumbnail_url=thumbnail_url(request, int(hit.id)),
                              distance=int(hit.distance)))
    return out


@router.get("/search", response_model=SearchResponse, responses=_ERRORS,
            summary="Search by a stored item")
async def search_by_id(
    request: Request,
    id: Annotated[int, Query(ge=0, le=MAX_ID, description="id of a stored item")],
    k: Annotated[int | None, Query(description="results wanted (default: server's)")] = None,
    bits: Annotated[int | None, Query(description="code length (default: the longest)")
                    ] = None,
) -> SearchResponse:
    """The ``k`` items nearest to stored item ``id`` (itself first, at distance 0)."""
    state = get_state(request)
    k_, bits_ = resolve_k(state, k), resolve_bits(state, bits)
    query = state.collection.item(id)  # KeyError -> 404
    start = time.perf_counter()
    hits = (await _search(state, state.collection.search_ids, [id], k_, bits_))[0]
    search_ms = _ms(start)
    q = item_response(request, query)
    return SearchResponse(
        query=QueryInfo(kind="id", id=q.id, name=q.name, labels=q.labels,
                        thumbnail_url=q.thumbnail_url),
        bits=bits_, k=k_, count=len(state.collection),
        results=_results(request, state, hits),
        search_ms=search_ms, server_ms=_ms(request_start(request)))


@router.post("/search", response_model=SearchResponse, responses=_ERRORS,
             summary="Search by an uploaded image")
async def search_by_image(
    request: Request,
    image: Annotated[UploadFile, File(description="an image file (JPEG, PNG, ...)")],
    k: Annotated[int | None, Form(description="results wanted (or as a query parameter)")
                 ] = None,
    bits: Annotated[int | None, Form(description="code length (or as a query parameter)")
                    ] = None,
) -> SearchResponse:
    """The ``k`` items nearest to an uploaded image: decoded and encoded in worker threads,
    concurrent uploads being encoded in one batch."""
    state = get_state(request)
    k_ = resolve_k(state, k if k is not None else _query_int(request, "k"))
    bits_ = resolve_bits(state, bits if bits is not None else _query_int(request, "bits"))
    limit = state.settings.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"image over the upload limit of {limit} bytes")
    if not data:
        raise HTTPException(422, "empty upload: the 'image' file has no bytes")

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    pixels: np.ndarray = await loop.run_in_executor(state.decode_pool,
                                                    state.collection.decode_image, data)
    decode_ms = _ms(start)
    start = time.perf_counter()
    encoded = await state.batcher.submit(pixels)
    encode_ms = _ms(start)
    codes = encoded.value[bits_]
    start = time.perf_counter()
    hits = (await _search(state, state.collection.search_codes, codes[None, :], k_,
                          bits_))[0]
    search_ms = _ms(start)
    return SearchResponse(
        query=QueryInfo(kind="image", width=int(pixels.shape[1]), height=int(pixels.shape[0])),
        bits=bits_, k=k_, count=len(state.collection),
        results=_results(request, state, hits),
        search_ms=search_ms, decode_ms=decode_ms, encode_ms=encode_ms,
        encode_batch=encoded.batch_size, server_ms=_ms(request_start(request)))


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(422, f"query parameter {name!r} must be an integer; got {raw!r}"
                            ) from None
