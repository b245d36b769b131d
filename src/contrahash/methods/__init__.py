"""Hashing methods; ``METHODS`` is the explicit name → class registry (the CLI vocabulary)."""

from collections.abc import Mapping, Sequence
from typing import Any

from contrahash.methods.base import (
    HashMethod,
    LossOutput,
    MethodConfig,
    NeighbourSpec,
    OptimSpec,
    StepInfo,
    Term,
    Terms,
    make_config,
)
from contrahash.methods.bihalf import BiHalf
from contrahash.methods.cibhash import CIBHash
from contrahash.methods.fdbh import FDBH
from contrahash.methods.greedyhash import GreedyHash
from contrahash.methods.harr import HARR
from contrahash.methods.nsh import NSH
from contrahash.methods.shallow import ITQ, LSH, PCAH
from contrahash.methods.wch import WCH

#: name → class: the registry, and the vocabulary of ``method=`` in configs and the CLI
METHODS: dict[str, type[HashMethod]] = {
    cls.name: cls
    for cls in (CIBHash, FDBH, HARR, NSH, WCH, BiHalf, GreedyHash, LSH, PCAH, ITQ)
}


def build_method(
    name: str,
    feature_dim: int,
    bits: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
) -> HashMethod:
    """Instantiate a registered method by name (unknown names and config keys are named).

    >>> import torch
    >>> m = build_method("cibhash", feature_dim=32, bits=[16, 32])
    >>> sorted(m.encode(torch.randn(4, 32)))
    [16, 32]
    """
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; available: {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(feature_dim, bits, make_config(cls, overrides))

__all__ = [
    "METHODS",
    "HashMethod",
    "LossOutput",
    "MethodConfig",
    "NeighbourSpec",
    "OptimSpec",
    "StepInfo",
    "Term",
    "Terms",
    "build_method",
    "make_config",
    "CIBHash",
    "FDBH",
    "HARR",
    "NSH",
    "WCH",
    "BiHalf",
    "GreedyHash",
    "LSH",
    "PCAH",
    "ITQ",
]
