"""Evaluation: the field's retrieval metrics on binary codes and the evaluation of a run.

Modules: :mod:`~contrahash.evaluation.metrics` (mAP@K, P@N, precision within a radius, PR) and
:mod:`~contrahash.evaluation.evaluate` (encode queries and database, save codes, score them).
Importing the package loads neither.
"""

from typing import Any

#: names the module ``contrahash.evaluation`` had before it became this package (its function
#: ``evaluate`` is now shadowed by the submodule of that name)
_MOVED = {"evaluate_run", "evaluation_sets", "self_retrieval"}


def __getattr__(name: str) -> Any:
    # an ImportError (not AttributeError) so that ``from contrahash.evaluation import x`` says it
    if name in _MOVED:
        raise ImportError(f"contrahash.evaluation.{name} moved to "
                          f"contrahash.evaluation.evaluate.{name}: import it from there",
                          name=f"contrahash.evaluation.{name}")
    raise AttributeError(f"module 'contrahash.evaluation' has no attribute {name!r}")
