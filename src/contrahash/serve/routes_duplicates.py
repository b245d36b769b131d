"""``/api/duplicates``: groups of near-duplicate items, one page at a time.

The groups of one (code, radius) are computed once per collection snapshot in a worker thread
(:meth:`ServeState.derived`) and shared by every page and every client until the next reload:
at 100,000 items the exact radius join takes seconds, a page then takes milliseconds.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from contrahash.retrieval.duplicates import DEFAULT_RADIUS, PERCEPTUAL_BITS, find_duplicates
from contrahash.serve.deps import get_state, item_fields
from contrahash.serve.models import DuplicateMemberResponse, DuplicatesResponse, ErrorResponse
from contrahash.serve.types import UnknownItemError

router = APIRouter()

_ERRORS = {401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


@router.get("/duplicates", response_model=DuplicatesResponse, responses=_ERRORS,
            summary="Groups of near-duplicate items")
async def duplicates(
    request: Request,
    bits: Annotated[int | None, Query(description=(
        "omit for the perceptual codes (duplicates); a code length of the collection groups "
        "by its semantic codes instead (similar photos)"))] = None,
    radius: Annotated[int | None, Query(ge=0, le=65535, description=(
        f"largest Hamming distance within a group (default {DEFAULT_RADIUS} on the "
        "perceptual codes)"))] = None,
    page: Annotated[int, Query(ge=1, le=10**9, description="page number, from 1")] = 1,
    per_page: Annotated[int | None, Query(ge=1, le=200, description="groups per page")
                        ] = None,
) -> DuplicatesResponse:
    """Connected components of "within ``radius``" (largest first); each member with its
    distance to the group's first member and whether its file is a byte-identical copy."""
    start = time.perf_counter()
    state = get_state(request)
    collection = state.collection
    semantic = bits is not None and (bits != PERCEPTUAL_BITS or bits in collection.bits)
    if bits is not None and semantic and bits not in collection.bits:
        raise HTTPException(422, f"bits must be omitted (perceptual codes) or one of "
                            f"{list(collection.bits)}; got {bits}")
    r = DEFAULT_RADIUS if radius is None else radius
    code_bits = bits if semantic else PERCEPTUAL_BITS
    if r > code_bits:
        raise HTTPException(422, f"radius must be at most the code length {code_bits}; got {r}")

    def compute():  # noqa: ANN202
        return find_duplicates(collection, r, bits if semantic else None)[1]

    try:
        groups = await state.derived(("duplicates", code_bits, semantic, r), compute)
    except (AttributeError, NotImplementedError):
        raise HTTPException(422, "this collection has no perceptual codes (built before "
                            "duplicates were supported): run `contrahash index sync` on it"
                            ) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    size = per_page or state.settings.duplicates_per_page
    pages = max(1, -(-len(groups) // size))
    chosen = groups[(page - 1) * size:page * size]
    out = []
    for group in chosen:
        members = []
        for m in group:
            try:
                item = collection.item(m.id)
            except UnknownItemError:  # removed since the groups were computed (a reload)
                continue
            members.append(DuplicateMemberResponse(**item_fields(request, item),
                                                   distance=m.distance, exact=m.exact))
        out.append(members)
    return DuplicatesResponse(
        bits=code_bits, radius=r, codes="semantic" if semantic else "perceptual", page=page,
        per_page=size, pages=pages, total_groups=len(groups),
        total_items=sum(len(g) for g in groups), groups=out,
        server_ms=round((time.perf_counter() - start) * 1000.0, 3))
