"""``/api/search``: query by uploaded image (POST, multipart) or by stored item id (GET)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from contrahash.serve.deps import (
    ServeState,
    get_state,
    item_fields,
    request_start,
    resolve_bits,
    resolve_k,
)
from contrahash.serve.models import ErrorResponse, QueryInfo, ResultItem, SearchResponse
from contrahash.serve.types import Collection, Hit

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
        out.append(ResultItem(**item_fields(request, item), distance=int(hit.distance)))
    return out


def _in_album(album: str | None, wanted: str) -> bool:
    """An item is in album ``wanted`` when its album is it or one of its sub-folders."""
    if album is None:
        return False
    return album == wanted or (wanted != "" and album.startswith(wanted + "/"))


async def _ranked(state: ServeState, fn, query, k: int, offset: int, bits: int,  # noqa: ANN001
                  album: str | None, max_distance: int | None) -> tuple[list[Hit], bool]:
    """Results ``offset .. offset + k`` of the ranking of ``query`` (``fn([query], depth,
    bits)``) after the album filter and the distance threshold, and whether more follow. The
    ranking is searched deeper (×4 at a time) until the page is full: a filter keeps the
    ranking's order, so a page is exact whatever the filter keeps."""
    need = offset + k + 1  # one more: is there a next page?
    n = len(state.collection)
    depth = min(n, need if album is None else max(4 * need, 256))
    while True:
        hits = (await _search(state, fn, [query], max(depth, 1), bits))[0]
        cut = False
        if max_distance is not None:
            kept = [h for h in hits if h.distance <= max_distance]
            cut = len(kept) < len(hits)
            hits = kept
        if album is not None:
            hits = [h for h in hits if _in_album(state.collection.item(int(h.id)).album, album)]
        if len(hits) >= need or cut or depth >= n:
            break
        depth = min(n, depth * 4)
    return hits[offset:offset + k], len(hits) > offset + k


def _check_page(state: ServeState, k: int, offset: int) -> None:
    if offset + k > state.settings.max_rank:
        raise HTTPException(422, f"offset + k must be at most {state.settings.max_rank}; got "
                            f"{offset + k}")


def _hex_codes(codes: dict[int, np.ndarray]) -> dict[str, str]:
    return {str(b): np.packbits(np.asarray(c) > 0).tobytes().hex() for b, c in codes.items()}


def _code_from_hex(state: ServeState, code: str, bits: int) -> np.ndarray:
    """±1 ``int8 [bits]`` from the hex of a packed code (as ``query.codes`` gives it)."""
    want = 2 * ((bits + 7) // 8)
    try:
        raw = bytes.fromhex(code)
    except ValueError:
        raise HTTPException(422, "code must be hexadecimal (as query.codes gives it)") from None
    if len(code) != want:
        raise HTTPException(422, f"code must have {want} hex digits for {bits} bits; got "
                            f"{len(code)}")
    unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:bits]
    return np.where(unpacked > 0, 1, -1).astype(np.int8)


Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="results to skip (paging)")]
Album = Annotated[str | None, Query(max_length=4096, description=(
    "only items of this album (and its sub-albums); an empty value: the top-level folder"))]
MaxDistance = Annotated[int | None, Query(ge=0, le=65535, description=(
    "only results within this Hamming distance"))]


@router.get("/search", response_model=SearchResponse, responses=_ERRORS,
            summary="Search by a stored item, or by a query code")
async def search_by_id(
    request: Request,
    id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="id of a stored item")
                  ] = None,
    code: Annotated[str | None, Query(max_length=16384, description=(
        "a query's packed code as hex (``query.codes`` of an image search), instead of id"))
                    ] = None,
    k: Annotated[int | None, Query(description="results wanted (default: server's)")] = None,
    bits: Annotated[int | None, Query(description="code length (default: the longest)")
                    ] = None,
    offset: Offset = 0,
    album: Album = None,
    max_distance: MaxDistance = None,
) -> SearchResponse:
    """The ``k`` items nearest to stored item ``id`` (itself first, at distance 0), or to a
    query ``code``, after ``offset``, optionally only in ``album`` and within
    ``max_distance``."""
    state = get_state(request)
    k_, bits_ = resolve_k(state, k), resolve_bits(state, bits)
    _check_page(state, k_, offset)
    if (id is None) == (code is None):
        raise HTTPException(422, "give exactly one of id or code")
    start = time.perf_counter()
    if id is not None:
        query_item = state.collection.item(id)  # UnknownItemError -> 404
        hits, more = await _ranked(state, _by_ids(state), id, k_, offset, bits_, album,
                                   max_distance)
        q = item_fields(request, query_item)
        query = QueryInfo(kind="id", id=q["id"], name=q["name"], labels=q["labels"],
                          album=q["album"], thumbnail_url=q["thumbnail_url"],
                          width=q["width"], height=q["height"])
    else:
        vector = _code_from_hex(state, code, bits_)
        hits, more = await _ranked(state, _by_codes(state), vector, k_, offset, bits_, album,
                                   max_distance)
        query = QueryInfo(kind="code", codes={str(bits_): code.lower()})
    search_ms = _ms(start)
    return SearchResponse(
        query=query, bits=bits_, k=k_, offset=offset, more=more, album=album,
        max_distance=max_distance, count=len(state.collection),
        results=_results(request, state, hits),
        search_ms=search_ms, server_ms=_ms(request_start(request)))


