"""``/healthz`` (open), ``/api/info`` and ``/api/reload``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool

from contrahash.serve.deps import get_state
from contrahash.serve.models import ErrorResponse, HealthResponse, InfoResponse, ReloadResponse

health_router = APIRouter()
router = APIRouter()


@health_router.head("/healthz", include_in_schema=False)
@health_router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz(request: Request) -> HealthResponse:
    """``ok`` with the item count and code lengths; never needs the token (for load
    balancers and start-up scripts)."""
    state = get_state(request)
    return HealthResponse(status="ok", count=len(state.collection),
                          bits=[int(b) for b in state.collection.bits])


@router.get("/info", response_model=InfoResponse, responses={401: {"model": ErrorResponse}},
            summary="Collection and limits")
async def info(request: Request) -> InfoResponse:
    """The collection's manifest summary and this service's limits."""
    state = get_state(request)
    c, s = state.collection, state.settings
    return InfoResponse(count=len(c), bits=[int(b) for b in c.bits],
                        default_bits=int(c.default_bits), default_k=s.default_k, max_k=s.max_k,
                        max_upload_bytes=s.max_upload_bytes, token_required=s.token is not None,
                        collection=jsonable_encoder(c.info()))


@router.post("/reload", response_model=ReloadResponse, responses={401: {"model": ErrorResponse}},
             summary="Re-read the collection directory")
async def reload(request: Request) -> ReloadResponse:
    """Re-read the collection (after ``contrahash index add``) without a restart. Requests
    already running finish on the old data."""
    state = get_state(request)
    changed = await run_in_threadpool(state.reload)
    return ReloadResponse(changed=changed, count=len(state.collection),
                          bits=[int(b) for b in state.collection.bits])
