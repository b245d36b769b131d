"""The model of a run: a backbone and a hashing method, built from a config or read back.

:func:`build_model` is the one place that turns a :class:`~contrahash.config.TrainConfig`
into modules (random draws in a fixed order: the backbone's initialisation, then the
method's, each from ``cfg.seed``). :func:`load_trained` reads a finished run back with
everything needed to encode new images exactly as the run encoded its database: backbone
spec and weights, the method and its weights, input resolution, precision and the test-time
transform.

On the CPU, the forwards of a backbone whose weights no longer change (frozen, or read back
by :func:`load_trained`) and the frozen prefix under a block cache run on an inference
engine when one is installed (:mod:`contrahash.models.engine`; ``HashingModel.engine`` picks it,
:attr:`HashingModel.engine_name` says which one encodes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrahash.config import TrainConfig, resolve_config
from contrahash.methods.base import HashMethod
from contrahash.models.features import autocast_dtype, default_eval_batch_size, extract_features

__all__ = ["HashingModel", "build_model", "encode_features", "load_trained", "select_device"]


def select_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU; a clear error for an absent CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    return device


@dataclass
class HashingModel:
    """A backbone and a method on one device, with the settings their forwards use."""

    backbone: Any
    method: HashMethod
    device: torch.device
    image_size: int
    amp: bool = True
    channels_last: bool = True
    eval_batch_size: int = 64
    #: the requested inference engine ("auto", "torch", "openvino", "onnxruntime"); None:
    #: the process default (:func:`contrahash.models.engine.default_engine`)
    engine: str | None = None
    #: where compiled exports are cached (a run's or a collection's ``engine/``); None: the
    #: user cache's ``engines/``
    engine_dir: Path | None = None
    #: the backbone's weights will not change (a finished run read back): its whole forward
    #: may run on the engine even when it was fine-tuned
    weights_fixed: bool = False
    _compiled: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)
    _compile_lock: threading.Lock = field(default_factory=threading.Lock, repr=False,
                                          compare=False)

    @property
    def tokens(self) -> bool:
        """Whether the method reads token grids ``[N, T, d]`` instead of vectors."""
        return self.method.input_kind == "tokens"

    @property
    def frozen(self) -> bool:
        """No backbone parameter trains: its features can be cached."""
        return self.backbone.is_frozen

    @property
    def precision(self) -> str:
        """The precision of backbone forwards: torch's autocast precision ("fp32",
        "bfloat16"), or the engine's ("openvino-bf16", "onnxruntime-f32") when one runs them
        (feature caches are keyed by it)."""
        compiled = self.compiled_forward()
        if compiled is not None:
            return f"{compiled.engine}-{compiled.precision}"
        return self.torch_precision

    @property
    def torch_precision(self) -> str:
        """The autocast precision of torch's backbone forwards ("fp32", "bfloat16")."""
        dtype = autocast_dtype(self.device, self.amp)
        return "fp32" if dtype is None else str(dtype).removeprefix("torch.")

    # -- the inference engine ------------------------------------------------------------
    def compiled(self, part: tuple[Any, ...]) -> Any:
        """The engine-compiled ``part`` of the backbone (:class:`~contrahash.models.engine.CompiledPart`:
        ``("features",)``, ``("tokens",)`` or ``("blocks", n)`` for the frozen prefix below the
        last n blocks), or None where torch runs it: CUDA, ``engine="torch"``, no engine
        installed, weights that still train, or a failed export (one warning). Compiled once
        per model and part."""
        with self._compile_lock:
            if part not in self._compiled:
                self._compiled[part] = self._compile(part)
            return self._compiled[part]

    def _compile(self, part: tuple[Any, ...]) -> Any:
        from contrahash.io import default_cache_dir
        from contrahash.models.engine import compile_part, resolve_engine

        backbone = self.backbone
        if part[0] == "blocks":
            blocks = backbone.blocks()
            prefix = blocks[:len(blocks) - int(part[1])]
            if not prefix or any(p.requires_grad for b in prefix for p in b.parameters()):
                return None
        elif not (self.frozen or self.weights_fixed) or not any(True for _ in backbone.parameters()):
            return None
        name = resolve_engine(self.engine, backbone, self.device)
        if name == "torch":
            return None
        folder = self.engine_dir if self.engine_dir is not None else default_cache_dir() / "engines"
        return compile_part(name, backbone, part, self.image_size, Path(folder), amp=self.amp)

    def compiled_forward(self) -> Any:
        """The compiled forward behind :meth:`extract` and :meth:`encode_images` (or None)."""
        return self.compiled(("tokens",) if self.tokens else ("features",))

    @property
    def engine_name(self) -> str:
        """Which engine encodes: "openvino", "onnxruntime" or "torch"."""
        compiled = self.compiled_forward()
        return "torch" if compiled is None else compiled.engine

    def engine_info(self) -> dict[str, Any]:
        """What a collection records about the forward that encoded it: engine name,
        precision, version, threads (torch: its precision and version)."""
        compiled = self.compiled_forward()
        if compiled is not None:
            return compiled.describe()
        return {"name": "torch", "precision": self.torch_precision, "version": torch.__version__}

    def test_transform(self) -> Callable[..., torch.Tensor]:
        """The test-time transform: resize to the input resolution (no augmentation)."""
        from contrahash.data.augment import test_transform

        size = self.image_size
        return lambda x: test_transform(x, size)

    def extract(self, images: Any, indices: Sequence[int] | np.ndarray,
                transform: Callable[..., torch.Tensor] | None = None, *,
                out: np.ndarray | None = None, start: int = 0,
                generator: torch.Generator | None = None,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Backbone outputs (float16 rows) of ``images[indices]``; test transform by default.

        Fills ``out`` from row ``start`` when given (resumable caches); ``on_batch(n)`` is
        called after every batch of n images (progress).
        """
        return extract_features(
            self.backbone, images, indices, transform or self.test_transform(),
            device=self.device, batch_size=self.eval_batch_size, amp=self.amp,
            tokens=self.tokens, generator=generator, out=out, start=start, on_batch=on_batch,
            engine=self.compiled_forward())

    def prepare_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The forward's inputs of decoded images (uint8 [H, W, 3], any sizes): resized,
        normalised, in the layout the forward reads (float32 NCHW for the engine,
        channels-last for torch), one row per image. The per-image CPU work before the
        forward, separate from :meth:`encode_prepared` so that a service can run it on its
        decoding threads while the encoder thread runs the previous batch."""
        from contrahash.models.features import backbone_inputs

        if not len(images):
            raise ValueError("prepare_images: no images")
        transform = self.test_transform()
        engine = self.compiled_forward()
        rows = [backbone_inputs(self.backbone, torch.from_numpy(np.ascontiguousarray(img))[None],
                                transform, self.device, channels_last=engine is None)
                for img in images]
        x = torch.cat(rows)
        return x.float().contiguous() if engine is not None else x

    def encode_prepared(self, x: torch.Tensor) -> dict[int, np.ndarray]:
        """±1 int8 codes of inputs made by :meth:`prepare_images` (rows of several calls may
        be concatenated): the forward, precision and rounding of :meth:`extract` +
        :meth:`encode` on a dataset."""
        from contrahash.models.features import backbone_outputs

        was_training = self.backbone.training
        self.backbone.eval()
        try:
            features = backbone_outputs(self.backbone, x, self.device, amp=self.amp,
                                        tokens=self.tokens, engine=self.compiled_forward())
        finally:
            self.backbone.train(was_training)
        return self.encode(features)

    def encode_images(self, images: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        """±1 int8 codes of decoded images (uint8 [H, W, 3], any sizes): the same transform,
        forward, precision and rounding as :meth:`extract` + :meth:`encode` on a dataset."""
        if not len(images):
            return {k: np.zeros((0, k), dtype=np.int8) for k in self.method.bits}
        return self.encode_prepared(self.prepare_images(images))

    def encode(self, features: torch.Tensor | np.ndarray) -> dict[int, np.ndarray]:
        """±1 int8 codes per code length of test-time features."""
        return encode_features(self.method, features, device=self.device)

    def weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the method's state, and the backbone's when it trains."""
        tensors = {f"method.{k}": v for k, v in self.method.state_dict().items()}
        if not self.frozen:  # fine-tuned backbone: keep all of it (BN statistics included)
            tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`weights` (compiled backbone parts are dropped: new weights)."""
        with self._compile_lock:
            self._compiled.clear()
        self.method.load_state_dict({k[7:]: v for k, v in tensors.items()
                                     if k.startswith("method.")})
        backbone = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        if backbone:
            self.backbone.load_state_dict(backbone)


def build_model(cfg: TrainConfig, device: torch.device) -> HashingModel:
    """Backbone and method of ``cfg`` on ``device`` (initialised from ``cfg.seed``)."""
    from contrahash.methods import METHODS, build_method
    from contrahash.models.backbones import build_backbone

    if cfg.method not in METHODS:
        build_method(cfg.method, 1, cfg.bits)  # raises the "unknown method" message
    bb = cfg.backbone
    torch.manual_seed(cfg.seed)  # random-init backbones are a function of the seed
    backbone = build_backbone(bb.name, weights=bb.weights, random_init=bb.random_init,
                              finetune_blocks=bb.finetune_blocks, image_size=bb.image_size)
    backbone.to(device)
    if cfg.channels_last:
        backbone.to(memory_format=torch.channels_last)
    if cfg.compile:
        # compile the bound forward(s), not the module: state_dict keys stay unchanged
        for name in ("forward", "forward_tokens"):
            setattr(backbone, name, torch.compile(getattr(backbone, name), mode=cfg.compile_mode))
    tokens = METHODS[cfg.method].input_kind == "tokens"
    dim = backbone.token_dim if tokens else backbone.feature_dim
    torch.manual_seed(cfg.seed)
    method = build_method(cfg.method, dim, cfg.bits, cfg.method_config).to(device)
    return HashingModel(backbone, method, device, bb.image_size or backbone.input_size,
                        amp=cfg.amp, channels_last=cfg.channels_last,
                        eval_batch_size=cfg.eval_batch_size or default_eval_batch_size(device))


def load_trained(run_dir: str | os.PathLike, device: str | None = None
                 ) -> tuple[TrainConfig, HashingModel]:
    """A finished run's config and model (weights from model.safetensors), ready to encode."""
    from contrahash.training.rundir import RunDirectory

    run = RunDirectory(run_dir)
    if not run.is_run():
        raise FileNotFoundError(f"{Path(run_dir)} is not a run directory (no config.yaml)")
    cfg = resolve_config(run.path / "config.yaml")
    if device is not None:
        cfg.device = device
    model = build_model(cfg, select_device(cfg.device))
    model.load_weights(run.load_model(model.device))
    model.method.eval()
    model.weights_fixed = True  # read back to encode: nothing trains any more
    model.engine_dir = run.path / "engine"
    return cfg, model


def encode_features(method: HashMethod, features: torch.Tensor | np.ndarray, chunk: int = 4096,
                    device: torch.device | str | None = None) -> dict[int, np.ndarray]:
    """±1 int8 codes per code length for test-time features, in chunks."""
    method.eval()
    device = device or next(iter(method.parameters()), torch.empty(0)).device
    parts: dict[int, list[np.ndarray]] = {k: [] for k in method.bits}
    with torch.no_grad():
        for start in range(0, features.shape[0], chunk):
            block = torch.as_tensor(np.asarray(features[start : start + chunk])).float().to(device)
            for k, c in method.encode(block).items():
                parts[k].append(c.to("cpu", torch.int8).numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
