"""The model of a run: a backbone and a hashing method, built from a config or read back.

:func:`build_model` is the one place that turns a :class:`~contrahash.config.TrainConfig`
into modules (random draws in a fixed order: the backbone's initialisation, then the
method's, each from ``cfg.seed``). :func:`load_trained` reads a finished run back with
everything needed to encode new images exactly as the run encoded its database: backbone
spec and weights, the method and its weights, input resolution, precision and the test-time
transform.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrahash.config import TrainConfig, resolve_config
from contrahash.features import autocast_dtype, default_eval_batch_size, extract_features
from contrahash.methods.base import HashMethod

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
        """The autocast precision of backbone forwards ("fp32", "bfloat16")."""
        dtype = autocast_dtype(self.device, self.amp)
        return "fp32" if dtype is None else str(dtype).removeprefix("torch.")

    def test_transform(self) -> Callable[..., torch.Tensor]:
        """The test-time transform: resize to the input resolution (no augmentation)."""
        from contrahash.augment import test_transform

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
            tokens=self.tokens, generator=generator, out=out, start=start, on_batch=on_batch)

    def encode_images(self, images: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        """±1 int8 codes of decoded images (uint8 [H, W, 3], any sizes): the same transform,
        forward, precision and rounding as :meth:`extract` + :meth:`encode` on a dataset."""
        from contrahash.features import backbone_inputs, backbone_outputs

        if not len(images):
            return {k: np.zeros((0, k), dtype=np.int8) for k in self.method.bits}
        transform = self.test_transform()
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            x = torch.cat([backbone_inputs(self.backbone, torch.from_numpy(
                np.ascontiguousarray(img))[None], transform, self.device) for img in images])
            features = backbone_outputs(self.backbone, x, self.device, amp=self.amp,
                                        tokens=self.tokens)
        finally:
            self.backbone.train(was_training)
        return self.encode(features)

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
        """Inverse of :meth:`weights`."""
        self.method.load_state_dict({k[7:]: v for k, v in tensors.items()
                                     if k.startswith("method.")})
        backbone = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        if backbone:
            self.backbone.load_state_dict(backbone)


def build_model(cfg: TrainConfig, device: torch.device) -> HashingModel:
    """Backbone and method of ``cfg`` on ``device`` (initialised from ``cfg.seed``)."""
    from contrahash.backbones import build_backbone
    from contrahash.methods import METHODS, build_method

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
    from contrahash.rundir import RunDirectory

    run = RunDirectory(run_dir)
    if not run.is_run():
        raise FileNotFoundError(f"{Path(run_dir)} is not a run directory (no config.yaml)")
    cfg = resolve_config(run.path / "config.yaml")
    if device is not None:
        cfg.device = device
    model = build_model(cfg, select_device(cfg.device))
    model.load_weights(run.load_model(model.device))
    model.method.eval()
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
