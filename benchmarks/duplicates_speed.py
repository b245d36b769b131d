"""Duplicate groups at scale: ``duplicate_groups`` (exact radius join + connected components)
on 100,000 and 1,000,000 64-bit perceptual codes at the default radius.

The codes imitate a photo library, not random bits. ``--real`` CIFAR-10 images (from the
packed JPEGs given by ``--data``) are encoded with :func:`perceptual_code`, so the bit
statistics (correlated low-frequency bits) are those of real pictures. Each synthetic photo
starts from a random real code with 25 % of its bits flipped (a different picture of a similar
kind: about 16 bits from its parent, 24 from its siblings); 10 % of photos then get 1–4
near-duplicate copies (2–8 bits flipped, what resizing, re-compression or a crop does) and 2 %
an exact copy. The time depends on n (the join is an exact half n² scan), hardly on the data;
the data decides how many pairs and groups come out, which is printed.

``--method scan`` times the scan of every pair (the join before the partition filter) instead
of ``auto``, so old and new can be measured back to back under the same load; ``--method
both`` times both on the same codes, in turn, and checks they give the same groups.

``--serve N`` also times the service on a stub collection of N such items: the first
``GET /api/duplicates`` (computes the groups), a later page (served from the per-snapshot
cache), and ``GET /healthz`` while the groups are being computed (the service stays
responsive: the join runs in a worker thread and faiss releases the GIL).

Final line: ``dup_100k_s=<seconds> dup_1m_s=<seconds>`` (and ``dup_1m_scan_s=`` … for ``scan``).
"""

from __future__ import annotations

import argparse
import io
import os
import time

from contrahash.runtime import apply_thread_policy

apply_thread_policy()  # before faiss loads its OpenMP runtime, as the CLI does

import numpy as np  # noqa: E402


def real_codes(path: str, count: int, seed: int) -> np.ndarray:
    """Perceptual codes of ``count`` random CIFAR-10 images."""
    from PIL import Image

    from contrahash.data.packed import read_packed
    from contrahash.retrieval.duplicates import perceptual_code

    packed = read_packed(path)
    picks = np.random.default_rng(seed).choice(len(packed), count, replace=False)
    return np.stack([perceptual_code(Image.open(io.BytesIO(packed.file_bytes(int(i)))))
                     for i in picks])


def library_codes(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` codes of a synthetic library built on ``real`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    bits = np.unpackbits(real, axis=1).astype(bool)
    photos = int(n / (1 + 0.10 * 2.5 + 0.02))
    out = bits[rng.integers(0, len(bits), photos)] ^ (rng.random((photos, bits.shape[1])) < 0.25)
    copies = [out]
    near = rng.choice(photos, int(0.10 * photos), replace=False)
    for p in near:
        for _ in range(rng.integers(1, 5)):
            c = out[p].copy()
            c[rng.choice(bits.shape[1], rng.integers(1, 5) * 2, replace=False)] ^= True
            copies.append(c[None])
    copies.append(out[rng.choice(photos, int(0.02 * photos), replace=False)])
    codes = np.concatenate(copies)[:n]
    if len(codes) < n:
        codes = np.concatenate([codes, out[rng.integers(0, photos, n - len(codes))]])
    return np.packbits(codes[rng.permutation(n)], axis=1)


class StubCollection:
    """The part of the Collection protocol /api/duplicates uses, over synthetic codes."""

    def __init__(self, codes: np.ndarray) -> None:
        from contrahash.serve.types import Item

        self.bits, self.default_bits = [64], 64
        self._codes = codes
        self._items = [Item(id=i, name=f"IMG_{i:07d}.jpg", path=f"/photos/IMG_{i:07d}.jpg",
                            album=f"{2000 + i % 20}", sha256=f"{i:064x}", width=1600,
                            height=1200) for i in range(len(codes))]

    def __len__(self) -> int:
        return len(self._items)

    def item(self, item_id: int):  # noqa: ANN201
        return self._items[int(item_id)]

    def live_ids(self) -> np.ndarray:
        return np.arange(len(self._items))

    def perceptual_codes(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self._items)), self._codes

    def info(self) -> dict:
        return {"count": len(self)}

    def close(self) -> None:
        pass


def time_service(codes: np.ndarray) -> None:
    """First and later pages of /api/duplicates, and /healthz during the computation."""
    import threading
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from contrahash.serve.app import create_app

    with TestClient(create_app(StubCollection(codes))) as client:
        health: list[float] = []
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                start = time.perf_counter()
                client.get("/healthz")
                health.append(time.perf_counter() - start)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        start = time.perf_counter()
        poller.start()
        first = client.get("/api/duplicates")
        first_s = time.perf_counter() - start
        done.set()
        poller.join()
        start = time.perf_counter()
        later = client.get("/api/duplicates", params={"page": 3})
        later_s = time.perf_counter() - start
        assert first.status_code == later.status_code == 200
        print(f"service, {len(codes):,} items: first /api/duplicates page {first_s:.2f} s, a "
              f"later page {1000 * later_s:.0f} ms, /healthz during the computation: "
              f"{len(health)} answers, slowest {1000 * max(health):.0f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("CONTRAHASH_CIFAR10"),
                        help="packed CIFAR-10 JPEGs (.npz); default $CONTRAHASH_CIFAR10")
    parser.add_argument("--real", type=int, default=5000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--radius", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["auto", "partition", "scan", "both"],
                        default="auto", help="radius_pairs' method (both: auto, then scan)")
    parser.add_argument("--serve", type=int, default=0,
                        help="also time /api/duplicates on a stub collection of this size")
    args = parser.parse_args()

    from contrahash.retrieval.duplicates import DEFAULT_RADIUS, duplicate_groups

    radius = DEFAULT_RADIUS if args.radius is None else args.radius
    if not args.data:
        parser.error("--data (or CONTRAHASH_CIFAR10) must name the packed CIFAR-10 JPEGs")
    start = time.perf_counter()
    real = real_codes(args.data, args.real, args.seed)
    print(f"{len(real)} real perceptual codes in {time.perf_counter() - start:.1f} s")
    if args.serve:
        time_service(library_codes(real, args.serve, args.seed))
    seconds = {}
    for n in args.sizes:
        codes = library_codes(real, n, args.seed + n)
        methods = ["auto", "scan"] if args.method == "both" else [args.method]
        found = []
        for method in methods:
            start = time.perf_counter()
            groups = duplicate_groups(np.arange(n), codes, radius, method=method)
            seconds[n, method] = time.perf_counter() - start
            grouped = sum(len(g) for g in groups)
            print(f"n={n:,} ({method}): {len(groups):,} groups, {grouped:,} items grouped, "
                  f"largest {len(groups[0]) if groups else 0}, radius {radius}: "
                  f"{seconds[n, method]:.1f} s, {os.getloadavg()[0]:.1f} load average",
                  flush=True)
            found.append([[m.id for m in g] for g in groups])
        if len(found) > 1 and found[0] != found[1]:
            raise SystemExit(f"n={n:,}: auto and scan gave different groups")
    names = {100_000: "dup_100k", 1_000_000: "dup_1m"}
    print(" ".join(f"{names.get(n, f'dup_{n}')}{'' if m == 'auto' else '_' + m}_s={s:.1f}"
                   for (n, m), s in seconds.items()))


if __name__ == "__main__":
    main()
