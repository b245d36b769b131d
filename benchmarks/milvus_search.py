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

``--server``: BIN_FLAT against BIN_IVF_FLAT on a real standalone Milvus server (started here
with :class:`contrahash.retrieval.milvus_server.LocalMilvusServer`, or ``--server-uri``), on real codes:
``--run DIR`` (a finished run: ``codes/<bits>.npz``, its query and database codes). Two
database sizes: the run's own database codes, and the same codes tiled to ``--tile`` codes
(default 1,000,000): copy ``t >= 1`` of the database has every bit flipped independently with
probability ``--noise`` (0.03), so the copies keep the codes' cluster structure without
repeating them exactly. Queries: the run's query codes. For each size: BIN_FLAT (MilvusIndex,
exact, ties completed) and BIN_IVF_FLAT for every ``--nlists`` x ``--nprobes`` cell; recall@10
and @100 against faiss' exact ranking, ties allowed (an item at an exact neighbour's distance
counts as a hit), and q/s (best of ``--rounds``, all queries in one call). The default setting
is the fastest cell with recall@10 >= ``--target-recall`` on the tiled codes. Final line:
``milvus_ivf_recall10=<r> milvus_ivf_speedup=<x> milvus_ivf_nlist=<n> milvus_ivf_nprobe=<p>``
(speedup: that cell's q/s at k=10 over BIN_FLAT's, same server and codes).
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
    from contrahash.retrieval.milvus import MilvusError, MilvusIndex

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


def tiled(db: np.ndarray, total: int, noise: float, seed: int) -> np.ndarray:
    """``db`` (bool codes) repeated to ``total`` rows; copies after the first with each bit
    flipped with probability ``noise``."""
    rng = np.random.default_rng(seed)
    parts, have = [db], len(db)
    while have < total:
        part = db[: total - have]
        parts.append(part ^ (rng.random(part.shape) < noise))
        have += len(part)
    return np.concatenate(parts)


