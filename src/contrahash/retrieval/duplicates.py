"""Near-duplicate photos: a perceptual code made for the purpose, an exact radius join, groups.

Three pieces, each usable alone:

- :func:`perceptual_code` — a ``PERCEPTUAL_BITS``-bit code of an image's *appearance*
  (not its meaning, which the collection's semantic codes capture): the signs, against their
  median, of the 64 lowest-frequency DCT coefficients (DC excluded) of the grey image at
  32×32, averaged over four centred crops (100, 90, 80 and 70 % of each side). A plain pHash
  (one 32×32 DCT of the whole image) moves by 10–20 bits under a 90 % centre crop, because a
  crop rescales every frequency; averaging the coefficients over nested crops makes the code
  change little when the picture is cropped or re-framed a little, while resizing,
  re-compression and brightness changes barely move it at all. ``docs/duplicates.md`` has
  the measurement that chose it against pHash and larger codes.
- :func:`radius_pairs` — every pair of codes within Hamming distance ``r``, exactly. Identical
  codes are collapsed first (exact copies cost nothing), then the unique codes are compared
  block against the blocks after it with faiss' popcount range search (half of the n² pairs,
  on all cores). At the radii near-duplicates need (about 20 % of the bits), multi-index
  hashing has no selective substrings (pigeonhole needs r + 1 ≈ 13 substrings of ~5 bits),
  so the exact brute force is faster than any index here; ``docs/duplicates.md`` measures it.
- :func:`duplicate_groups` — connected components of the "within radius" graph, largest
  first, each group's members by id with their distance to the group's first member and
  whether their file is byte-identical to another member's (same ``sha256``).

:func:`find_duplicates` runs the three on a collection (its stored perceptual codes, or its
semantic codes of one length when asked).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_RADIUS",
    "PERCEPTUAL_BITS",
    "DuplicateMember",
    "duplicate_groups",
    "find_duplicates",
    "hamming_to",
    "perceptual_code",
    "radius_pairs",
]

#: bits of :func:`perceptual_code`
PERCEPTUAL_BITS = 64
#: the radius (on perceptual codes) below which two photos are called duplicates; chosen by
#: measurement on edited copies (``docs/duplicates.md``). Distances between perceptual codes
#: are always even (each code has exactly 32 ones), so 12 and 13 group the same.
DEFAULT_RADIUS = 12

_GRID = 32  # the grey image is resized to _GRID × _GRID before the DCT
_SCALES = (1.0, 0.9, 0.8, 0.7)  # centred crops averaged (fraction of each side)
_LARGEST_SIDE = 512  # larger inputs are first reduced (box filter) to about this size


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``C`` (``C @ x`` is the DCT of a length-``n`` signal)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    c[0] /= np.sqrt(2.0)
    return c


@functools.cache
def _low_frequencies(n: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the ``count`` lowest frequencies (by ``u + v``, then ``u``),
    the DC term excluded: the coefficients a small rescale or crop moves least."""
    order = sorted(((u, v) for u in range(n) for v in range(n) if (u, v) != (0, 0)),
                   key=lambda p: (p[0] + p[1], p[0]))[:count]
    rows, cols = zip(*order, strict=True)
    return np.array(rows), np.array(cols)


