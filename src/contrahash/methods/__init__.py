"""Hashing methods; ``METHODS`` is the explicit name → class registry (the CLI vocabulary)."""

from contrahash.methods.base import (
    METHODS,
    HashMethod,
    LossOutput,
    OptimSpec,
    StepInfo,
    build_method,
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

METHODS.update(
    {
        CIBHash.name: CIBHash,
        FDBH.name: FDBH,
        HARR.name: HARR,
        NSH.name: NSH,
        WCH.name: WCH,
        BiHalf.name: BiHalf,
        GreedyHash.name: GreedyHash,
        LSH.name: LSH,
        PCAH.name: PCAH,
        ITQ.name: ITQ,
    }
)

__all__ = [
    "METHODS",
    "HashMethod",
    "LossOutput",
    "OptimSpec",
    "StepInfo",
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
