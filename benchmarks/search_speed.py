"""Exact k-NN search speed: HammingIndex (faiss backend) against faiss' IndexBinaryFlat directly.

Workload: 1,000,000 random 64-bit codes, 1,000 queries, k = 10 and k = 1000. HammingIndex adds
input checking, packing, the id mapping and its tie-order guarantee (ranking by distance, then
insertion order, verified once per process and checked per call) on top of the same faiss
search; this measures what that costs. Both run in this one process, interleaved for
``--rounds`` rounds; the best time of each counts.

Also printed, for information: the numpy backend at k = 10, the torch backend where CUDA is
available, and range search (radius 2) through the flat scan and through the multi-hash index
HammingIndex picks for small radii.

Final line: ``search_ratio_vs_faiss=<min over k of (HammingIndex q/s) / (faiss q/s)>``.
"""

from __future__ import annotations

import argparse
import os

from contrahash.runtime import apply_thread_policy

apply_thread_policy()  # before faiss and torch load their OpenMP runtimes, as the CLI does

import numpy as np  # noqa: E402
from _timing import add_search_workload, best_time  # noqa: E402


def other_backends(args, db: np.ndarray, queries: np.ndarray) -> None:
    """The numpy backend (k = 10) and, where CUDA is available, the torch backend."""
    from contrahash.retrieval.index import HammingIndex

    numpy_index = HammingIndex(args.bits, backend="numpy")
    numpy_index.add(db)
    seconds, _ = best_time(lambda: numpy_index.search(queries[:200], 10))
    print(f"k=   10: HammingIndex(numpy) {200 / seconds:9.0f} q/s")

    import torch

    if not torch.cuda.is_available():
        print("torch backend: no CUDA device here, skipped")
        return
    gpu = HammingIndex(args.bits, backend="torch", device="cuda")
    gpu.add(db)
    for k in args.ks:
        gpu.search(queries[:10], k)
        torch.cuda.synchronize()
        seconds, _ = best_time(lambda k=k: gpu.search(queries, k), 3)
        print(f"k={k:5d}: HammingIndex(torch, {torch.cuda.get_device_name()}) "
              f"{args.queries / seconds:9.0f} q/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_workload(parser, rounds=5)
    args = parser.parse_args()

    try:
        import faiss
    except ImportError:  # e.g. a GPU box without faiss: only the numpy / torch numbers
        faiss = None

    from contrahash.retrieval.index import HammingIndex, pack_codes

    rng = np.random.default_rng(args.seed)
    db = np.where(rng.random((args.database, args.bits)) < 0.5, 1, -1).astype(np.int8)
    queries = np.where(rng.random((args.queries, args.bits)) < 0.5, 1, -1).astype(np.int8)
    db_packed, q_packed = pack_codes(db), pack_codes(queries)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"workload: {args.database} codes x {args.queries} queries, {args.bits} bits; "
          f"{cpus} CPUs, " + (f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} "
                              "threads)" if faiss else "faiss not installed"))
    if faiss is None:
        other_backends(args, db, queries)
        print("search_ratio_vs_faiss=nan")
        return

    flat = faiss.IndexBinaryFlat(args.bits)
    flat.add(db_packed)
    index = HammingIndex(args.bits, backend="faiss")
    index.add(db)
    index.search(queries[:2], 2)  # warm-up: builds the faiss index, runs the tie-order check

    ratios = []
    for k in args.ks:
        faiss_times, ours_times = [], []
        for _ in range(args.rounds):
            faiss_times.append(best_time(lambda k=k: flat.search(q_packed, k))[0])
            ours_times.append(best_time(lambda k=k: index.search(queries, k))[0])
        d_f, i_f = flat.search(q_packed, k)
        d_o, i_o = index.search(queries, k)
        same = bool((d_f == d_o).all() and (i_f == i_o).all())
        faiss_qps = args.queries / min(faiss_times)
        ours_qps = args.queries / min(ours_times)
        ratios.append(ours_qps / faiss_qps)
        print(f"k={k:5d}: faiss IndexBinaryFlat {faiss_qps:9.0f} q/s   HammingIndex(faiss) "
              f"{ours_qps:9.0f} q/s   ratio {ours_qps / faiss_qps:.3f}   identical={same}")

    other_backends(args, db, queries)
    seconds, _ = best_time(lambda: flat.range_search(q_packed, 3))
    print(f"range search r<=2: faiss flat scan {args.queries / seconds:9.0f} q/s")
    index.range_search(queries[:2], 2)  # builds the multi-hash index once
    seconds, _ = best_time(lambda: index.range_search(queries, 2), 3)
    print(f"range search r<=2: HammingIndex(faiss) {args.queries / seconds:9.0f} q/s")

    print(f"search_ratio_vs_faiss={min(ratios):.3f}")


if __name__ == "__main__":
    main()
