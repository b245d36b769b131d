"""A small in-memory :class:`contrahash.serve.types.Collection` for the service's tests and the
load benchmark's ``--fake`` mode.

200 items with 32×32 JPEG thumbnails (smooth random colour fields), codes at 16 and 64 bits.
``encode`` is a fixed function of the pixels: the image is resized to 8×8 (bilinear), centred,
projected on a fixed Gaussian matrix and signed; the stored codes are ``encode`` of the decoded
thumbnails, so uploading a thumbnail finds its item at distance 0. Item 3 is named
``<script>alert(1)</script>.jpg`` and item 5 has a label with HTML in it.

Items carry an ``album`` (``ALBUMS[i % 4]``), a ``sha256`` of their JPEG bytes and their size;
``duplicates=d`` appends ``d`` copies of the first items (alternately byte-identical and
brightened by 20 %), for the duplicate finder. ``original_path`` writes each item's JPEG to a
temporary folder; :meth:`remove` drops items (removed ids raise ``UnknownItemError``
everywhere).

``decode_image`` enforces a pixel limit the way the real collection does: Pillow's
``DecompressionBombWarning``/``DecompressionBombError`` and an explicit size check, all raised
as :class:`InvalidImageError`, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from conftest import free_port
from contrahash.serve.types import Hit, InvalidImageError, Item, UnknownItemError

SCRIPT_NAME = "<script>alert(1)</script>.jpg"
SCRIPT_ID = 3
HTML_LABEL = '<b>bold</b> & "quoted" <img src=x onerror=alert(2)>'
HTML_LABEL_ID = 5
ALBUMS = ["2019", "2020", "2020/summer", ""]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def make_image(seed: int, size: int = 32) -> np.ndarray:
    """A smooth random RGB image ``uint8 [size, size, 3]`` (survives JPEG well)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    """Encode ``uint8 [H, W, 3]`` as JPEG."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class _Snapshot:
    items: list[Item]
    thumbs: list[bytes]
    codes: dict[int, np.ndarray]  # bits -> int8 ±1 [n, bits]
    perceptual: np.ndarray  # packed uint8 [n, PERCEPTUAL_BITS // 8]
    removed: frozenset[int] = frozenset()


class FakeCollection:
    """In-memory collection; counts ``encode`` calls (``encode_batches``) for batching tests.

    ``encode_delay_s`` + ``encode_delay_per_image_s`` make ``encode`` sleep like a CNN would.
    :meth:`stage` queues new items that the next :meth:`reload` adds (as ``index add`` would).
    """

    def __init__(self, n: int = 200, bits: tuple[int, ...] = (16, 64), seed: int = 0,
                 max_pixels: int = 4_000_000, encode_delay_s: float = 0.0,
                 encode_delay_per_image_s: float = 0.0, duplicates: int = 0) -> None:
        self.bits = sorted(bits)
        self.default_bits = self.bits[-1]
        self.max_pixels = max_pixels
        self.encode_delay_s = encode_delay_s
        self.encode_delay_per_image_s = encode_delay_per_image_s
        self._projection = np.random.default_rng(1234).standard_normal((8 * 8 * 3, max(bits)))
        self._seed = seed
        self._lock = threading.Lock()
        self.encode_batches: list[int] = []
        #: the threads prepare_query ran on (the service runs it on its decoding threads)
        self.prepared_threads: list[str] = []
        self.search_hook: threading.Event | None = None  # search_* wait on it when set
        self.search_entered = threading.Event()  # set when a search reaches the hook
        self._staged: list[int] = []
        self._removing: set[int] = set()
        self._rng = np.random.default_rng(seed)
        self._originals: Path | None = None
        self._state = self._build(list(range(n)) + [-1 - j for j in range(duplicates)])

    # ------------------------------------------------------------------ construction

    def _build(self, numbers: range | list[int], base: _Snapshot | None = None) -> _Snapshot:
        """Items for image seeds ``numbers``; a negative number ``-1 - j`` is a copy of item
        ``j`` (byte-identical for even ``j``, brightened by 20 % for odd ``j``)."""
        from PIL import ImageEnhance

        from contrahash.retrieval.duplicates import perceptual_code

        items = list(base.items) if base else []
        thumbs = list(base.thumbs) if base else []
        for number in numbers:
            i = len(items)
            name = f"item-{i:03d}.jpg" if i % 7 else f"cifar10[{i}]"
            if i == SCRIPT_ID:
                name = SCRIPT_NAME
            labels = [] if i % 11 == 10 else [CLASSES[i % 10]]
            if i == HTML_LABEL_ID:
                labels = [HTML_LABEL]
            if number >= 0:
                data = jpeg_bytes(make_image(self._seed * 100_003 + number))
            else:
                j = -1 - number
                data = thumbs[j]
                if j % 2:
                    with Image.open(io.BytesIO(data)) as img:
                        brighter = ImageEnhance.Brightness(img.convert("RGB")).enhance(1.2)
                    data = jpeg_bytes(np.asarray(brighter))
            items.append(Item(id=i, name=name, path=f"/data/images/{name}", labels=labels,
                              album=ALBUMS[i % len(ALBUMS)],
                              sha256=hashlib.sha256(data).hexdigest(), width=32, height=32))
            thumbs.append(data)
        decoded = [self.decode_image(t) for t in thumbs]
        codes = self._encode_pure(decoded)
        perceptual = np.stack([perceptual_code(Image.fromarray(d)) for d in decoded])
        return _Snapshot(items, thumbs, codes, perceptual,
                         base.removed if base else frozenset())

    # ------------------------------------------------------------------ Collection interface

    def __len__(self) -> int:
        return len(self._state.items) - len(self._state.removed)

    def item(self, item_id: int) -> Item:
        state = self._state
        if (not isinstance(item_id, int | np.integer) or not 0 <= item_id < len(state.items)
                or int(item_id) in state.removed):
            raise UnknownItemError(item_id)
        return state.items[int(item_id)]

    def live_ids(self) -> np.ndarray:
        state = self._state
        return np.array([i for i in range(len(state.items)) if i not in state.removed],
                        dtype=np.int64)

    def perceptual_codes(self) -> tuple[np.ndarray, np.ndarray]:
        state = self._state
        ids = np.array([i for i in range(len(state.items)) if i not in state.removed],
                       dtype=np.int64)
        return ids, state.perceptual[ids]

    def codes_of(self, ids: list[int], bits: int) -> np.ndarray:
        for i in ids:
            self.item(i)
        return self._state.codes[bits][np.asarray(ids, dtype=np.int64)].copy()

    def original_path(self, item_id: int) -> Path:
        item = self.item(item_id)
        with self._lock:
            if self._originals is None:
                self._originals = Path(tempfile.mkdtemp(prefix="fake-originals-"))
        path = self._originals / f"{item.id}.jpg"
        if not path.exists():
            path.write_bytes(self._state.thumbs[item.id])
        return path

    def thumbnail(self, item_id: int) -> bytes:
        self.item(item_id)
        return self._state.thumbs[int(item_id)]

    def decode_image(self, data: bytes) -> np.ndarray:
        if not data:
            raise InvalidImageError("empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as img:
                    w, h = img.size
                    if w * h > self.max_pixels:
                        raise InvalidImageError(f"{w}x{h} pixels is over the limit of "
                                                f"{self.max_pixels} (decompression bomb?)")
                    img.load()
                    arr = np.array(img.convert("RGB"), dtype=np.uint8)
        except InvalidImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(f"decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            raise InvalidImageError("not an image Pillow can read") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                KeyError) as exc:
            raise InvalidImageError(f"cannot decode ({type(exc).__name__}: {exc})") from None
        return arr

    def encode(self, images: list[np.ndarray]) -> dict[int, np.ndarray]:
        with self._lock:
            self.encode_batches.append(len(images))
        delay = self.encode_delay_s + self.encode_delay_per_image_s * len(images)
        if delay:
            time.sleep(delay)
        return self._encode_pure(images)

    def prepare_query(self, pixels: np.ndarray) -> np.ndarray:
        self.prepared_threads.append(threading.current_thread().name)
        return pixels

    def encode_prepared(self, prepared: list[np.ndarray]) -> dict[int, np.ndarray]:
        return self.encode(prepared)

    def search_codes(self, codes: np.ndarray, k: int, bits: int) -> list[list[Hit]]:
        state = self._state  # one snapshot for the whole call (reload swaps the reference)
        self._wait_hook()
        return _rank(np.asarray(codes, dtype=np.int32), state.codes[bits], k, state.removed)

    def search_ids(self, ids: list[int], k: int, bits: int) -> list[list[Hit]]:
        state = self._state
        for i in ids:
            self.item(i)
        self._wait_hook()
        return _rank(state.codes[bits][np.asarray(ids)].astype(np.int32), state.codes[bits], k,
                     state.removed)

    def random_id(self) -> int:
        live = self.live_ids()
        with self._lock:
            return int(live[self._rng.integers(len(live))])

    def reload(self) -> bool:
        with self._lock:
            staged, self._staged = self._staged, []
            removed, self._removing = self._removing, set()
        if not staged and not removed:
            return False
        state = self._state
        if removed:
            state = _Snapshot(state.items, state.thumbs, state.codes, state.perceptual,
                              state.removed | removed)
        self._state = self._build(staged, base=state) if staged else state
        return True

    def info(self) -> dict[str, Any]:
        return {"count": len(self), "bits": self.bits, "run_id": "fake-run",
                "created_at": "2026-01-01T00:00:00Z", "method": "fake"}

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------ test helpers

    def stage(self, numbers: list[int]) -> None:
        """Items (image seeds) that the next :meth:`reload` appends."""
        with self._lock:
            self._staged.extend(numbers)

    def remove(self, ids: list[int]) -> None:
        """Items that the next :meth:`reload` removes (as ``index remove``/``sync`` would)."""
        with self._lock:
            self._removing.update(int(i) for i in ids)

    def codes(self, bits: int) -> np.ndarray:
        """The stored codes at ``bits`` (a copy)."""
        return self._state.codes[bits].copy()

    def _encode_pure(self, images: list[np.ndarray]) -> dict[int, np.ndarray]:
        feats = np.stack([np.asarray(Image.fromarray(np.asarray(im, dtype=np.uint8))
                                     .resize((8, 8), Image.Resampling.BILINEAR),
                                     dtype=np.float64).reshape(-1) for im in images])
        feats -= feats.mean(axis=1, keepdims=True)
        signs = np.where(feats @ self._projection >= 0, 1, -1).astype(np.int8)
        return {b: signs[:, :b].copy() for b in self.bits}

    def _wait_hook(self) -> None:
        hook = self.search_hook
        if hook is None:
            return
        self.search_entered.set()
        if not hook.wait(10):
            raise TimeoutError("search_hook never released")


def _rank(queries: np.ndarray, db: np.ndarray, k: int, removed: frozenset[int] = frozenset()
          ) -> list[list[Hit]]:
    bits = db.shape[1]
    dist = (bits - queries @ db.astype(np.int32).T) // 2  # Hamming distance of ±1 codes
    ids = np.arange(db.shape[0])
    live = np.array([i not in removed for i in ids], dtype=bool)
    out = []
    for row in dist:
        order = np.lexsort((ids, row))
        order = order[live[order]][:k]
        out.append([Hit(int(i), int(row[i])) for i in order])
    return out


# ----------------------------------------------------------------------------- a real server


@contextlib.contextmanager
def running_server(app: Any, timeout_s: float = 20.0, http: Any = "auto"
                   ) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with uvicorn in a daemon thread on 127.0.0.1; yield ``(base_url, port)``.
    ``http``: uvicorn's protocol (a name or a class)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on", http=http))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout_s)
