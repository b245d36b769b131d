"""contrahash: unsupervised deep hashing for image retrieval.

The package is laid out by the stages of the data flow (``docs/architecture.md``): ``data``,
``models``, ``methods``, ``losses``, ``training``, ``evaluation``, ``retrieval``, ``library``,
``serve``, ``bench`` and ``cli``. Modules that once sat directly in this package moved into
those; importing one by its old name fails with a message naming its new place.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from typing import Any

__version__ = "0.1.0"

#: old top-level module → its place since the package was split into subpackages
MOVED_MODULES: dict[str, str] = {
    "augment": "data.augment", "protocols": "data.protocols",
    "backbones": "models.backbones", "engine": "models.engine", "features": "models.features",
    "model": "models.model", "codes": "models.codes", "wta": "methods.wta",
    "neighbours": "training.neighbours", "train": "training.train",
    "providers": "training.providers", "distributed": "training.distributed",
    "rundir": "training.rundir", "metrics": "evaluation.metrics",
    "hamming": "retrieval.hamming", "index": "retrieval.index", "milvus": "retrieval.milvus",
    "milvus_server": "retrieval.milvus_server", "collection": "retrieval.collection",
    "duplicates": "retrieval.duplicates", "encode": "retrieval.encode",
    "codes_io": "retrieval.codes_io",
}


def _moved(name: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"contrahash.{name} moved to contrahash.{MOVED_MODULES[name]}: import it from there",
        name=f"contrahash.{name}")


class _MovedModuleFinder(MetaPathFinder):
    """Last on ``sys.meta_path``: reached only when no file answers an old module name."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> ModuleSpec | None:
        package, _, name = fullname.partition(".")
        if package == "contrahash" and name in MOVED_MODULES:
            raise _moved(name)
        return None


def __getattr__(name: str) -> Any:
    # ``from contrahash import index``: an ImportError (not AttributeError) keeps the message
    if name in MOVED_MODULES:
        raise _moved(name)
    raise AttributeError(f"module 'contrahash' has no attribute {name!r}")


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
