"""Config resolution: defaults, YAML, overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contrahash.config import ConfigError, TrainConfig, config_to_dict, resolve_config


def test_defaults_and_overrides():
    cfg = resolve_config(None, ["method=cibhash", "bits=[16,64]", "backbone.finetune_blocks=6",
                                "method_config.beta=0.01", "optim.lr=1e-4"])
    assert cfg.method == "cibhash" and cfg.bits == [16, 64]
    assert cfg.backbone.finetune_blocks == 6
    assert cfg.method_config == {"beta": 0.01} and cfg.optim == {"lr": 1e-4}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: fdbh\nmethod_config: {lambda_rec: 0.2}\ndata: {source: digits}\n")
    cfg = resolve_config(path, ["method_config.lambda_pol=0.5"])
    assert cfg.method_config == {"lambda_rec": 0.2, "lambda_pol": 0.5}
    assert cfg.data.source == "digits"


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['finetune'\] in 'backbone'"):
        resolve_config(None, ["backbone.finetune=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("methd: fdbh\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key\(s\) \['methd'\]"):
        resolve_config(path)


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="bits\\[0\\]: expected int"):
        resolve_config(None, ["bits=[abc]"])
    with pytest.raises(ConfigError, match="amp: expected true/false"):
        resolve_config(None, ["amp=maybe"])
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config(None, ["bits"])
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(broken)


def test_compile_mode_is_checked():
    assert resolve_config(None, ["compile=true", "compile_mode=reduce-overhead"]).compile_mode == "reduce-overhead"
    with pytest.raises(ConfigError, match="compile_mode: expected one of default"):
        resolve_config(None, ["compile_mode=fastest"])


# -- validation: every value a user can get wrong names its field and the value -----------------

@pytest.mark.parametrize("override, message", [
    ("optim.epochs=0", "optim.epochs: must be >= 1, got 0"),
    ("optim.epochs=-1", "optim.epochs: must be >= 1, got -1"),
    ("optim.epochs=abc", "optim.epochs: expected int, got 'abc'"),
    ("optim.epochs=2.5", "optim.epochs: expected an integer, got 2.5"),
    ("optim.epochs=true", "optim.epochs: expected a number, got True"),
    ("optim.batch_size=1", "optim.batch_size: must be >= 2, got 1"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("optim.lr=.inf", "optim.lr: must be a finite number, got inf"),
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=-1e-3", "optim.lr: must be > 0, got -0.001"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
    ("optim.weight_decay=-1", "optim.weight_decay: must be >= 0, got -1.0"),
    ("optim.momentum=1", "optim.momentum: must be >= 0 and < 1, got 1.0"),
    ("optim.momentum=-0.1", "optim.momentum: must be >= 0 and < 1, got -0.1"),
    ("optim.backbone_lr_scale=-0.5", "optim.backbone_lr_scale: must be >= 0, got -0.5"),
    ("optim.name=adamw", "optim.name: expected one of adam, sgd, got 'adamw'"),
    ("optim.schedule=step", "optim.schedule: expected one of constant, cosine, got 'step'"),
    ("bits=100000", "bits: code lengths must be integers in 1..4096 (a 4096-bit code is "
                    "already as large as the float features it replaces: longer codes are "
                    "not hashing), got 100000"),
    ("bits=[16,0]", "bits: code lengths must be integers in 1..4096"),
    ("bits=[]", "bits: expected a non-empty list of code lengths, e.g. [16, 32, 64], got []"),
    ("bits=[16,32,16]", "bits: code lengths must be distinct (16 is listed twice), "
                        "got [16, 32, 16]"),
    ("bits=[16.5]", "bits[0]: expected an integer, got 16.5"),
    ("cache.views=0", "cache.views: must be >= 1, got 0"),
    ("cache.mode=always", "cache.mode: expected one of auto, on, off"),
    ("compile_mode=no", "compile_mode: expected a string, got False (YAML reads yes/no/on/off/"
                        "true/false as a boolean; quote the word: compile_mode='...')"),
    ("cache.max_token_gib=-1", "cache.max_token_gib: must be >= 0, got -1.0"),
    ("eval_batch_size=0", "eval_batch_size: must be >= 1, got 0"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("data.seed=-3", "data.seed: must be >= 0, got -3"),
    ("evaluate_on=test", "evaluate_on: expected one of query, val, got 'test'"),
    ("backbone.finetune_blocks=-2", "backbone.finetune_blocks: must be >= -1, got -2"),
    ("backbone.image_size=4", "backbone.image_size: must be >= 8, got 4"),
])
def test_invalid_values_are_refused_naming_field_and_value(override, message):
    with pytest.raises(ConfigError) as info:
        resolve_config(None, [override])
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_unknown_optim_key_lists_the_optim_spec_fields():
    from dataclasses import fields

    from contrahash.methods.base import OptimSpec

    known = sorted(f.name for f in fields(OptimSpec))
    with pytest.raises(ConfigError) as info:
        resolve_config(None, ["optim.epoch=3"])
    assert str(info.value) == f"optim: unknown key(s) ['epoch']; known keys: {known}"


def test_valid_edges_pass_and_optim_values_take_their_types():
    cfg = resolve_config(None, [
        "optim.epochs=1", "optim.batch_size=2", "optim.lr=1", "optim.momentum=0",
        "optim.weight_decay=0", "optim.backbone_lr_scale=0", "optim.name=sgd",
        "optim.schedule=cosine", "optim.epochs=2.0", "bits=[1,4096]", "cache.views=1",
        "cache.mode=off", "cache.max_token_gib=.inf", "eval_batch_size=1", "seed=0",
        "evaluate_on=val", "backbone.finetune_blocks=-1", "backbone.image_size=8",
    ])
    assert cfg.optim == {"epochs": 2, "batch_size": 2, "lr": 1.0, "momentum": 0.0,
                         "weight_decay": 0.0, "backbone_lr_scale": 0.0, "name": "sgd",
                         "schedule": "cosine"}
    assert type(cfg.optim["epochs"]) is int and type(cfg.optim["lr"]) is float
    assert cfg.bits == [1, 4096] and cfg.cache.max_token_gib == float("inf")
    # YAML reads on/off as booleans: cache.mode takes them back as the words
    assert cfg.cache.mode == "off"
    assert resolve_config(None, ["cache.mode=on"]).cache.mode == "on"
    assert resolve_config(None, ["cache.mode='off'"]).cache.mode == "off"


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: fdbh\noptim: {epochs: 0}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: optim.epochs: must be >= 1, got 0$"):
        resolve_config(path)


ROOT = Path(__file__).resolve().parents[1]


def test_run_configs_written_by_earlier_versions_still_load(tmp_path):
    """Every run config.yaml under results/ (written by earlier versions), and one missing
    the keys added since (compile_mode, deterministic, evaluate_on), resolve unchanged."""
    written = sorted((ROOT / "results").rglob("config.yaml"))
    assert len(written) >= 10
    for path in written:
        raw = yaml.safe_load(path.read_text())
        cfg = config_to_dict(resolve_config(path))
        for key, value in raw.items():  # what the file says is what the config holds
            if isinstance(value, dict):
                assert {k: cfg[key][k] for k in value} == value, (path, key)
            else:
                assert cfg[key] == value, (path, key)
    old = {k: v for k, v in yaml.safe_load(written[0].read_text()).items()
           if k not in ("compile_mode", "deterministic", "evaluate_on")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old))
    cfg = resolve_config(path)
    assert cfg.compile_mode == "default" and cfg.evaluate_on == "query"


# -- extends ----------------------------------------------------------------------------------

def test_extends_layers_the_file_over_its_base(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "data.yaml").write_text(
        "bits: [8, 16]\ndata: {source: digits, protocol: custom, protocol_options: {query: 0.1}}\n"
        "backbone: {name: pixels, image_size: 16}\noptim: {epochs: 30, lr: 0.01}\n")
    # nested: a second base extends the first, with a path relative to itself
    (tmp_path / "bases" / "fast.yaml").write_text(
        "extends: data.yaml\noptim: {epochs: 3}\nbackbone: {image_size: 8}\n")
    path = tmp_path / "run.yaml"
    path.write_text("extends: bases/fast.yaml\nmethod: itq\nbits: [32]\n"
                    "data: {protocol_options: {train: 100}}\n")
    cfg = resolve_config(path, ["optim.lr=0.5"])
    assert cfg.method == "itq" and cfg.bits == [32]  # lists replace
    assert cfg.data.source == "digits" and cfg.data.protocol == "custom"
    assert cfg.data.protocol_options == {"query": 0.1, "train": 100}  # mappings merge
    assert cfg.backbone.name == "pixels" and cfg.backbone.image_size == 8
    assert cfg.optim == {"epochs": 3, "lr": 0.5}


def test_extends_errors_name_the_files(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.yaml", "b.yaml", "c.yaml"))
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: c.yaml\n")
    c.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(a)
    assert str(info.value) == f"{c}: extends cycle: {a} -> {b} -> {c} -> {a}"
    a.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends cycle: .*a.yaml -> .*a.yaml$"):
        resolve_config(a)
    a.write_text("extends: missing.yaml\nmethod: itq\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends: file not found: .*missing.yaml"):
        resolve_config(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends: expected the path of a YAML file"):
        resolve_config(a)
    b.write_text("optim: {epochs: 0}\n")
    a.write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match=r"optim.epochs: must be >= 1, got 0"):
        resolve_config(a)


#: what every configs/*.yaml said before the files shared base/cifar10-1.yaml and
#: base/digits.yaml through `extends` (dotted keys; mappings under optim, augment,
#: method_config and protocol_options are values): the resolved configs must not move
_CIFAR = {"bits": [16, 32, 64], "data.source": "${CONTRAHASH_CIFAR10}",
          "data.protocol": "cifar10-1", "backbone.name": "efficientnet_lite0"}
_DIGITS = {"bits": [16, 32, 64], "data.source": "digits", "data.protocol": "custom",
           "data.protocol_options": {"query": 0.1, "train": 1000}, "backbone.name": "pixels",
           "backbone.image_size": 16,
           "augment": {"scale": [0.7, 1.0], "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}}
_FINETUNE = {"backbone.finetune_blocks": 6,
             "optim": {"name": "adam", "lr": 0.001, "backbone_lr_scale": 0.1, "batch_size": 128,
                       "epochs": 60}}
CONFIGS_BEFORE_EXTENDS = {
    "bihalf-cifar10-1.yaml": {**_CIFAR, "method": "bihalf", "optim": {"epochs": 100}},
    "bihalf-digits.yaml": {**_DIGITS, "method": "bihalf", "optim": {"epochs": 30}},
    "cibhash-cifar10-1.yaml": {**_CIFAR, "method": "cibhash", **_FINETUNE},
    "cibhash-digits.yaml": {**_DIGITS, "method": "cibhash", "optim": {"epochs": 30}},
    "fdbh-cifar10-1.yaml": {**_CIFAR, "method": "fdbh", **_FINETUNE, "method_config": {
        "neighbour_mode": "extra", "neighbour_prob": 1.0, "neighbour_k": 5,
        "neighbour_pool": "database"}},
    "fdbh-digits.yaml": {**_DIGITS, "method": "fdbh", "optim": {"epochs": 30},
                         "method_config": {"neighbour_pool": "train"}},
    "greedyhash-cifar10-1.yaml": {**_CIFAR, "method": "greedyhash", "optim": {"epochs": 100}},
    "greedyhash-digits.yaml": {**_DIGITS, "method": "greedyhash", "optim": {"epochs": 30}},
    "harr-cifar10-1.yaml": {**_CIFAR, "method": "harr", "optim": {"epochs": 100}},
    "harr-digits.yaml": {**_DIGITS, "method": "harr", "optim": {"epochs": 30}},
    "itq-cifar10-1.yaml": {**_CIFAR, "method": "itq"},
    "itq-digits.yaml": {**_DIGITS, "method": "itq"},
    "lsh-cifar10-1.yaml": {**_CIFAR, "method": "lsh"},
    "lsh-digits.yaml": {**_DIGITS, "method": "lsh"},
    "nsh-cifar10-1.yaml": {**_CIFAR, "method": "nsh", "optim": {"epochs": 60}},
    "nsh-digits.yaml": {**_DIGITS, "method": "nsh", "optim": {"epochs": 30}},
    "pcah-cifar10-1.yaml": {**_CIFAR, "method": "pcah"},
    "pcah-digits.yaml": {**_DIGITS, "method": "pcah"},
    "wch-cifar10-1.yaml": {**_CIFAR, "method": "wch", "optim": {"epochs": 20, "lr": 0.001}},
    "wch-digits.yaml": {**_DIGITS, "method": "wch", "optim": {"epochs": 30}},
}


def _expected(dotted: dict) -> dict:
    out = config_to_dict(TrainConfig())  # the defaults, under what the file said
    for key, value in dotted.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return out


def test_shipped_configs_resolve_as_before_extends():
    names = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert names == sorted(CONFIGS_BEFORE_EXTENDS)
    for name, dotted in CONFIGS_BEFORE_EXTENDS.items():
        got = config_to_dict(resolve_config(ROOT / "configs" / name))
        assert got == _expected(dotted), name
        assert "extends" in (ROOT / "configs" / name).read_text()  # they do share the bases


@pytest.mark.parametrize("value", [None, "", "custom"])
def test_features_data_and_engines_share_one_cache_folder(tmp_path, monkeypatch, value):
    """``CONTRAHASH_CACHE`` unset or empty means ~/.cache/contrahash for every cache alike."""
    from contrahash.data import default_cache_dir as data_cache_dir
    from contrahash.models.engine import _folders as engine_folders
    from contrahash.models.features import FeatureCache

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv("CONTRAHASH_CACHE", raising=False)
    else:
        monkeypatch.setenv("CONTRAHASH_CACHE", str(tmp_path / value) if value else "")
    expected = tmp_path / value if value else tmp_path / "home" / ".cache" / "contrahash"
    assert data_cache_dir() == expected
    assert FeatureCache().root == expected / "features"
    assert engine_folders(tmp_path / 'run')[-1] == expected / "engines"
    assert not (tmp_path / "features").exists()  # never the current directory


def test_one_code_length_limit_for_configs_kernels_and_indexes():
    from contrahash.config import MAX_BITS
    from contrahash.retrieval.hamming import check_bits
    from contrahash.retrieval.index import HammingIndex

    assert check_bits(MAX_BITS) == MAX_BITS
    resolve_config(None, [f"bits=[{MAX_BITS}]"])
    with pytest.raises(ValueError, match=f"1..{MAX_BITS}"):
        check_bits(MAX_BITS + 1)
    with pytest.raises(ConfigError, match=f"1..{MAX_BITS}"):
        resolve_config(None, [f"bits=[{MAX_BITS + 1}]"])
    with pytest.raises(ValueError, match=f"1..{MAX_BITS}"):
        HammingIndex(MAX_BITS + 1)
