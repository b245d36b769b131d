"""Decode the packed CIFAR-10 JPEGs (60,000 files) into one uint8 tensor: cold and cached.

    python benchmarks/data_speed.py --npz PATH/cifar10-jpeg.npz [--cache-dir DIR] [--compare]

Cold = first load with an empty cache: read the npz, decode every JPEG in forked workers,
check files_sha256, write the decoded cache. Warm = the same call again (the cache is
memory-mapped copy-on-write; ``warm_touch_s`` also reads every pixel once). The decoder import
(torchvision.io) is timed separately: a process pays it once. ``--compare`` also times the two
decoders single-threaded on the same 10,000 files (the choice the loader makes). Also checks
that ``cifar10-1`` on this file gives 1,000/59,000/5,000 with 100/5,900/500 per class.

The final line is ``cifar10_load_s=<cold seconds> cifar10_cached_load_s=<warm seconds>``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import tempfile
import time

import numpy as np


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare_decoders(npz: str, n: int = 10_000) -> None:
    import torch
    from PIL import Image
    from torchvision.io import decode_jpeg

    z = np.load(npz)
    header, scans, off = z["jpeg_header"], z["jpeg_scans"], z["offsets"]
    files = [np.concatenate((header, scans[off[i] : off[i + 1]])) for i in range(n)]

    def pil():
        return [np.asarray(Image.open(io.BytesIO(f.tobytes())).convert("RGB")) for f in files]

    def tv():
        return [decode_jpeg(torch.from_numpy(f)).permute(1, 2, 0).numpy() for f in files]

    a, t_pil = _time(pil)
    b, t_tv = _time(tv)
    same = all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    print(
        f"decoders, 1 thread, {n:,} files: Pillow {t_pil:.2f} s, torchvision {t_tv:.2f} s "
        f"(×{t_pil / t_tv:.2f}); identical pixels: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", required=True, help="packed-JPEG CIFAR-10 .npz")
    parser.add_argument("--cache-dir", default=None, help="where the temporary cache goes")
    parser.add_argument("--workers", type=int, default=None, help="decoder processes")
    parser.add_argument("--compare", action="store_true", help="also time Pillow vs torchvision")
    args = parser.parse_args()

    import torch

    _, t_import = _time(lambda: __import__("torchvision.io"))
    from contrahash.data import load_source
    from contrahash.data.images import default_workers
    from contrahash.data.protocols import make_split

    workers = args.workers or default_workers()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({workers} usable), torch {torch.__version__}"
    )
    print(f"decoder import (torchvision.io, once per process): {t_import:.2f} s")
    if args.compare:
        compare_decoders(args.npz)

    if args.cache_dir:
        os.makedirs(args.cache_dir, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="contrahash-bench-", dir=args.cache_dir)
    try:
        cold, t_cold = _time(lambda: load_source(args.npz, cache_dir=cache, workers=workers))
        warm, t_warm = _time(lambda: load_source(args.npz, cache_dir=cache, workers=workers))
        _, t_touch = _time(lambda: int(warm.images.data.numpy().max()))
        assert torch.equal(cold.images.data, warm.images.data)
        n = len(cold)
        h, w = cold.image_size
        print(f"images: {n:,} × {h}×{w}×3 uint8, skipped {cold.n_skipped}")
        print(f"cold load (decode {workers} procs + sha256 check + cache write): {t_cold:.2f} s")
        print(
            f"warm load (cached, memory-mapped): {t_warm:.3f} s; reading every pixel once: {t_touch:.3f} s"
        )

        split = make_split("cifar10-1", cold, seed=0)
        per = split.summary()
        print(
            "cifar10-1 seed 0: "
            + ", ".join(
                f"{k} {v['count']:,} ({sorted(set(v['per_class']))} per class)"
                for k, v in per.items()
            )
        )
        ok = split.counts() == {"query": 1000, "database": 59000, "train": 5000} and all(
            set(per[k]["per_class"]) == {c}
            for k, c in (("query", 100), ("database", 5900), ("train", 500))
        )
        print(f"cifar10-1 sizes exact: {ok}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"cifar10_load_s={t_cold:.3f} cifar10_cached_load_s={t_warm:.3f}")


if __name__ == "__main__":
    main()
