"""mAP@1000 speed: contrahash.evaluation.metrics against the field's per-query evaluation loop.

Workload (the cifar10-1 shapes): 1,000 queries x 59,000 database items, 64-bit codes, 10
classes, mAP@1000. Codes have class structure (each item is its class prototype with every bit
flipped with probability 0.25), so the ranking looks like a trained model's.

The field loop is DeepHash-pytorch's ``CalcTopMap`` as used by CIBHash-style code: per query,
relevance as a label dot product, float Hamming distances ``0.5 * (k - B q)`` via ``np.dot``,
``np.argsort`` (default, unstable), AP over the top K. It runs in this same process, before
contrahash touches faiss (importing an OpenMP runtime can slow numpy's BLAS; the field gets
the clean conditions). Both sides are timed several times; the best time of each counts.

Equality: the field's unstable argsort breaks ties its own way, so its mAP differs from the
stable-tie mAP by design. ``map_equal`` therefore runs the same field loop on *tie-free*
distances - each distance plus ``position / (2 n)``, which orders ties by database position
without changing any other comparison - and checks that it equals contrahash's mAP to 1e-9.
The plain field mAP is printed too (its difference is the tie effect).

Prints the timings and one final line: ``eval_speedup=<x> map_equal=<true|false>``.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
from _field import field_map
from _timing import best_time


def make_codes(n_query: int, n_db: int, bits: int, n_classes: int, flip: float, seed: int):
    rng = np.random.default_rng(seed)
    protos = rng.random((n_classes, bits)) < 0.5
    labels = rng.integers(0, n_classes, n_query + n_db)
    bits01 = protos[labels] ^ (rng.random((n_query + n_db, bits)) < flip)
    codes = np.where(bits01, 1.0, -1.0).astype(np.float32)  # the field keeps float codes
    onehot = np.eye(n_classes, dtype=np.float32)[labels]
    return codes[:n_query], codes[n_query:], onehot[:n_query], onehot[n_query:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=59_000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--topk", type=int, default=1000)
    parser.add_argument("--flip", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="contrahash runs per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q_b, r_b, q_l, r_l = make_codes(args.queries, args.database, args.bits, args.classes,
                                    args.flip, args.seed)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"workload: {args.queries} queries x {args.database} database, {args.bits} bits, "
          f"{args.classes} classes, mAP@{args.topk}; {cpus} CPUs ({platform.processor() or '?'}), "
          f"numpy {np.__version__}")

    from contrahash.evaluation.metrics import mean_average_precision
    from contrahash.retrieval import hamming

    q_ids, r_ids = q_l.argmax(1), r_l.argmax(1)
    field_times, ours_times = [], []
    for _ in range(args.rounds):
        seconds, field_value = best_time(lambda: field_map(q_b, r_b, q_l, r_l, args.topk), 1)
        field_times.append(seconds)
        seconds, ours_value = best_time(
            lambda: mean_average_precision(q_b, r_b, q_ids, r_ids, topk=args.topk), args.repeats)
        ours_times.append(seconds)
    field_s, ours_s = min(field_times), min(ours_times)
    kernel = "faiss popcount" if hamming.faiss_module() is not None else "numpy popcount"
    print(f"field loop (unstable argsort):   {field_s * 1e3:9.1f} ms   mAP {field_value:.6f}   "
          f"(rounds: {', '.join(f'{t * 1e3:.0f}' for t in field_times)} ms)")
    print(f"contrahash ({kernel}, {hamming.kernel_threads()} threads): "
          f"{ours_s * 1e3:9.1f} ms   mAP {ours_value:.6f}   "
          f"(rounds: {', '.join(f'{t * 1e3:.1f}' for t in ours_times)} ms)")

    tie_free_value = field_map(q_b, r_b, q_l, r_l, args.topk, tie_free=True)
    equal = abs(tie_free_value - ours_value) <= 1e-9
    print(f"field loop on tie-free distances (ties by database position): mAP "
          f"{tie_free_value:.6f}  |diff| = {abs(tie_free_value - ours_value):.2e}")
    print(f"tie effect on the field's number: {field_value - ours_value:+.6f}")
    speedup = field_s / ours_s
    print(f"eval_speedup={speedup:.1f} map_equal={'true' if equal else 'false'}")


if __name__ == "__main__":
    main()
