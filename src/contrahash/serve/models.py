"""Pydantic models of the JSON API's responses (they also document it in ``/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every 4xx answer: a one-line message (validation errors add the per-field list)."""

    detail: str
    errors: list[dict[str, Any]] | None = None


class ItemResponse(BaseModel):
    """One indexed image (its server-side path is never sent)."""

    id: int
    name: str
    labels: list[str]
    thumbnail_url: str


class ResultItem(ItemResponse):
    """One search result."""

    distance: int = Field(description="Hamming distance to the query at the chosen code length")


class QueryInfo(BaseModel):
    """What was searched for."""

    kind: Literal["image", "id"]
    id: int | None = None
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None


class SearchResponse(BaseModel):
    """The ``k`` nearest items, ranked by (distance, id), with server-side timings."""

    query: QueryInfo
    bits: int
    k: int
    count: int = Field(description="items in the collection")
    results: list[ResultItem]
    search_ms: float = Field(description="Hamming search only")
    decode_ms: float | None = Field(None, description="image decoding (image queries)")
    encode_ms: float | None = Field(
        None, description="waiting for and running the batched encoder (image queries)")
    encode_batch: int | None = Field(None, description="images encoded in the same batch")
    server_ms: float = Field(description="from the first byte of the request to the answer")


class HealthResponse(BaseModel):
    """Liveness plus the collection's size."""

    status: Literal["ok"]
    count: int
    bits: list[int]


class InfoResponse(BaseModel):
    """The collection's manifest summary and the service's limits."""

    count: int
    bits: list[int]
    default_bits: int
    default_k: int
    max_k: int
    max_upload_bytes: int
    token_required: bool
    collection: dict[str, Any]


class ReloadResponse(BaseModel):
    """Result of re-reading the collection directory."""

    changed: bool
    count: int
    bits: list[int]
