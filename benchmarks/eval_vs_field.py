"""Our mAP against the field's common per-query implementation, and the effect of tie order.

The "field" evaluation is the per-query loop found in DeepHash-pytorch / CIBHash-style code:
Hamming distance as a float dot product ``0.5 * (k - q·B^T)``, NumPy's default (unstable)
``np.argsort`` per query, then AP over the top K counting only the relevant items inside the
top K (a query with none contributes 0). Its tie order is whatever the sort kernel leaves,
which at 16 bits — where thousands of database items share each distance — moves mAP.

``contrahash.evaluation.metrics`` breaks ties by database order (stable), and can also report the
best/worst case over all tie orders (relevant items first / last within each distance).
This script prints the four numbers for the same codes and a final ``key=value`` line::

    tie_spread_16bit=<best - worst>

Codes: by default synthetic 16-bit codes with class structure (10 class prototypes, each
item its class prototype with every bit flipped with probability ``--flip``; 1,000 queries ×
59,000 database items, mAP@1000, the cifar10-1 shapes); or real saved codes of a run with
``--codes RUN_DIR/codes/16.npz`` (keys query, database, query_labels, database_labels).

Usage::

    python benchmarks/eval_vs_field.py                      # synthetic, 16 bits
    python benchmarks/eval_vs_field.py --codes runs/x/codes/16.npz
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _field import field_map


# ----------------------------------------------------------------------------- codes
def one_hot(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Integer class ids → one-hot rows; multi-hot matrices pass through."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels
    n_classes = n_classes or int(labels.max()) + 1
    out = np.zeros((len(labels), n_classes), dtype=np.int8)
    out[np.arange(len(labels)), labels] = 1
    return out


def synthetic_codes(bits: int = 16, classes: int = 10, n_query: int = 1000,
                    n_database: int = 59000, flip: float = 0.2, seed: int = 0):
    """Class prototypes + independent bit flips: ±1 int8 codes and one-hot labels."""
    rng = np.random.default_rng(seed)
    prototypes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(classes, bits))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        codes = prototypes[labels].copy()
        codes[rng.random(codes.shape) < flip] *= -1
        return codes, one_hot(labels, classes)

    q, ql = draw(n_query)
    db, dbl = draw(n_database)
    return q, db, ql, dbl


def load_codes(path: Path):
    z = np.load(path)
    missing = {"query", "database", "query_labels", "database_labels"} - set(z.files)
    if missing:
        raise SystemExit(f"{path}: missing arrays {sorted(missing)} (expected a run's codes/<bits>.npz)")
    ql, dbl = np.asarray(z["query_labels"]), np.asarray(z["database_labels"])
    if ql.ndim == 1:
        n = int(max(ql.max(), dbl.max())) + 1
        ql, dbl = one_hot(ql, n), one_hot(dbl, n)
    return np.asarray(z["query"]), np.asarray(z["database"]), ql, dbl


# ----------------------------------------------------------------------------- ours
def ours(query, database, query_labels, database_labels, topk):
    """(stable mAP, best-case, worst-case) from contrahash.evaluation.metrics."""
    from contrahash.evaluation.metrics import mean_average_precision

    out = mean_average_precision(query, database, query_labels, database_labels, topk=topk,
                                 return_bounds=True)
    return _unpack_bounds(out)


def _unpack_bounds(out):
    if isinstance(out, dict):
        return float(out["map"]), float(out["best"]), float(out["worst"])
    if hasattr(out, "map"):
        return float(out.map), float(out.best), float(out.worst)
    value, best, worst = out
    return float(value), float(best), float(worst)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=Path, help="a run's codes/<bits>.npz (default: synthetic)")
    parser.add_argument("--bits", type=int, default=16, help="synthetic code length")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=59000)
    parser.add_argument("--flip", type=float, default=0.2, help="synthetic bit-flip probability")
    parser.add_argument("--topk", type=int, default=1000, help="mAP cut-off K (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.codes is not None:
        q, db, ql, dbl = load_codes(args.codes)
        source = str(args.codes)
    else:
        q, db, ql, dbl = synthetic_codes(args.bits, args.classes, args.queries, args.database,
                                         args.flip, args.seed)
        source = (f"synthetic: {args.classes} class prototypes, flip p={args.flip}, "
                  f"seed {args.seed}")
    bits = q.shape[1]
    topk = args.topk or db.shape[0]
    d = (bits - q[:1].astype(np.int32) @ db.T.astype(np.int32)) // 2
    ties = np.bincount(d.ravel(), minlength=bits + 1)
    print(f"codes: {source}; {q.shape[0]} queries × {db.shape[0]} database, {bits} bits, "
          f"mAP@{topk}")
    print(f"first query: {int(ties.max())} database items share its most common distance")

    t = time.perf_counter()
    field = field_map(q, db, ql, dbl, topk)
    t_field = time.perf_counter() - t
    t = time.perf_counter()
    stable, best, worst = ours(q, db, ql, dbl, topk)
    t_ours = time.perf_counter() - t
    spread = best - worst

    print(f"field (per-query, unstable argsort): mAP = {field:.4f}   ({t_field:.2f} s)")
    print(f"ours  (stable: ties in database order): mAP = {stable:.4f}   ({t_ours:.2f} s)")
    print(f"tie bounds: best = {best:.4f}, worst = {worst:.4f}, spread = {spread:.4f}")
    print(f"field - ours = {field - stable:+.4f}; both inside the bounds: "
          f"{worst - 1e-6 <= field <= best + 1e-6 and worst - 1e-6 <= stable <= best + 1e-6}")
    # the same codes stored sorted by class: the field's number moves with storage order too
    order = np.argsort(dbl.argmax(axis=1) if dbl.ndim == 2 else dbl, kind="stable")
    field_sorted = field_map(q, db[order], ql, dbl[order], topk)
    stable_sorted = ours(q, db[order], ql, dbl[order], topk)[0]
    print(f"database stored sorted by class: field = {field_sorted:.4f}, "
          f"ours = {stable_sorted:.4f}")
    print(f"tie_spread_{bits}bit={spread:.4f}")


if __name__ == "__main__":
    main()
