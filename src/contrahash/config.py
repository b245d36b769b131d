"""Run configuration: dataclasses with defaults in code; YAML files and ``key=value`` on top.

>>> cfg = resolve_config(None, ["method=cibhash", "bits=[16,64]", "backbone.finetune_blocks=6"])
>>> cfg.method, cfg.bits, cfg.backbone.finetune_blocks
('cibhash', [16, 64], 6)

Every resolved config passes :func:`validate_config` (value ranges, the ``optim`` keys), so a
bad value stops before anything runs, with one line naming the dotted field and the value.
A YAML file may start from another with ``extends: other.yaml`` (see :func:`load_yaml`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class ConfigError(ValueError):
    """A configuration file or override names an unknown field or an invalid value."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loader that also reads ``1e-4`` (no dot) as a float, as people write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """Parse YAML text with :class:`_Loader` (safe)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


@dataclass
class DataConfig:
    """Where the images come from and how they are split."""

    source: str = "digits"
    image_root: str | None = None
    protocol: str = "custom"
    #: protocol options (e.g. ``scale`` for scaled-down presets, sizes/fractions for custom)
    protocol_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    cache_dir: str | None = None
    #: how an image folder's sub-folders are read: "albums" (a photo library, no labels),
    #: "folders" (class folders, a labelled dataset), "auto" (folders when the protocol is a
    #: benchmark preset, which needs labels; albums for "custom"). Other sources carry their
    #: own labels (CIFAR, list files) or none (digits are labelled, a flat folder is not).
    labels: str = "auto"


@dataclass
class BackboneConfig:
    """Feature extractor and how much of it trains."""

    name: str = "efficientnet_lite0"
    weights: str | None = None
    random_init: bool = False
    #: 0 = frozen, N = last N blocks fine-tuned, -1 = everything
    finetune_blocks: int = 0
    #: input resolution; None = the backbone's own (224 for lite0)
    image_size: int | None = None


@dataclass
class CacheConfig:
    """What is computed once and cached (what makes CPU training practical)."""

    #: "auto": the backbone's features when it is frozen (for token-grid methods such as WCH:
    #: when the token cache fits in ``max_token_gib``), end to end when it is fine-tuned;
    #: "on": the feature cache, or an error when the backbone is fine-tuned; "off": end to
    #: end; "blocks": fine-tune the last ``backbone.finetune_blocks`` blocks from cached
    #: inputs of those blocks (``views`` augmented views per training image)
    mode: str = "auto"
    #: augmented views per training image computed once
    views: int = 8
    dir: str | None = None
    #: largest token-grid cache (training views + evaluated images, float16) "auto" builds;
    #: CIFAR-10 at 64 px with 4 views is 0.8 GiB, at 224 px with 8 views about 12 GiB
    max_token_gib: float = 4.0


@dataclass
class TrainConfig:
    """Everything one training run needs; written resolved into every run directory."""

    method: str = "fdbh"
    method_config: dict[str, Any] = field(default_factory=dict)
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: overrides of the method's OptimSpec (name, lr, weight_decay, momentum, batch_size,
    #: epochs, backbone_lr_scale, schedule)
    optim: dict[str, Any] = field(default_factory=dict)
    #: overrides of the augmentation recipe parameters (e.g. flip_p: 0 for digits)
    augment: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    #: bf16 autocast of backbone forwards where bf16 is native: CUDA, and CPUs with
    #: AVX512-BF16/AMX (``CONTRAHASH_CPU_BF16=0/1`` overrides the CPU detection); else fp32
    amp: bool = True
    #: channels-last tensors for the backbone (CUDA and CPU)
    channels_last: bool = True
    #: torch.compile the backbone's forward (training, feature extraction and encoding)
    compile: bool = False
    #: torch.compile mode when ``compile`` is set: "default", "reduce-overhead" (CUDA graphs),
    #: "max-autotune", "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    seed: int = 0
    #: images per backbone forward when extracting features / encoding; None = 512 on CUDA,
    #: 64 on CPU (features.default_eval_batch_size)
    eval_batch_size: int | None = None
    #: deterministic CPU kernels (for bit-identical resume checks); slower
    deterministic: bool = False
    #: "query": the protocol's queries against its database (the published number);
    #: "val": the validation split (data.protocol_options.val_size) against the rest of the
    #: database — for tuning learning rates/epochs without ever looking at the queries
    evaluate_on: str = "query"
    out_dir: str = "runs"
    name: str | None = None


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _coerce(value: Any, typ: Any, path: str) -> Any:
    """Check/convert a YAML or CLI value to the annotated type, naming the field on failure."""
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(typ, value, path)
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        try:
            converted = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return converted
    if typ is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no/true/false as booleans
            if path in _ON_OFF_FIELDS:
                return "on" if value else "off"
            raise ConfigError(f"{path}: expected a string, got {value!r} (YAML reads yes/no/"
                              f"on/off/true/false as a boolean; quote the word: {path}='...')")
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


