"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def best_time(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall-clock seconds of ``repeats`` calls, and the last call's value."""
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def add_search_workload(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The search benchmarks' workload options: random codes, queries, code length, k values,
    timed rounds and the seed of the codes."""
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--seed", type=int, default=0)
