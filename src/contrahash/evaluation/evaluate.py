"""Evaluating a model: encode the queries and the database, save the codes, compute metrics.

The protocol's queries against its database give the published number; ``evaluate_on:
val`` evaluates the validation images carved from the database against the rest of it
(for tuning without ever looking at the queries). Metrics are those of
:mod:`contrahash.evaluation.metrics` (``docs/metrics.md``).

A dataset without labels (a photo library) has no mAP: a number computed against folder
names would mean nothing. It gets a label-free figure instead, *augmented-view
self-retrieval@10* (:func:`self_retrieval`): for up to :data:`SELF_QUERIES` images, a fresh
augmented view (the fixed ``contrastive`` recipe, its own seed, never a training view) is
encoded and searched among the codes of every image; the figure is the fraction whose own
image ranks in the top 10, ties counted against it (``_best`` counts them for it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.models.model import HashingModel
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.training.rundir import RunDirectory

__all__ = ["evaluate", "evaluate_run", "evaluation_sets", "self_retrieval"]

#: images whose augmented views are the label-free evaluation's queries
SELF_QUERIES = 1000
#: the rank a view's own image must reach
SELF_TOP = 10


def evaluation_sets(split: Any, evaluate_on: str) -> tuple[np.ndarray, np.ndarray]:
    """(queries, database) to evaluate on: the protocol's, or validation vs the rest."""
    if evaluate_on == "query":
        return split.query, split.database
    if evaluate_on != "val":
        raise ValueError(f"evaluate_on must be 'query' or 'val', got '{evaluate_on}'")
    if split.val is None or len(split.val) == 0:
        raise ValueError("evaluate_on=val needs a validation split: set "
                         "data.protocol_options.val_size (e.g. 1000)")
    return split.val, np.setdiff1d(split.database, split.val)


def evaluate(model: HashingModel, features: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
             split: Any, evaluate_on: str = "query", *, method_name: str,
             run: RunDirectory | None = None, progress: Progress | ProgressCallback | None = None,
             views: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Encode query and database with ``model`` (``features``: dataset indices → test-time
    backbone outputs), save the codes in ``run`` when given, compute every metric per code
    length. Without labels (``labels`` has no columns) the label-free figure is computed
    instead, from ``views`` (dataset indices → backbone outputs of fresh augmented views)."""
    from contrahash.evaluation.metrics import bit_statistics, retrieval_report

    if labels.shape[1] == 0:
        if views is None:
            raise ValueError("a dataset without labels is evaluated from augmented views")
        return _evaluate_unlabelled(model, features, views, split, method_name=method_name,
                                    run=run, progress=progress)
    queries, database = evaluation_sets(split, evaluate_on)
    q_codes, db_codes = model.encode(features(queries)), model.encode(features(database))
    out: dict[str, Any] = {"method": method_name, "protocol": split.protocol, "topk": split.topk,
                           "evaluated_on": evaluate_on, "bits": {}}
    with as_progress(progress).phase("evaluation", len(model.method.bits), unit="code length",
                                       queries=len(queries), database=len(database)) as phase:
        for k in model.method.bits:
            if run is not None:
                run.write_codes(k, query=q_codes[k], database=db_codes[k],
                                query_labels=labels[queries], database_labels=labels[database],
                                query_index=queries, database_index=database)
            report = retrieval_report(q_codes[k], db_codes[k], labels[queries], labels[database],
                                      topk=split.topk)
            report["bit_balance"] = bit_statistics(db_codes[k])
            out["bits"][str(k)] = report
            phase.advance(1)
    return out


def self_retrieval(view_codes: np.ndarray, db_codes: np.ndarray, own: np.ndarray,
                   top: int = SELF_TOP) -> dict[str, float]:
    """How often a view's own image (row ``own[i]`` of ``db_codes``) ranks in the ``top``
    nearest codes of view ``i``: ``self_retrieval_at_<top>`` with ties counted against it
    (rank = 1 + images strictly closer + other images as close), ``_best`` with ties for it."""
    bits = db_codes.shape[1]
    q = np.asarray(view_codes, dtype=np.float32)
    db_t = np.ascontiguousarray(np.asarray(db_codes, dtype=np.float32).T)
    worst, best, dist_self = [], [], []
    for lo in range(0, len(q), 256):  # ±1 codes: d = (bits - <q, x>) / 2, exact in float32
        d = np.rint((bits - q[lo:lo + 256] @ db_t) / 2).astype(np.int64)
        rows = np.arange(len(d))
        mine = d[rows, own[lo:lo + 256]]
        closer = (d < mine[:, None]).sum(axis=1)
        ties = (d == mine[:, None]).sum(axis=1) - 1
        worst.append(closer + ties + 1 <= top)
        best.append(closer + 1 <= top)
        dist_self.append(mine)
    return {f"self_retrieval_at_{top}": float(np.concatenate(worst).mean()),
            f"self_retrieval_at_{top}_best": float(np.concatenate(best).mean()),
            "mean_distance_to_self": float(np.concatenate(dist_self).mean())}


def _evaluate_unlabelled(model: HashingModel, features: Callable[[np.ndarray], np.ndarray],
                         views: Callable[[np.ndarray], np.ndarray], split: Any, *,
                         method_name: str, run: RunDirectory | None,
                         progress: Progress | ProgressCallback | None) -> dict[str, Any]:
    from contrahash.evaluation.metrics import bit_statistics

    database = np.union1d(split.query, split.database)  # every image of the split
    rng = np.random.default_rng(split.seed)
    picked = np.sort(rng.choice(len(database), min(SELF_QUERIES, len(database)), replace=False))
    sample = database[picked]
    db_codes = model.encode(features(database))
    view_codes = model.encode(views(sample))
    out: dict[str, Any] = {"method": method_name, "protocol": split.protocol, "topk": None,
                           "evaluated_on": "self-retrieval", "labels": False,
                           "self_queries": int(len(sample)), "bits": {}}
    with as_progress(progress).phase("evaluation", len(model.method.bits), unit="code length",
                                       queries=len(sample), database=len(database)) as phase:
        for k in model.method.bits:
            if run is not None:
                run.write_codes(k, query=view_codes[k], database=db_codes[k],
                                query_index=sample, database_index=database,
                                self_rows=picked)
            report = self_retrieval(view_codes[k], db_codes[k], picked)
            report["bits"] = int(k)
            report["bit_balance"] = bit_statistics(db_codes[k])
            out["bits"][str(k)] = report
            phase.advance(1)
    return out


def evaluate_run(run_dir: str | os.PathLike, topk: int | None = None) -> dict[str, Any]:
    """Metrics of a finished run from its saved codes (no model needed); the label-free
    figure for a run on unlabelled images."""
    from contrahash.evaluation.metrics import retrieval_report

    run = RunDirectory(run_dir)
    code_files = run.code_files()
    if not code_files:
        raise FileNotFoundError(f"{Path(run_dir) / 'codes'} holds no codes: has the run finished?")
    if topk is None:
        topk = run.read_json("split/split.json").get("topk")
    out: dict[str, Any] = {}
    for path in code_files:
        z = np.load(path)
        if "self_rows" in z.files:
            out[path.stem] = {**self_retrieval(z["query"], z["database"], z["self_rows"]),
                              "bits": int(path.stem)}
            continue
        out[path.stem] = retrieval_report(z["query"], z["database"], z["query_labels"],
                                          z["database_labels"], topk=topk)
    return out
