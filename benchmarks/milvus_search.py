"""Exact k-NN search speed: MilvusIndex (embedded Milvus Lite, BIN_FLAT) against faiss.

Workload: 1,000,000 random 64-bit codes, 1,000 queries, k = 10 and k = 1000. Both indexes
are built in this process (Milvus Lite runs as a child server process on a ``.db`` file in a
temporary directory); searches alternate for ``--rounds`` rounds and the best time of each
counts. Results are compared with faiss' ``IndexBinaryFlat``: distances and ids.

Also printed: insert time, server start-up time (fresh and reopening the 1M-code file), the
server's memory and the ``.db`` file size, how many queries needed the tie-completion range
search, and BIN_IVF_FLAT recall@10 for a few ``nprobe`` values when ``--ivf-uri`` names a
Milvus server that has that index (Milvus Lite has only BIN_FLAT; that is reported).

Final line:
``milvus_distance_equal=<true|false> milvus_qps_k10=<q/s> faiss_qps_k10=<q/s>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _timing import add_search_workload, best_time


def child_memory_mib() -> str:
    """Resident / peak memory of this process' child processes (the Milvus Lite server)."""
    pid = os.getpid()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return "n/a"
    parts = []
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        if "milvus" not in fields.get("Name", ""):
            continue
        rss = int(fields["VmRSS"].split()[0]) / 1024
        hwm = int(fields["VmHWM"].split()[0]) / 1024
        parts.append(f"pid {child}: RSS {rss:.0f} MiB, peak {hwm:.0f} MiB")
    return "; ".join(parts) or "no milvus child process"


def multiset_recall(d_approx: np.ndarray, d_exact: np.ndarray) -> float:
    """Recall@k that counts any item at an exact neighbour's distance as a hit (ties)."""
    hits = 0
    for a, e in zip(d_approx, d_exact, strict=True):
        va, ca = np.unique(a, return_counts=True)
        ve, ce = np.unique(e, return_counts=True)
        _, ia, ie = np.intersect1d(va, ve, return_indices=True)
        hits += int(np.minimum(ca[ia], ce[ie]).sum())
    return hits / d_exact.size


def ivf_recall(args, db: np.ndarray, q: np.ndarray, exact: np.ndarray) -> None:
    from contrahash.milvus import MilvusError, MilvusIndex

    try:
        index = MilvusIndex(args.ivf_uri, args.bits, "contrahash_bench_ivf",
                            index_type="BIN_IVF_FLAT", nlist=args.nlist)
    except MilvusError as exc:
        print(f"BIN_IVF_FLAT: not available: {exc}")
        return
    with index:
        if len(index) != len(db):
            index.add(db, packed=True)
        for nprobe in args.nprobes:
            index.nprobe = nprobe
            seconds, (d, _) = best_time(lambda: index.search(q, 10, packed=True), 2)
            print(f"BIN_IVF_FLAT nlist={args.nlist} nprobe={nprobe:4d}: "
                  f"recall@10 {multiset_recall(d, exact):.4f}   {len(q) / seconds:9.0f} q/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_workload(parser, rounds=3)
    parser.add_argument("--ivf-uri", default=None,
                        help="a Milvus server (http://host:port) for the BIN_IVF_FLAT recall")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 32, 128])
    args = parser.parse_args()

    import faiss

    from contrahash.index import pack_codes
    from contrahash.milvus import MilvusError, MilvusIndex

    rng = np.random.default_rng(args.seed)
    db = pack_codes(rng.random((args.database, args.bits)) < 0.5)
    q = pack_codes(rng.random((args.queries, args.bits)) < 0.5)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"workload: {args.database} codes x {args.queries} queries, {args.bits} bits; "
          f"{cpus} CPUs, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")

    flat = faiss.IndexBinaryFlat(8 * db.shape[1])
    flat.add(db)
    range_queries = [0]

    class CountingIndex(MilvusIndex):
        def _raw_search(self, q: np.ndarray, limit: int, params: dict[str, Any],
                        expr: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
            if "radius" in params:
                range_queries[0] += len(q)
            return super()._raw_search(q, limit, params, expr)

    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        path = os.path.join(tmp, "bench.db")
        start = time.perf_counter()
        index = CountingIndex(path, args.bits)
        print(f"Milvus Lite start (empty file): {time.perf_counter() - start:.2f} s")
        start = time.perf_counter()
        index.add(db, packed=True)
        print(f"insert {len(db)} codes: {time.perf_counter() - start:.1f} s "
              f"({len(db) / (time.perf_counter() - start):.0f} codes/s)")
        index.close()
        start = time.perf_counter()
        index = CountingIndex(path, args.bits)
        n = len(index)
        print(f"Milvus Lite reopen with {n} codes: {time.perf_counter() - start:.2f} s; "
              f".db file {os.path.getsize(path) / 2**20:.0f} MiB")
        index.search(q[:2], 2, packed=True)  # warm-up

        all_equal, qps = True, {}
        for k in args.ks:
            faiss_times, milvus_times = [], []
            for _ in range(args.rounds):
                faiss_times.append(best_time(lambda k=k: flat.search(q, k))[0])
                range_queries[0] = 0
                seconds, (d_m, i_m) = best_time(lambda k=k: index.search(q, k, packed=True))
                milvus_times.append(seconds)
            d_f, i_f = flat.search(q, k)
            same_d = bool(np.array_equal(d_f, d_m))
            same_i = bool(np.array_equal(i_f, i_m))
            all_equal &= same_d
            qps[k] = (args.queries / min(milvus_times), args.queries / min(faiss_times))
            print(f"k={k:5d}: MilvusIndex(Lite, BIN_FLAT) {qps[k][0]:9.0f} q/s   faiss "
                  f"IndexBinaryFlat {qps[k][1]:9.0f} q/s   distances equal={same_d}   ids "
                  f"equal={same_i}   queries needing the tie range search: {range_queries[0]}")
        print(f"Milvus Lite server memory: {child_memory_mib()}")
        try:
            with MilvusIndex(path, args.bits, "ivf", index_type="BIN_IVF_FLAT"):
                pass
        except MilvusError as exc:
            print(f"BIN_IVF_FLAT in Milvus Lite: {exc}")
        index.close()

    if args.ivf_uri:
        ivf_recall(args, db, q, flat.search(q, 10)[0])
    milvus_k10, faiss_k10 = qps.get(10, (float("nan"), float("nan")))
    print(f"milvus_distance_equal={str(all_equal).lower()} milvus_qps_k10={milvus_k10:.0f} "
          f"faiss_qps_k10={faiss_k10:.0f}")


if __name__ == "__main__":
    main()