def _by_ids(state: ServeState):  # noqa: ANN202
    return state.collection.search_ids


def _by_codes(state: ServeState):  # noqa: ANN202
    def search(queries: list[np.ndarray], k: int, bits: int) -> list[list[Hit]]:
        return state.collection.search_codes(np.stack(queries), k, bits)

    return search


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
    concurrent uploads being encoded in one batch. ``offset``, ``album`` and ``max_distance``
    may be given as query parameters; the answer's ``query.codes`` lets ``GET /api/search?code=``
    fetch further pages without uploading again."""
    state = get_state(request)
    k_ = resolve_k(state, k if k is not None else _query_int(request, "k"))
    bits_ = resolve_bits(state, bits if bits is not None else _query_int(request, "bits"))
    offset = _query_int(request, "offset") or 0
    max_distance = _query_int(request, "max_distance")
    album = request.query_params.get("album")
    if offset < 0 or (max_distance is not None and max_distance < 0):
        raise HTTPException(422, "offset and max_distance must not be negative")
    _check_page(state, k_, offset)
    form = await request.form()  # already parsed for the parameters above: no second read
    files = [name for name, value in form.multi_items() if not isinstance(value, str)]
    if len(files) > 1:
        raise HTTPException(422, f"one image per upload; this one holds {len(files)} files "
                            f"({', '.join(repr(f) for f in files[:5])})")
    limit = state.settings.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"image over the upload limit of {limit} bytes")
    if not data:
        raise HTTPException(422, "empty upload: the 'image' file has no bytes")

    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    prepared, (width, height) = await loop.run_in_executor(state.decode_pool, decode_query,
                                                           state.collection, data)
    decode_ms = _ms(start)
    start = time.perf_counter()
    encoded = await state.batcher.submit(prepared)
    encode_ms = _ms(start)
    codes = encoded.value[bits_]
    start = time.perf_counter()
    hits, more = await _ranked(state, _by_codes(state), codes, k_, offset, bits_, album,
                               max_distance)
    search_ms = _ms(start)
    return SearchResponse(
        query=QueryInfo(kind="image", width=width, height=height,
                        codes=_hex_codes(encoded.value)),
        bits=bits_, k=k_, offset=offset, more=more, album=album, max_distance=max_distance,
        count=len(state.collection), results=_results(request, state, hits),
        search_ms=search_ms, decode_ms=decode_ms, encode_ms=encode_ms,
        encode_batch=encoded.batch_size, server_ms=_ms(request_start(request)))


def decode_query(collection: Collection, data: bytes) -> tuple[Any, tuple[int, int]]:
    """An upload → (the encoder's input, the photo's displayed width and height): all the
    per-image work before the batched forward, in one call on a decoding thread (while the
    encoder thread runs the batch before)."""
    pixels = collection.decode_image(data)
    size = displayed_size(data, pixels.shape)
    return collection.prepare_query(pixels), size


def displayed_size(data: bytes, decoded_shape: tuple[int, ...]) -> tuple[int, int]:
    """The uploaded image's own size as displayed (EXIF orientation applied): the collection
    decodes to the model's input size, which says nothing about the photo. Falls back to the
    decoded size when the header cannot be read."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - the decode succeeded: its size is an honest fallback
        return int(decoded_shape[1]), int(decoded_shape[0])
    if orientation in (5, 6, 7, 8):  # rotated by 90° or 270°
        width, height = height, width
    return int(width), int(height)


def _query_int(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(422, f"query parameter {name!r} must be an integer; got {raw!r}"
                            ) from None
