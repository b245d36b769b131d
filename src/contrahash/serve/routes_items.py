"""``/api/items``: one stored item, its thumbnail, a random item. Items are addressed by id
only; no parameter ever names a file."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from contrahash.serve.deps import get_state, item_response
from contrahash.serve.models import ErrorResponse, ItemResponse

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


@router.get("/random", response_model=ItemResponse, responses=_ERRORS, summary="A random item")
async def random_item(request: Request) -> ItemResponse:
    """A random stored item (the page searches by it)."""
    state = get_state(request)
    return item_response(request, state.collection.item(state.collection.random_id()))


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
