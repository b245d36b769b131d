"""Every registered method against the method contract of ``HashMethod`` (methods/base.py).

Parametrised over the registry, so a new method is checked without editing this file: its
config, views, neighbour spec, a training step (loss, gradients, logged parts), fitting,
encoding, embedding and the checkpoint round trip. A second group of tests checks the other
side of the contract: the trainer, providers, run directory, demo and CLI never name a method
and never probe one with getattr/hasattr.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from contrahash.data.augment import view_augmenters
from contrahash.methods import METHODS, HashMethod, MethodConfig, NeighbourSpec, StepInfo
from contrahash.methods.base import OptimSpec, make_config

NAMES = sorted(METHODS)
FEATURE_DIM, TOKENS, BATCH, BITS = 48, 4, 16, [8, 16]
SRC = Path(__file__).resolve().parents[1] / "src" / "contrahash"


def build(name: str, overrides: dict | None = None) -> HashMethod:
    cls = METHODS[name]
    torch.manual_seed(0)
    return cls(FEATURE_DIM, BITS, make_config(cls, overrides))


def inputs(method: HashMethod, n: int = BATCH, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, TOKENS, FEATURE_DIM) if method.input_kind == "tokens" else (n, FEATURE_DIM)
    return torch.randn(*shape, generator=g).abs()  # backbone outputs are post-activation


def fit_features(n: int = 64) -> torch.Tensor:
    return torch.randn(n, FEATURE_DIM, generator=torch.Generator().manual_seed(7)).abs()


@pytest.mark.parametrize("name", NAMES)
def test_declared_attributes(name):
    cls = METHODS[name]
    assert cls.name == name
    assert cls.input_kind in ("vector", "tokens")
    assert isinstance(cls.trainable, bool) and isinstance(cls.needs_fit, bool)
    assert isinstance(cls.default_optim, OptimSpec)
    assert cls.max_batch is None or cls.max_batch >= 2
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)
    assert cls.__doc__ and cls.__doc__.strip()


@pytest.mark.parametrize("name", NAMES)
def test_config_defaults_build_and_unknown_keys_are_named(name):
    cfg = make_config(METHODS[name], {})
    cfg.validate()
    with pytest.raises(ValueError, match=f"method '{name}': unknown config key"):
        make_config(METHODS[name], {"no_such_key": 1})


@pytest.mark.parametrize("name", NAMES)
def test_views_recipe_and_neighbour_spec(name):
    method = build(name)
    assert isinstance(method.n_views, int) and method.n_views >= 1
    augmenters = view_augmenters(method.augmentation, 32, method.n_views)
    assert len(augmenters) == method.n_views
    spec = method.neighbours()
    assert spec is None or isinstance(spec, NeighbourSpec)
    if spec is not None and spec.refresh:
        assert method.embed(inputs(method)).shape[0] == BATCH


@pytest.mark.parametrize("name", NAMES)
def test_training_step_or_fit(name):
    method = build(name)
    if method.needs_fit or not method.trainable:
        method.fit(fit_features())
    if not method.trainable:
        with pytest.raises(RuntimeError):
            method.training_loss([inputs(method)] * method.n_views, StepInfo())
        return
    views = [inputs(method, seed=v) for v in range(method.n_views)]
    step = StepInfo(epoch=1, epochs=3, step=0, steps_per_epoch=4,
                    positions=torch.arange(BATCH))
    method.train()
    out = method.training_loss(views, step)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert out.parts, "a step reports its named loss parts"
    for k in BITS:  # one set of heads per code length, each logged
        assert any(key.endswith(f"_{k}") for key in out.parts), (k, sorted(out.parts))
    for key, part in out.parts.items():
        value = torch.as_tensor(part)
        assert value.ndim == 0 and not value.requires_grad, key


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS[n].needs_fit])
def test_positions_reach_methods_that_need_them(name):
    method = build(name)
    method.fit(fit_features())
    views = [inputs(method, seed=v) for v in range(method.n_views)]
    with pytest.raises(RuntimeError, match="positions"):
        method.training_loss(views, StepInfo())


@pytest.mark.parametrize("name", NAMES)
def test_encode_gives_pm1_codes_per_length_and_survives_a_checkpoint(name):
    method = build(name)
    if method.needs_fit or not method.trainable:
        method.fit(fit_features())
    if method.trainable:  # one step moves running statistics away from their defaults
        method.train()
        views = [inputs(method, seed=v) for v in range(method.n_views)]
        method.training_loss(views, StepInfo(positions=torch.arange(BATCH))).loss.backward()
    method.eval()
    x = inputs(method, n=10, seed=3)
    codes = method.encode(x)
    assert sorted(codes) == BITS
    for k, c in codes.items():
        assert c.shape == (10, k) and set(c.unique().tolist()) <= {-1, 1}
    again = build(name)
    again.load_state_dict(method.state_dict())
    again.eval()
    for k, c in again.encode(x).items():
        assert torch.equal(c, codes[k]), f"{name}: codes change after a state_dict round trip"


@pytest.mark.parametrize("name", NAMES)
def test_embed_is_declared(name):
    method = build(name)
    if type(method).embed is HashMethod.embed:
        with pytest.raises(NotImplementedError, match="embed"):
            method.embed(inputs(method))
    else:
        method.eval()
        assert method.embed(inputs(method)).shape[0] == BATCH


# ----------------------------------------------------------------------------- the other side
#: modules that drive methods without knowing them
GENERIC = ["training", "models/model.py", "evaluation", "retrieval/encode.py", "demo.py", "bench",
           "cli"]


def _generic_files() -> list[Path]:
    files: list[Path] = []
    for entry in GENERIC:
        path = SRC / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


@pytest.mark.parametrize("path", _generic_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_generic_code_never_branches_on_a_method_name(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = operand.elts if isinstance(operand, ast.Tuple | ast.List | ast.Set) else [operand]
                for v in values:
                    assert not (isinstance(v, ast.Constant) and v.value in METHODS), (
                        f"{path.name}:{node.lineno} compares with method name {v.value!r}")


@pytest.mark.parametrize("path", _generic_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_generic_code_never_probes_a_method(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr") and node.args):
            target = ast.unparse(node.args[0])
            assert "method" not in target, f"{path.name}:{node.lineno} probes {target}"
