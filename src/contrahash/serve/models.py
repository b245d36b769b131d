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
    labels: list[str] = Field(description="class names of a labelled dataset (often none)")
    album: str | None = Field(None, description="folder relative to the source's root "
                              "(\"\" at the top); null for sources that are not folders")
    width: int | None = Field(None, description="the image's width as displayed, if known")
    height: int | None = Field(None, description="the image's height as displayed, if known")
    thumbnail_url: str
    original_url: str = Field(description="the original file, served by id")


class ResultItem(ItemResponse):
    """One search result."""

    distance: int = Field(description="Hamming distance to the query at the chosen code length")


class QueryInfo(BaseModel):
    """What was searched for."""

    kind: Literal["image", "id", "code"]
    id: int | None = None
    name: str | None = None
    labels: list[str] = Field(default_factory=list)
    thumbnail_url: str | None = None
    album: str | None = None
    width: int | None = Field(None, description="the query image's own size, as displayed")
    height: int | None = None
    codes: dict[str, str] = Field(default_factory=dict, description=(
        "the query's packed code per code length, as hex: GET /api/search?code=… pages "
        "further without uploading or encoding again"))


class SearchResponse(BaseModel):
    """The ``k`` nearest items after ``offset``, ranked by (distance, id), with server-side
    timings."""

    query: QueryInfo
    bits: int
    k: int
    offset: int = 0
    more: bool = Field(False, description="whether results exist past this page (with the "
                       "same filters)")
    album: str | None = Field(None, description="the album filter in effect")
    max_distance: int | None = Field(None, description="the distance threshold in effect")
    count: int = Field(description="items in the collection")
    results: list[ResultItem]
    search_ms: float = Field(description="Hamming search only")
    decode_ms: float | None = Field(
        None, description="image decoding and preparation for the encoder (image queries)")
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


class DuplicateMemberResponse(ItemResponse):
    """One item of a duplicate group."""

    distance: int = Field(description="Hamming distance to the group's first item")
    exact: bool = Field(description="its file is byte-identical to another member's")


class DuplicatesResponse(BaseModel):
    """One page of duplicate groups, largest first."""

    bits: int
    radius: int
    codes: Literal["perceptual", "semantic"]
    page: int
    per_page: int
    pages: int
    total_groups: int
    total_items: int = Field(description="items in all groups")
    groups: list[list[DuplicateMemberResponse]]
    server_ms: float


class AlbumInfo(BaseModel):
    """An album and how many items it holds directly."""

    album: str
    count: int


class AlbumsResponse(BaseModel):
    """The albums of the collection's items (empty for sources without folders)."""

    albums: list[AlbumInfo]