def perceptual_code(image: Any) -> np.ndarray:
    """The packed ``uint8 [PERCEPTUAL_BITS // 8]`` perceptual code of a PIL image.

    ``image`` should already be EXIF-transposed (the collection decodes it so); any mode is
    accepted (it is converted to grey). Bit order is ``np.packbits``' (as :mod:`hamming`).
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"perceptual_code needs a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"perceptual_code: empty image {image.width}×{image.height}")
    grey = image.convert("L")
    factor = max(grey.width, grey.height) // _LARGEST_SIDE
    if factor >= 2:  # cheap box reduction first: resampling 4,000 px to 32 with Lanczos is slow
        grey = grey.reduce(factor)
    dct = _dct_matrix(_GRID)
    rows, cols = _low_frequencies(_GRID, PERCEPTUAL_BITS)
    total = np.zeros(PERCEPTUAL_BITS)
    w, h = grey.size
    for scale in _SCALES:
        cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
        left, top = (w - cw) // 2, (h - ch) // 2
        crop = grey.resize((_GRID, _GRID), Image.Resampling.LANCZOS,
                           box=(left, top, left + cw, top + ch))
        pixels = np.asarray(crop, dtype=np.float64)
        total += (dct @ pixels @ dct.T)[rows, cols]
    bits = total > np.median(total)
    return np.packbits(bits)


# ----------------------------------------------------------------------------- the join


def hamming_to(codes: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Hamming distances ``int [n]`` from each packed row of ``codes`` to one packed ``code``."""
    return np.bitwise_count(np.bitwise_xor(codes, code[None, :])).sum(axis=1, dtype=np.int64)


def radius_pairs(codes: np.ndarray, radius: int, block: int = 8192
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``codes`` (packed ``uint8 [n, B/8]``) within Hamming
    distance ``radius``, exactly: ``(i, j, distance)`` as ``int64`` arrays, sorted by
    ``(i, j)``."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise ValueError(f"radius_pairs: codes must be 2-D packed bytes, got shape {codes.shape}")
    if radius < 0:
        raise ValueError(f"radius must be ≥ 0, got {radius}")
    n, nbytes = codes.shape
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    # identical codes collapse to one row; their pairs come back at distance 0
    unique, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    ui, uj, _ = _unique_pairs(unique, radius, block)
    sizes = np.bincount(inverse, minlength=len(unique))
    parts_i, parts_j = [first[ui[(sizes[ui] == 1) & (sizes[uj] == 1)]]], []
    parts_j.append(first[uj[(sizes[ui] == 1) & (sizes[uj] == 1)]])
    if (sizes > 1).any():
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)])

        def members(u: int) -> np.ndarray:
            return order[starts[u]:starts[u + 1]]

        for u in np.flatnonzero(sizes > 1):  # pairs inside one class of identical codes
            a, b = np.triu_indices(sizes[u], 1)
            parts_i.append(members(u)[a])
            parts_j.append(members(u)[b])
        for p in np.flatnonzero((sizes[ui] > 1) | (sizes[uj] > 1)):  # every member × every member
            ma, mb = members(ui[p]), members(uj[p])
            parts_i.append(np.repeat(ma, len(mb)))
            parts_j.append(np.tile(mb, len(ma)))
    i = np.concatenate(parts_i).astype(np.int64)
    j = np.concatenate(parts_j).astype(np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    return lo, hi, _distances(codes, lo, hi)


def _distances(codes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i), dtype=np.int64)
    step = 1 << 20
    for s in range(0, len(i), step):
        x = np.bitwise_xor(codes[i[s:s + step]], codes[j[s:s + step]])
        out[s:s + step] = np.bitwise_count(x).sum(axis=1, dtype=np.int64)
    return out


def _unique_pairs(codes: np.ndarray, radius: int, block: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of distinct rows within ``radius``: each block of rows against itself
    and every later row, by faiss' exact range search."""
    import faiss

    n, nbytes = codes.shape
    bits = nbytes * 8
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block):
        index = faiss.IndexBinaryFlat(bits)
        index.add(codes[start:])
        queries = codes[start:start + block]
        lims, dist, found = index.range_search(queries, radius + 1)  # faiss: distance < radius
        counts = np.diff(lims).astype(np.int64)
        qi = np.repeat(np.arange(len(queries), dtype=np.int64), counts) + start
        fj = found.astype(np.int64) + start
        keep = fj > qi
        out_i.append(qi[keep])
        out_j.append(fj[keep])
        out_d.append(dist[keep].astype(np.int64))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class DuplicateMember:
    """One item of a duplicate group: its id, its Hamming distance to the group's first item,
    and whether its file is byte-identical to another member's (``exact``)."""

    id: int
    distance: int
    exact: bool = False


