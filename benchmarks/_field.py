"""The field's mAP@K, written once for the benchmarks that compare contrahash against it.

The "field" evaluation is the per-query loop of DeepHash-pytorch's ``CalcTopMap`` as used by
CIBHash-style code: relevance as a label dot product, Hamming distance as a float dot product
``0.5 * (k - q·B^T)``, NumPy's default (unstable) ``np.argsort`` per query, then AP over the
relevant items inside the top K (a query with none contributes 0). It is kept here as the
field writes it, not as contrahash computes it: it is the independent reference that
``eval_speed.py`` times and ``eval_vs_field.py`` compares tie orders against.
"""

from __future__ import annotations

import numpy as np


def field_hamming(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """DeepHash-style Hamming distance of one ±1 query row to all database rows (float)."""
    k = database.shape[1]
    return 0.5 * (k - np.dot(query, database.T))


def field_map(query: np.ndarray, database: np.ndarray, query_labels: np.ndarray,
              database_labels: np.ndarray, topk: int, tie_free: bool = False) -> float:
    """The field's per-query mAP@``topk`` over ±1 codes and one-/multi-hot labels.

    ``tie_free`` adds ``position / (2 n)`` to every distance: ties are then ordered by
    database position and no other comparison changes, so the loop's result must equal a
    stable-tie mAP exactly (``eval_speed.py``'s ``map_equal``). Float32 inputs are used as
    they are (no copy), so timing the call times the loop.
    """
    qb, rb = np.asarray(query, np.float32), np.asarray(database, np.float32)
    ql = np.asarray(query_labels, np.float32)
    rl = np.asarray(database_labels, np.float32)
    tie_breaker = np.arange(rb.shape[0]) / (2.0 * rb.shape[0]) if tie_free else None
    total = 0.0
    for i in range(qb.shape[0]):
        gnd = (np.dot(ql[i], rl.T) > 0).astype(np.float32)
        hamm = field_hamming(qb[i], rb)
        if tie_breaker is not None:
            hamm = hamm + tie_breaker
        ind = np.argsort(hamm)  # default kind: unstable, as in the field's code
        tgnd = gnd[ind][:topk]
        tsum = int(np.sum(tgnd))
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        total += float(np.mean(count / tindex))
    return total / qb.shape[0]