def server_cells(args, index_cls: Any, uri: str, name: str, db: np.ndarray, q: np.ndarray
                 ) -> tuple[list[dict[str, Any]], float]:
    """BIN_FLAT and every IVF cell on ``db``: rows of the table, and BIN_FLAT's q/s at k=10."""
    import faiss

    from contrahash.retrieval.index import pack_codes

    packed, qp = pack_codes(db), pack_codes(q)
    flat = faiss.IndexBinaryFlat(8 * packed.shape[1])
    flat.add(packed)
    exact = {k: flat.search(qp, k)[0] for k in (10, 100)}
    rows: list[dict[str, Any]] = []

    def measure(index: Any, label: dict[str, Any]) -> dict[str, Any]:
        index.search(qp[:8], 10, packed=True)  # warm-up
        row = dict(label)
        for k in (10, 100):
            seconds, (d, _) = best_time(lambda k=k: index.search(qp, k, packed=True),
                                        args.rounds)
            row[f"qps{k}"] = len(qp) / seconds
            row[f"recall{k}"] = multiset_recall(d, exact[k])
        rows.append(row)
        print(f"  {row['index']:12s} nlist={row.get('nlist', '-')!s:>5} "
              f"nprobe={row.get('nprobe', '-')!s:>4}: recall@10 {row['recall10']:.4f}  "
              f"@100 {row['recall100']:.4f}   {row['qps10']:8.0f} q/s (k=10)  "
              f"{row['qps100']:8.0f} q/s (k=100)", flush=True)
        return row

    t0 = time.perf_counter()
    with index_cls(uri, db.shape[1], f"{name}_flat") as index:
        if len(index) != len(packed):
            index.add(packed, packed=True)
            index.flush(reload=True)
        print(f"  BIN_FLAT: {len(packed):,} codes inserted, flushed, loaded in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        flat_qps = measure(index, {"index": "BIN_FLAT"})["qps10"]
    for nlist in args.nlists:
        t0 = time.perf_counter()
        with index_cls(uri, db.shape[1], f"{name}_ivf{nlist}", index_type="BIN_IVF_FLAT",
                       nlist=nlist) as index:
            if len(index) != len(packed):
                index.add(packed, packed=True)
                index.flush(reload=True)
            print(f"  BIN_IVF_FLAT nlist={nlist}: inserted, indexed, loaded in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            for nprobe in args.nprobes:
                if nprobe > nlist:
                    continue
                index.nprobe = nprobe
                measure(index, {"index": "BIN_IVF_FLAT", "nlist": nlist, "nprobe": nprobe})
    for row in rows:
        row["speedup10"] = row["qps10"] / flat_qps
    return rows, flat_qps


def server_main(args) -> None:
    from contrahash.retrieval.milvus import MilvusIndex
    from contrahash.retrieval.milvus_server import LocalMilvusServer

    codes = np.load(Path(args.run) / "codes" / f"{args.bits}.npz")
    db, q = codes["database"] > 0, codes["query"] > 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"codes: {args.run} codes/{args.bits}.npz: {len(db):,} database, {len(q):,} queries; "
          f"{cpus} CPUs; tiled: {args.tile:,} codes, bit noise {args.noise} per copy after "
          "the first", flush=True)
    with tempfile.TemporaryDirectory(prefix="milvus-server-bench-", dir=args.work_dir) as tmp:
        server = None
        uri = args.server_uri
        if uri is None:
            server = LocalMilvusServer(Path(tmp) / "server")
            t0 = time.perf_counter()
            uri = server.start()
            print(f"Milvus 2.3.5 standalone at {uri} (pid {server.pid}) started in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        try:
            tables = {}
            for label, data in ((f"{len(db):,} codes", db),
                                (f"{args.tile:,} tiled codes", tiled(db, args.tile, args.noise,
                                                                     args.seed))):
                print(f"{label}:", flush=True)
                tables[label] = server_cells(args, MilvusIndex, uri, f"bench{len(data)}", data,
                                             q)[0]
        finally:
            if server is not None:
                server.stop()
    print("\n| codes | index | nlist | nprobe | recall@10 | recall@100 | q/s k=10 | q/s k=100 "
          "| speedup k=10 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, rows in tables.items():
        for r in rows:
            print(f"| {label} | {r['index']} | {r.get('nlist', '')} | {r.get('nprobe', '')} | "
                  f"{r['recall10']:.4f} | {r['recall100']:.4f} | {r['qps10']:,.0f} | "
                  f"{r['qps100']:,.0f} | {r['speedup10']:.2f} |")
    big = list(tables.values())[-1]
    ivf = [r for r in big if r["index"] == "BIN_IVF_FLAT"]
    good = [r for r in ivf if r["recall10"] >= args.target_recall]
    pick = max(good, key=lambda r: r["qps10"]) if good else max(ivf, key=lambda r: r["recall10"])
    print(f"chosen default ({'fastest with recall@10 >= ' + str(args.target_recall) if good else 'no cell reaches the target: the best recall'}): "
          f"nlist={pick['nlist']} nprobe={pick['nprobe']}")
    print(f"milvus_ivf_recall10={pick['recall10']:.4f} milvus_ivf_speedup={pick['speedup10']:.2f} "
          f"milvus_ivf_nlist={pick['nlist']} milvus_ivf_nprobe={pick['nprobe']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_workload(parser, rounds=3)
    parser.add_argument("--ivf-uri", default=None,
                        help="a Milvus server (http://host:port) for the BIN_IVF_FLAT recall")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--server", action="store_true",
                        help="BIN_FLAT vs BIN_IVF_FLAT on a Milvus server, real codes (--run)")
    parser.add_argument("--server-uri", default=None,
                        help="--server: use this Milvus server instead of starting one")
    parser.add_argument("--run", default=None, help="--server: a finished run directory")
    parser.add_argument("--tile", type=int, default=1_000_000)
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--nlists", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--work-dir", default=None,
                        help="--server: where the started server's temporary folder goes")
    args = parser.parse_args()
    if args.server:
        if args.run is None:
            parser.error("--server needs --run DIR (a finished run with codes/<bits>.npz)")
        server_main(args)
        return

    import faiss

    from contrahash.retrieval.index import pack_codes
    from contrahash.retrieval.milvus import MilvusError, MilvusIndex

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