def duplicate_groups(ids: np.ndarray, codes: np.ndarray, radius: int,
                     sha256: list[str | None] | None = None) -> list[list[DuplicateMember]]:
    """Connected components (size ≥ 2) of "within ``radius``" over ``codes`` (packed rows,
    one per id), largest first (then by first id); members in id order, the first being the
    group's reference for ``distance``. ``sha256`` (one per id, or ``None``) marks exact
    copies."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.asarray(ids, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.uint8)
    if len(ids) != len(codes):
        raise ValueError(f"{len(ids)} ids but {len(codes)} codes")
    order = np.argsort(ids, kind="stable")
    ids, codes = ids[order], codes[order]
    hashes = None if sha256 is None else [sha256[k] for k in order]
    i, j, _ = radius_pairs(codes, radius)
    n = len(ids)
    if len(i) == 0:
        return []
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    in_groups = np.flatnonzero(sizes[labels] >= 2)  # positions, ascending (= id order)
    by_label: dict[int, list[int]] = {}
    for pos in in_groups:
        by_label.setdefault(int(labels[pos]), []).append(int(pos))
    groups = []
    for positions in by_label.values():
        pos = np.array(positions)
        dist = hamming_to(codes[pos], codes[pos[0]])
        counts: dict[str, int] = {}
        if hashes is not None:
            for p in positions:
                if hashes[p]:
                    counts[hashes[p]] = counts.get(hashes[p], 0) + 1
        groups.append([
            DuplicateMember(int(ids[p]), int(d),
                            bool(hashes is not None and hashes[p] and counts[hashes[p]] > 1))
            for p, d in zip(positions, dist, strict=True)])
    groups.sort(key=lambda g: (-len(g), g[0].id))
    return groups


def find_duplicates(collection: Any, radius: int = DEFAULT_RADIUS, bits: int | None = None
                    ) -> tuple[int, list[list[DuplicateMember]]]:
    """Duplicate groups of a collection's live items: ``(bits, groups)``.

    ``bits=None`` (or ``PERCEPTUAL_BITS`` when the collection has no semantic code of that
    length) uses the perceptual codes stored with the collection; another length uses the
    semantic codes of that length (similar photos, not duplicates). Exact copies are marked
    from the items' ``sha256``.
    """
    if radius < 0:
        raise ValueError(f"--radius must be ≥ 0, got {radius}")
    if bits is None or (bits == PERCEPTUAL_BITS and bits not in collection.bits):
        ids, codes = collection.perceptual_codes()
        bits = PERCEPTUAL_BITS
        if len(ids) and np.asarray(codes).shape[1] != PERCEPTUAL_BITS // 8:
            raise ValueError("this collection holds no perceptual codes (built before "
                             "near-duplicate search existed): `contrahash index sync DIR` "
                             "or a rebuild adds them")
    else:
        if bits not in collection.bits:
            raise ValueError(f"--bits {bits}: the collection has codes of "
                             f"{', '.join(map(str, collection.bits))} bits")
        ids = np.asarray(collection.live_ids(), dtype=np.int64)
        codes = np.asarray(collection.codes_of(ids.tolist(), bits))
        if codes.dtype != np.uint8 or codes.shape[1] != bits // 8:  # ±1 codes: pack them
            codes = np.packbits(np.asarray(codes) > 0, axis=1)
    if radius > bits:
        raise ValueError(f"--radius {radius} is larger than the code length ({bits} bits)")
    ids = np.asarray(ids, dtype=np.int64)
    hashes = [collection.item(int(i)).sha256 for i in ids] if len(ids) else []
    return bits, duplicate_groups(ids, np.asarray(codes, dtype=np.uint8), radius, hashes)
