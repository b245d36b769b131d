"""Config resolution: defaults, YAML, overrides, clear errors."""

from __future__ import annotations

import pytest

from contrahash.config import ConfigError, resolve_config


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
