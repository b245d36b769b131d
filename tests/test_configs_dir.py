"""Every shipped config resolves (names, keys and methods are valid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contrahash.bench import load_grid
from contrahash.config import resolve_config
from contrahash.methods import METHODS, make_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_method_config_resolves(path):
    cfg = resolve_config(path)
    assert cfg.method in METHODS
    make_config(METHODS[cfg.method], cfg.method_config)  # method keys are valid


def test_every_method_has_cifar_and_digits_configs():
    for name in METHODS:
        assert (CONFIGS / f"{name}-cifar10-1.yaml").is_file(), name
        assert (CONFIGS / f"{name}-digits.yaml").is_file(), name


@pytest.mark.parametrize("path", sorted((CONFIGS / "benchmarks").glob("*.yaml")), ids=lambda p: p.name)
def test_benchmark_grids_parse(path):
    assert load_grid(path).methods