#: string fields whose choices include "on" and "off", which YAML reads as true/false
_ON_OFF_FIELDS = frozenset({"cache.mode"})


def _build(cls: type, values: dict[str, Any], path: str = "") -> Any:
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        where = f"'{path}'" if path else "the top level"
        raise ConfigError(
            f"unknown config key(s) {unknown} in {where}; known keys: {sorted(types)}"
        )
    kwargs = {k: _coerce(v, types[k], f"{path}.{k}" if path else k) for k, v in values.items()}
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. bits=[16,32])")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def merge_value(base: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``base[k1][k2]…[kn] = value`` for ``keys = [k1, …, kn]``, creating sections; a
    mapping merged into a free-form section (e.g. ``optim``) merges key by key."""
    node = base
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: '{key}' is not a section")
    if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
        node[keys[-1]] = {**node[keys[-1]], **value}  # free-form sections merge key by key
    else:
        node[keys[-1]] = value


def load_yaml(path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file into a dict, with errors that name the file.

    A top-level ``extends: other.yaml`` (a path relative to this file) reads that file first
    and lays this file's keys over it: sections (``data``, ``backbone``, …) and free-form
    mappings (``optim``, ``augment``, …) merge key by key, any other value replaces. The base
    may extend another file in turn; a cycle is refused with the chain of files named.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    if EXTENDS_KEY in data:
        data = _extend(path, data, _chain)
    return data


#: the top-level key of a config file that names the file it starts from
EXTENDS_KEY = "extends"


def _extend(path: Path, data: dict[str, Any], chain: tuple[Path, ...]) -> dict[str, Any]:
    """``data`` (read from ``path``) laid over the file its ``extends`` key names."""
    data = dict(data)
    parent = data.pop(EXTENDS_KEY)
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends: expected the path of a YAML file (relative to "
                          f"this one), got {parent!r}")
    chain = (*chain, path)
    target = Path(os.path.normpath(path.parent / os.path.expanduser(parent)))
    seen = [p.resolve() for p in chain]
    if target.resolve() in seen:
        names = " -> ".join(str(p) for p in (*chain, target))
        raise ConfigError(f"{path}: extends cycle: {names}")
    if not target.is_file():
        raise ConfigError(f"{path}: extends: file not found: {target}")
    merged: dict[str, Any] = {}
    for source in (load_yaml(target, chain), data):
        for keys, value in _flatten(source):
            merge_value(merged, keys, value)
    return merged


def resolve_config(
    path: str | os.PathLike | None, overrides: list[str] | None = None, base: dict | None = None
) -> TrainConfig:
    """Defaults ← ``base`` dict ← YAML file ← ``key=value`` overrides → validated TrainConfig."""
    values: dict[str, Any] = {}
    for source in (base or {}), (load_yaml(path) if path else {}):
        for key, value in _flatten(source):
            merge_value(values, key, value)
    for text in overrides or []:
        keys, value = parse_override(text)
        merge_value(values, keys, value)
    try:
        return validate_config(_build(TrainConfig, values))
    except ConfigError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{exc}") from None


#: the longest code length anywhere in the package: configs, the CPU kernels and the index
#: files all check against this one value. A 4096-bit code is already 512 bytes per image, as
#: large as the float features it replaces, so longer codes are not hashing; the kernels, which
#: hold distances as uint16, would allow up to 65535 and so never are the tighter limit.
MAX_BITS = 4096
OPTIM_NAMES = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
CACHE_MODES = ("auto", "on", "off", "blocks")
EVALUATE_ON = ("query", "val")
DATA_LABELS = ("auto", "albums", "folders")


def folder_labels(data: DataConfig) -> str:
    """How ``data``'s image folder is read ("albums" or "folders"), ``auto`` resolved."""
    if data.labels != "auto":
        return data.labels
    return "albums" if data.protocol == "custom" else "folders"


def _optim_types() -> dict[str, Any]:
    """``optim`` key → type: the fields of :class:`contrahash.methods.base.OptimSpec`."""
    from contrahash.methods.base import OptimSpec  # here: importing the methods loads torch

    return get_type_hints(OptimSpec)


def _fail(field: str, rule: str, value: Any) -> None:
    raise ConfigError(f"{field}: {rule}, got {value!r}")


def _check_number(field: str, value: Any, *, low: float, low_open: bool = False,
                  high: float | None = None, high_open: bool = False,
                  finite: bool = True) -> None:
    """``low <= value`` (``<`` when open), ``value <= high`` (``<``), finite unless told."""
    if isinstance(value, float) and (math.isnan(value) or (finite and math.isinf(value))):
        _fail(field, "must be a finite number", value)
    ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        _fail(field, f"must be {lo}{hi}", value)


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(field, f"expected one of {', '.join(choices)}", value)


