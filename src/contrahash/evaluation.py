"""Evaluating a model: encode the queries and the database, save the codes, compute metrics.

The protocol's queries against its database give the published number; ``evaluate_on:
val`` evaluates the validation images carved from the database against the rest of it
(for tuning without ever looking at the queries). Metrics are those of
:mod:`contrahash.metrics` (``docs/metrics.md``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contrahash.model import HashingModel
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.rundir import RunDirectory

__all__ = ["evaluate", "evaluate_run", "evaluation_sets"]


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
             run: RunDirectory | None = None, progress: Progress | ProgressCallback | None = None
             ) -> dict[str, Any]:
    """Encode query and database with ``model`` (``features``: dataset indices → test-time
    backbone outputs), save the codes in ``run`` when given, compute every metric per code
    length."""
    from contrahash.metrics import bit_statistics, retrieval_report

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


def evaluate_run(run_dir: str | os.PathLike, topk: int | None = None) -> dict[str, Any]:
    """Metrics of a finished run from its saved codes (no model needed)."""
    from contrahash.metrics import retrieval_report

    run = RunDirectory(run_dir)
    code_files = run.code_files()
    if not code_files:
        raise FileNotFoundError(f"{Path(run_dir) / 'codes'} holds no codes: has the run finished?")
    if topk is None:
        topk = run.read_json("split/split.json").get("topk")
    out: dict[str, Any] = {}
    for path in code_files:
        z = np.load(path)
        out[path.stem] = retrieval_report(z["query"], z["database"], z["query_labels"],
                                          z["database_labels"], topk=topk)
    return out
