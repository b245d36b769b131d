"""The interface the search service programs against: a *collection* of indexed images.

:class:`Collection` is a structural :class:`typing.Protocol`: the real implementation
(``contrahash.retrieval.collection``) and the test fake both satisfy it without inheriting from it.
:class:`Hit`, :class:`Item`, :class:`InvalidImageError` and :class:`UnknownItemError` live here so that every
implementation imports them from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Collection", "Hit", "InvalidImageError", "Item", "UnknownItemError"]


class InvalidImageError(ValueError):
    """Bytes that are not a usable image (not an image, truncated, corrupt, too many pixels).

    The message says what is wrong; the service returns it to the client with status 422.
    """


class UnknownItemError(KeyError):
    """No item with this id in the collection (never stored, or removed); the service answers
    404 naming the id.

    The service maps this exception only: any other ``KeyError`` is a bug and surfaces as a
    500 (logged), never as "unknown item". It subclasses ``KeyError`` so that callers written
    against "``KeyError`` when unknown" keep working.
    """

    def __init__(self, item_id: Any, detail: str | None = None) -> None:
        self.item_id = item_id
        super().__init__(detail or f"unknown item id {item_id}: not in the collection "
                                   "(never stored, or removed)")

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0])


class Hit(NamedTuple):
    """One search result: an item id and its Hamming distance to the query."""

    id: int
    distance: int


@dataclass(frozen=True)
class Item:
    """One indexed image.

    ``name`` is for display only (a file name or ``"cifar10[123]"``); ``path`` is where the image
    came from on the indexing machine and is never sent to clients; ``labels`` are class names
    of a labelled dataset (possibly none). ``album`` is the item's folder relative to its
    source's root (``""`` at the top level, ``None`` for sources that are not folders);
    ``sha256`` is the hex hash of the file's bytes (exact duplicates share it); ``width`` and
    ``height`` are the image's size as displayed (EXIF orientation applied), when known.
    """

    id: int
    name: str
    path: str | None = None
    labels: list[str] = field(default_factory=list)
    album: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


@runtime_checkable
class Collection(Protocol):
    """A self-contained, searchable set of images with binary codes at one or more lengths.

    Thread-safety contract (the service relies on it): every method may be called from any
    thread, concurrently with the others, including :meth:`reload`. :meth:`reload` must swap
    its data as one reference assignment so that a call already running finishes on the old
    data and later calls see the new data, never a mix.
    """

    #: code lengths available, ascending
    bits: list[int]
    #: the code length used when a request names none (the longest)
    default_bits: int

    def __len__(self) -> int:
        """Number of items."""
        ...

    def item(self, item_id: int) -> Item:
        """The item with this id; :class:`UnknownItemError` when unknown."""
        ...

    def thumbnail(self, item_id: int) -> bytes:
        """JPEG bytes of the item's thumbnail; :class:`UnknownItemError` when unknown."""
        ...

    def decode_image(self, data: bytes) -> np.ndarray:
        """Decode an uploaded file to ``uint8 [H, W, 3]``.

        Raises :class:`InvalidImageError` for anything that is not a usable image, including
        decompression bombs (the collection sets the pixel limit).
        """
        ...

    def encode(self, images: list[np.ndarray]) -> dict[int, np.ndarray]:
        """±1 ``int8 [n, bits]`` codes of ``images`` for every code length (CPU-heavy)."""
        ...

    def prepare_query(self, pixels: np.ndarray) -> Any:
        """What :meth:`encode_prepared` takes for one decoded image (for a model: the resized,
        normalised input). The service calls it on its decoding threads, so that the encoder
        thread runs only the batched forward."""
        ...

    def encode_prepared(self, prepared: list[Any]) -> dict[int, np.ndarray]:
        """Like :meth:`encode`, of :meth:`prepare_query` results (one batch): the same codes
        as :meth:`encode` of the decoded images."""
        ...

    def search_codes(self, codes: np.ndarray, k: int, bits: int) -> list[list[Hit]]:
        """The ``k`` nearest items of each ±1 query code, ranked by ``(distance, id)``."""
        ...

    def search_ids(self, ids: list[int], k: int, bits: int) -> list[list[Hit]]:
        """Like :meth:`search_codes`, the queries being stored items
        (:class:`UnknownItemError` if one is unknown)."""
        ...

    def random_id(self) -> int:
        """The id of a random item (:class:`UnknownItemError` when the collection is empty)."""
        ...

    def live_ids(self) -> np.ndarray:
        """Ids of every item not removed, ascending (``int64 [n]``)."""
        ...

    def perceptual_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, codes)``: the live items' ids and their packed perceptual codes
        (``uint8 [n, PERCEPTUAL_BITS // 8]``, see :mod:`contrahash.retrieval.duplicates`)."""
        ...

    def codes_of(self, ids: list[int], bits: int) -> np.ndarray:
        """The stored ±1 codes of ``ids`` at ``bits`` (:class:`UnknownItemError` for an
        unknown id)."""
        ...

    def original_path(self, item_id: int) -> Path:
        """Where the item's original file is on this machine (:class:`UnknownItemError` when
        the id is unknown or removed; ``FileNotFoundError`` when the item has no file here).
        The service serves it by id; the path is never sent."""
        ...

    def reload(self) -> bool:
        """Re-read the collection's directory; ``True`` when its contents changed."""
        ...

    def info(self) -> dict[str, Any]:
        """A JSON-serialisable summary of the manifest (count, bits, run id, created_at, ...)."""
        ...

    def close(self) -> None:
        """Release what the collection holds outside the process (connections to a remote
        index); idempotent. ``contrahash serve`` calls it when the server stops."""
        ...