def _validate_optim(optim: dict[str, Any]) -> dict[str, Any]:
    """``optim`` with known keys only, each value coerced to OptimSpec's type and checked."""
    types = _optim_types()
    unknown = sorted(set(optim) - set(types))
    if unknown:
        raise ConfigError(f"optim: unknown key(s) {unknown}; known keys: {sorted(types)}")
    out = {key: _coerce(value, types[key], f"optim.{key}") for key, value in optim.items()}
    ranges: dict[str, dict[str, Any]] = {
        "epochs": {"low": 1},
        "batch_size": {"low": 2},
        "lr": {"low": 0, "low_open": True},
        "weight_decay": {"low": 0},
        "momentum": {"low": 0, "high": 1, "high_open": True},
        "backbone_lr_scale": {"low": 0},
    }
    for key, value in out.items():
        if key in ranges:
            _check_number(f"optim.{key}", value, **ranges[key])
    if "name" in out:
        _check_choice("optim.name", out["name"], OPTIM_NAMES)
    if "schedule" in out:
        _check_choice("optim.schedule", out["schedule"], SCHEDULES)
    return out


def _validate_bits(bits: list[int]) -> None:
    if not bits:
        _fail("bits", "expected a non-empty list of code lengths, e.g. [16, 32, 64]", bits)
    for value in bits:
        if not 1 <= value <= MAX_BITS:
            _fail("bits", f"code lengths must be integers in 1..{MAX_BITS} (a {MAX_BITS}-bit "
                  "code is already as large as the float features it replaces: longer codes "
                  "are not hashing)", value)
    repeated = sorted({b for b in bits if bits.count(b) > 1})
    if repeated:
        _fail("bits", f"code lengths must be distinct ({repeated[0]} is listed twice)", bits)


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check every value's range or choice and the ``optim`` keys; returns ``cfg`` with its
    ``optim`` values converted to :class:`~contrahash.methods.base.OptimSpec`'s types.

    Raises :class:`ConfigError` with one line naming the dotted field and the bad value.
    Field types were already checked by :func:`resolve_config`'s build step.
    """
    cfg.optim = _validate_optim(cfg.optim)
    _validate_bits(cfg.bits)
    _check_number("seed", cfg.seed, low=0)
    _check_number("data.seed", cfg.data.seed, low=0)
    _check_number("backbone.finetune_blocks", cfg.backbone.finetune_blocks, low=-1)
    if cfg.backbone.image_size is not None:
        _check_number("backbone.image_size", cfg.backbone.image_size, low=8)
    _check_number("cache.views", cfg.cache.views, low=1)
    _check_choice("cache.mode", cfg.cache.mode, CACHE_MODES)
    _check_number("cache.max_token_gib", cfg.cache.max_token_gib, low=0, finite=False)
    if cfg.eval_batch_size is not None:
        _check_number("eval_batch_size", cfg.eval_batch_size, low=1)
    _check_choice("evaluate_on", cfg.evaluate_on, EVALUATE_ON)
    _check_choice("data.labels", cfg.data.labels, DATA_LABELS)
    _check_choice("compile_mode", cfg.compile_mode, COMPILE_MODES)
    return cfg


def _flatten(d: dict[str, Any], prefix: list[str] | None = None):
    """Yield (key path, value) with dict-valued *sections* descended, free-form dicts kept whole."""
    prefix = prefix or []
    for key, value in d.items():
        path = [*prefix, str(key)]
        if isinstance(value, dict) and path[-1] not in FREE_FORM_SECTIONS:
            yield from _flatten(value, path)
        else:
            yield path, value


#: dict-typed fields whose contents are method/protocol specific (validated elsewhere): a YAML
#: mapping under one of them is a value, not a section of TrainConfig
FREE_FORM_SECTIONS = frozenset({"method_config", "protocol_options", "optim", "augment"})


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a (nested) config dataclass, for YAML/JSON."""
    return dataclasses.asdict(cfg)


def expand_source(source: str) -> str:
    """Expand ``$VARS`` and ``~`` in a data source; name the variable when it is unset.

    Configs refer to data by variable (e.g. ``${CONTRAHASH_CIFAR10}``), never by a path of
    one machine.
    """
    expanded = os.path.expanduser(os.path.expandvars(str(source)))
    if "$" in expanded:
        raise ConfigError(
            f"data.source '{source}': environment variable not set; export it or pass "
            "data.source=PATH (e.g. data.source=/path/to/cifar10-jpeg.npz)"
        )
    return expanded
