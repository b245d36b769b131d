"""The CPU inference engine (contrahash.models.engine): features and codes against torch fp32 on real
EfficientNet-Lite0 weights, the export cache (reuse, corruption, staleness), the torch
fallback with one warning, the block cache's prefix, and the CLI's --engine."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from contrahash.config import resolve_config
from contrahash.models import engine as engine_module
from contrahash.models.backbones import build_backbone
from contrahash.models.engine import compile_part, engine_threads, torch_reference
from contrahash.models.model import build_model

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = [name for name in ("openvino", "onnxruntime")
             if importlib.util.find_spec(name) is not None]


def _need(name: str) -> None:
    """Skip without the engine, except under CI=true, where the extra is installed."""
    if name not in INSTALLED and os.environ.get("CI") != "true":
        pytest.skip(f"{name} is not installed (pip install 'contrahash[engine]')")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_module, "_warned", set())
    monkeypatch.setenv("CONTRAHASH_CACHE", str(tmp_path / "user-cache"))


def _model(backbone: str = "tiny_cnn", engine: str = "openvino", *, amp: bool = True,
           finetune: int = 0, folder: Path | None = None, image_size: int = 32):
    overrides = [f"backbone.name={backbone}", f"backbone.image_size={image_size}",
                 "method=fdbh", "bits=[64]", "device=cpu", f"amp={str(amp).lower()}",
                 "method_config.neighbour_prob=0", f"backbone.finetune_blocks={finetune}"]
    if backbone == "tiny_cnn":
        overrides.append("backbone.random_init=true")
    model = build_model(resolve_config(None, overrides), torch.device("cpu"))
    model.engine, model.engine_dir = engine, folder
    return model


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _cifar() -> Path:
    from contrahash.library.synthetic import find_cifar10

    return find_cifar10() or pytest.skip("the packed CIFAR-10 file is not here (CONTRAHASH_CIFAR10)")


# -- real weights: features and codes ---------------------------------------------------------

@pytest.fixture(scope="module")
def lite0_cifar(tmp_path_factory):
    """192 CIFAR-10 JPEGs (all classes) upscaled to 224 px; the torch fp32 features of Lite0
    with its ImageNet weights and those of today's default torch path (bf16 autocast where the
    CPU has native bf16, else fp32 again); an FDBH 64-bit head trained on the latter."""
    from contrahash.data import load_source
    from contrahash.training.loop import train_on_features

    dataset = load_source(str(_cifar()))
    rows = np.linspace(0, len(dataset.images) - 1, 192).astype(np.int64)
    fp32 = _model("efficientnet_lite0", "torch", amp=False, image_size=224)
    bf16 = _model("efficientnet_lite0", "torch", image_size=224)
    features32 = fp32.extract(dataset.images, rows)
    features16 = bf16.extract(dataset.images, rows)
    # views: the features and a copy with a random 20 % of its dimensions dropped (a forward
    # per extra view would double the test's time)
    generator = torch.Generator().manual_seed(0)
    clean = torch.from_numpy(features16.astype(np.float32))
    dropped = clean * (torch.rand(clean.shape, generator=generator) > 0.2) / 0.8
    torch.manual_seed(0)
    train_on_features(fp32.method, torch.stack([clean, dropped], dim=1), epochs=30)
    fp32.method.eval()
    return {"images": dataset.images, "rows": rows, "fp32": features32, "bf16": features16,
            "head": fp32.method.state_dict(), "folder": tmp_path_factory.mktemp("engine"),
            "reference": fp32.encode(features32)[64], "bf16_codes": fp32.encode(features16)[64],
            "torch_model": fp32, "default_precision": bf16.torch_precision}


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
def test_engine_features_and_codes_agree_with_torch_fp32(lite0_cifar, name):
    _need(name)
    data = lite0_cifar
    model = _model("efficientnet_lite0", name, image_size=224, folder=data["folder"])
    model.method.load_state_dict(data["head"])
    assert model.engine_name == name
    features = model.extract(data["images"], data["rows"])
    cos = _cosines(features, data["fp32"])
    bf16_cos = _cosines(data["bf16"], data["fp32"])
    if model.engine_info()["precision"] == "f32":  # same arithmetic as the reference
        assert cos.min() >= 0.9999
    else:  # bf16 kernels: as close to fp32 as torch's own bf16 path, image by image
        assert cos.mean() >= 0.995 and cos.min() >= bf16_cos.min() - 0.01
    codes = model.encode(features)[64]
    bf16_agreement = float((data["bf16_codes"] == data["reference"]).mean())
    agreement = float((codes == data["reference"]).mean())
    if data["default_precision"] == "bfloat16":  # the comparison means something: bf16 flips bits
        assert bf16_agreement < 1.0
    else:  # a CPU without native bf16: today's default torch path is fp32 itself
        assert bf16_agreement == 1.0
    print(f"{name}: bit agreement with torch fp32 {agreement:.4f} (torch bf16 {bf16_agreement:.4f})")
    assert agreement >= bf16_agreement - 0.005, (agreement, bf16_agreement)
    # a query encoded alone gets the code its image got inside a batch (search finds itself)
    alone = [data["images"][np.array([r])][0].numpy() for r in data["rows"][:8]]
    single = np.concatenate([model.encode_images([img])[64] for img in alone])
    np.testing.assert_array_equal(single, codes[:8])


# -- the export cache -------------------------------------------------------------------------

def _count_builds(monkeypatch) -> list[int]:
    builds: list[int] = []
    real = engine_module._build

    def counting(*args, **kwargs):
        builds.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_build", counting)
    return builds


@pytest.mark.parametrize("name", ["openvino", "onnxruntime"])
def test_an_export_is_reused_and_a_corrupt_one_rebuilt(tmp_path, monkeypatch, name):
    _need(name)
    builds = _count_builds(monkeypatch)
    torch.manual_seed(0)
    backbone = build_backbone("tiny_cnn", random_init=True).eval()
    x = torch.rand(5, 3, 32, 32)
    reference = torch_reference(backbone, ("features",), backbone.normalize(x)).numpy()
    first = compile_part(name, backbone, ("features",), 32, tmp_path, amp=False)
    assert first is not None and len(builds) == 1
    np.testing.assert_allclose(first(backbone.normalize(x).numpy()), reference, rtol=1e-4,
                               atol=1e-5)
    again = compile_part(name, backbone, ("features",), 32, tmp_path, amp=False)
    assert again is not None and len(builds) == 1  # read back, not exported again
    weights = next(p for p in tmp_path.iterdir() if p.suffix in (".bin", ".onnx"))
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte in the weights
    weights.write_bytes(bytes(blob))
    rebuilt = compile_part(name, backbone, ("features",), 32, tmp_path, amp=False)
    assert rebuilt is not None and len(builds) == 2  # the hash disagreed: rebuilt
    np.testing.assert_allclose(rebuilt(backbone.normalize(x).numpy()), reference, rtol=1e-4,
                               atol=1e-5)
    with torch.no_grad():  # other weights: another export, the first one untouched
        backbone.stages[0][0].weight.mul_(2)
    other = compile_part(name, backbone, ("features",), 32, tmp_path, amp=False)
    assert other is not None and len(builds) == 3 and other.file != first.file
    assert other.threads == engine_threads()


def test_a_model_encodes_with_its_engine_and_records_it(tmp_path):
    _need("openvino")
    model = _model(folder=tmp_path)
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    features = model.extract(images, np.arange(10))
    info = model.engine_info()
    assert model.engine_name == "openvino" and info["name"] == "openvino"
    assert model.precision == f"openvino-{info['precision']}"
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".bin", ".json", ".xml"]
    torch_model = _model(engine="torch")
    torch_model.backbone.load_state_dict(model.backbone.state_dict())
    assert torch_model.engine_name == "torch" and torch_model.engine_info()["name"] == "torch"
    assert _cosines(features, torch_model.extract(images, np.arange(10))).min() > 0.99


def test_an_export_found_in_the_user_cache_is_copied_next_to_the_model(tmp_path, monkeypatch):
    _need("openvino")
    builds = _count_builds(monkeypatch)
    trained = _model()  # a model being trained: the user cache
    assert trained.engine_name == "openvino" and len(builds) == 1
    collection = _model(folder=tmp_path / "model" / "engine")  # the same weights, read back
    collection.backbone.load_state_dict(trained.backbone.state_dict())
    assert collection.engine_name == "openvino" and len(builds) == 1  # not exported again
    copied = sorted(p.name for p in (tmp_path / "model" / "engine").iterdir())
    assert copied == sorted(p.name for p in (tmp_path / "user-cache" / "engines").iterdir())


def test_auto_leaves_small_backbones_and_training_weights_to_torch(tmp_path):
    assert _model(engine="auto", folder=tmp_path).engine_name == "torch"  # 23k parameters
    fine_tuned = _model(engine="openvino", finetune=1, folder=tmp_path)
    assert fine_tuned.compiled(("features",)) is None  # its last block still trains
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("bf16", ["1", "0"])
def test_auto_takes_openvino_where_bf16_is_native_else_onnx_runtime(monkeypatch, bf16):
    monkeypatch.setenv("CONTRAHASH_CPU_BF16", bf16)
    order = engine_module.auto_order()
    assert sorted(order) == sorted(engine_module.ENGINES)
    assert order[0] == ("openvino" if bf16 == "1" else "onnxruntime")
    monkeypatch.setattr(engine_module, "_installed", lambda name: name == order[1])
    lite = torch.nn.Linear(1000, 1001)  # over AUTO_MIN_PARAMETERS: "auto" compiles it
    assert engine_module.resolve_engine("auto", lite, torch.device("cpu")) == order[1]
    monkeypatch.setattr(engine_module, "_installed", lambda name: True)
    assert engine_module.resolve_engine("auto", lite, torch.device("cpu")) == order[0]
    assert engine_module.resolve_engine("auto", lite, torch.device("cuda")) == "torch"


# -- the fallback: one warning, torch's own features -------------------------------------------

def test_an_engine_that_disagrees_falls_back_to_torch_with_one_warning(tmp_path, monkeypatch):
    _need("openvino")
    real = engine_module._load

    def wrong(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda x: run(x)[:, ::-1].copy()  # a broken engine: features permuted

    monkeypatch.setattr(engine_module, "_load", wrong)
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = [_model(folder=tmp_path) for _ in range(2)]
        names = [m.engine_name for m in models]
        features = models[0].extract(images, np.arange(6))
    assert names == ["torch", "torch"]
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "disagree" in messages[0] and "\n" not in messages[0]
    reference = _model(engine="torch")
    reference.backbone.load_state_dict(models[0].backbone.state_dict())
    np.testing.assert_array_equal(features, reference.extract(images, np.arange(6)))


@pytest.mark.parametrize("failure", ["import", "compile"])
def test_an_engine_that_cannot_run_falls_back_to_torch(tmp_path, monkeypatch, failure):
    if failure == "import":  # the package is absent on this machine
        monkeypatch.setattr(engine_module, "_installed", lambda name: False)
    else:  # installed, but the CPU (or the library) refuses the model
        _need("openvino")

        def refuse(*args, **kwargs):
            raise RuntimeError("CPU plug-in: unsupported instruction set\nsecond line")

        monkeypatch.setattr(engine_module, "_load", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _model(folder=tmp_path)
        assert model.engine_name == "torch" and model.precision in ("bfloat16", "fp32")
        model.extract(torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8), np.arange(3))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "torch" in messages[0] and "\n" not in messages[0]


# -- the block cache's frozen prefix ------------------------------------------------------------

def test_the_frozen_prefix_below_fine_tuned_blocks_runs_on_the_engine(tmp_path):
    _need("openvino")
    model = _model(finetune=1, folder=tmp_path, amp=False)
    compiled = model.compiled(("blocks", 1))
    assert compiled is not None and compiled.part == ("blocks", 1)
    backbone = model.backbone.eval()
    x = backbone.normalize(torch.rand(4, 3, 32, 32))
    with torch.no_grad():
        expected = backbone.block_input(x, 1).numpy()
    got = compiled(x.numpy())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert model.compiled(("blocks", 3)) is None  # n = every block: no prefix to compile


# -- the command line ---------------------------------------------------------------------------

def test_the_cli_refuses_an_unknown_engine_in_one_line():
    from typer.testing import CliRunner

    from contrahash.cli.commands import app

    result = CliRunner().invoke(app, ["--engine", "tensorrt", "data", "info", "digits"])
    assert result.exit_code == 2
    assert "tensorrt" in result.output and "openvino" in result.output
    engine_module.set_default_engine(None)


def test_the_default_engine_comes_from_the_environment(monkeypatch):
    engine_module.set_default_engine(None)
    monkeypatch.setenv("CONTRAHASH_ENGINE", "torch")
    assert engine_module.default_engine() == "torch"
    monkeypatch.setenv("CONTRAHASH_ENGINE", "bogus")
    with pytest.raises(ValueError, match="CONTRAHASH_ENGINE"):
        engine_module.default_engine()
    monkeypatch.delenv("CONTRAHASH_ENGINE")
    assert engine_module.default_engine() == "auto"


def test_index_info_says_which_engine_encoded_and_whether_a_query_here_would_match(monkeypatch):
    from contrahash.models.engine import engine_note

    engine_module.set_default_engine(None)
    recorded = {"name": "openvino", "precision": "bf16", "version": "2026.4"}
    monkeypatch.setattr(engine_module, "_installed", lambda name: True)
    assert engine_note(recorded) == "engine: openvino bf16 2026.4"
    assert engine_note(None).startswith("engine: not recorded")
    assert "MISMATCH" not in engine_note({"name": "torch", "precision": "bfloat16"})
    monkeypatch.setattr(engine_module, "_installed", lambda name: False)
    assert "MISMATCH" in engine_note(recorded) and "not installed" in engine_note(recorded)
    monkeypatch.setattr(engine_module, "_installed", lambda name: True)
    engine_module.set_default_engine("torch")
    try:
        assert "MISMATCH" in engine_note(recorded) and "--engine torch" in engine_note(recorded)
    finally:
        engine_module.set_default_engine(None)
