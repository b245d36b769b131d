"""``/api/items``: one stored item, its thumbnail, a random item. Items are addressed by id
only; no parameter ever names a file."""

from __future__ import annotations

import hashlib
import mimetypes
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import FileResponse

from contrahash.serve.deps import get_state, item_response
from contrahash.serve.models import AlbumInfo, AlbumsResponse, ErrorResponse, ItemResponse
from contrahash.serve.types import UnknownItemError

router = APIRouter()

_ERRORS = {401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
           422: {"model": ErrorResponse}}
ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="id of a stored item")]


@router.get("/items/{item_id}", response_model=ItemResponse, responses=_ERRORS,
            summary="One stored item")
async def get_item(request: Request, item_id: ItemId) -> ItemResponse:
    """Name, labels and thumbnail URL of item ``item_id``."""
    return item_response(request, get_state(request).collection.item(item_id))


@router.get("/items/{item_id}/thumbnail", response_class=Response, responses={
    **_ERRORS, 200: {"content": {"image/jpeg": {}}, "description": "JPEG thumbnail"},
    304: {"description": "unchanged (If-None-Match)"}}, summary="An item's thumbnail")
async def get_thumbnail(request: Request, item_id: ItemId) -> Response:
    """The item's JPEG thumbnail; cacheable (``Cache-Control`` + ``ETag``)."""
    state = get_state(request)
    data = state.collection.thumbnail(item_id)
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    scope = "private" if state.settings.token is not None else "public"
    headers = {"ETag": etag, "Cache-Control": f"{scope}, max-age=3600"}
    if etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type="image/jpeg", headers=headers)


@router.get("/items/{item_id}/original", response_class=FileResponse, responses={
    **_ERRORS, 200: {"content": {"image/*": {}}, "description": "the original file"}},
    summary="An item's original file")
async def get_original(request: Request, item_id: ItemId) -> FileResponse:
    """The file the item was indexed from, as it is on the server's disk now. Addressed by id
    only: the collection maps the id to its path; nothing in the request names a file."""
    state = get_state(request)
    item = state.collection.item(item_id)  # UnknownItemError -> 404, removed ones too
    try:
        path = state.collection.original_path(item_id)
    except (AttributeError, NotImplementedError):
        raise HTTPException(404, "this collection does not keep its items' original files"
                            ) from None
    except (UnknownItemError, FileNotFoundError):  # removed meanwhile, or no file here
        path = None
    if path is None or not path.is_file():
        raise HTTPException(404, f"the original file of item {item_id} is no longer there "
                            "(moved or deleted since it was indexed)")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    scope = "private" if state.settings.token is not None else "public"
    return FileResponse(path, media_type=media_type, filename=item.name or path.name,
                        content_disposition_type="inline",
                        headers={"Cache-Control": f"{scope}, max-age=60",
                                 "X-Content-Type-Options": "nosniff"})


@router.get("/albums", response_model=AlbumsResponse, responses=_ERRORS,
            summary="The albums of the collection")
async def albums(request: Request) -> AlbumsResponse:
    """Every album of the collection's items with its item count (computed once per
    snapshot), for the page's album filter."""
    state = get_state(request)

    def count() -> list[tuple[str, int]]:
        collection = state.collection
        found = Counter(collection.item(int(i)).album for i in collection.live_ids())
        return sorted((a, c) for a, c in found.items() if a is not None)

    try:
        rows = await state.derived("albums", count)
    except (AttributeError, NotImplementedError):  # a collection without album records
        rows = []
    return AlbumsResponse(albums=[AlbumInfo(album=a, count=c) for a, c in rows])


@router.get("/random", response_model=ItemResponse, responses=_ERRORS, summary="A random item")
async def random_item(request: Request) -> ItemResponse:
    """A random stored item (the page searches by it)."""
    state = get_state(request)
    return item_response(request, state.collection.item(state.collection.random_id()))


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
