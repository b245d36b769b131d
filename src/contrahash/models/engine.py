"""CPU inference engines for the frozen part of a backbone (OpenVINO, ONNX Runtime).

On a CPU every image a user waits for — the feature cache before training, ``encode``,
``index build/add``, each image query of ``serve`` — goes through one forward of a backbone
whose weights no longer change. PyTorch runs that forward op by op; an inference engine
compiles the whole graph once (fused convolutions, bf16 kernels on AVX512-BF16/AMX) and runs
it markedly faster (``docs/engine.md``; figures in ``docs/results.md``). This module turns a
frozen part of a :class:`~contrahash.models.backbones.Backbone` into such a compiled forward:

* **parts**: ``("features",)`` (the pooled features), ``("tokens",)`` (the token grid) or
  ``("blocks", n)`` (the frozen prefix below the last ``n`` blocks, the block cache's input);
* **export**: the part goes through ``torch.onnx.export`` (fp32, dynamic batch); OpenVINO
  keeps it as its IR (``.xml``/``.bin``, fp32 weights), ONNX Runtime reads the ``.onnx``;
* **cache**: the files live in an ``engine/`` folder next to the model they belong to (a run
  directory, a collection's ``model/``; the user cache for a model being trained), named by a
  hash of everything they depend on — weights hash, part, image size, engine and its version,
  torch's version, precision, this module's :data:`ENGINE_FORMAT`. A sidecar ``.json``
  records the sha256 of every file: a missing, stale or corrupt file is rebuilt, never
  trusted;
* **trust**: a compiled part is only used after it reproduces the torch fp32 forward on probe
  images (cosine ≥ :data:`PROBE_MIN_COSINE`). Any failure — the engine not installed, a CPU
  it refuses, an export that fails, a probe that disagrees — falls back to torch with one
  warning, never a wrong code.

Which engine: ``"torch"`` (none), ``"auto"`` (the default: the first installed of
:func:`auto_order`, for backbones of at least :data:`AUTO_MIN_PARAMETERS` parameters on the
CPU), or a name. The process default comes from :func:`set_default_engine` (the CLI's
``--engine``) or ``CONTRAHASH_ENGINE``. CUDA always runs torch. The engine runs on the thread
count of :mod:`contrahash.runtime`'s policy (its own pool, while torch's OpenMP team sleeps:
one team busy at a time, never more threads than the policy's count).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads on first use: `index info` reads a manifest, nothing more
    import torch

__all__ = [
    "AUTO_MIN_PARAMETERS",
    "ENGINES",
    "ENGINE_FORMAT",
    "CompiledPart",
    "auto_order",
    "check_engine_name",
    "compile_part",
    "default_engine",
    "engine_note",
    "engine_threads",
    "resolve_engine",
    "set_default_engine",
    "weights_hash",
]

#: the engines; "auto" takes the first installed of :func:`auto_order` (docs/engine.md)
ENGINES = ("openvino", "onnxruntime")
#: what every choice may name
CHOICES = ("auto", "torch", *ENGINES)
#: version of the export recipe: a change here rebuilds every cached export
ENGINE_FORMAT = 1
#: "auto" leaves smaller backbones to torch: the export would cost more than it saves
AUTO_MIN_PARAMETERS = 1_000_000
#: a compiled part must reproduce torch fp32 on the probe images at least this well
PROBE_MIN_COSINE = 0.99

Part = tuple[Any, ...]

_default: str | None = None
_warned: set[str] = set()
_warn_lock = threading.Lock()


def check_engine_name(name: str, where: str = "--engine") -> str:
    """``name`` normalised; a ValueError naming ``where`` and the choices when unknown."""
    value = str(name).strip().lower()
    if value not in CHOICES:
        raise ValueError(f"{where}={name!r}: unknown engine (use {', '.join(CHOICES)})")
    return value


def set_default_engine(name: str | None) -> None:
    """The process default engine (None: back to ``CONTRAHASH_ENGINE`` or "auto")."""
    global _default
    _default = None if name is None else check_engine_name(name)


def default_engine() -> str:
    """The engine a model uses unless it names one: :func:`set_default_engine`, else
    ``CONTRAHASH_ENGINE``, else "auto"."""
    if _default is not None:
        return _default
    env = os.environ.get("CONTRAHASH_ENGINE")
    return check_engine_name(env, "CONTRAHASH_ENGINE") if env else "auto"


def warn_once(message: str) -> None:
    """One warning line per distinct message and process (the CLI shows it as one line)."""
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _installed(name: str) -> bool:
    import importlib.util

    module = {"openvino": "openvino", "onnxruntime": "onnxruntime"}[name]
    return importlib.util.find_spec(module) is not None


def auto_order() -> tuple[str, ...]:
    """The engines "auto" tries, in order, on this CPU: OpenVINO first where the CPU has
    native bf16 (its bf16 forward was the fastest measured), ONNX Runtime first elsewhere —
    both run fp32 there, and ONNX Runtime was the faster at the batches of caches and index
    builds (docs/engine.md)."""
    from contrahash.models.features import cpu_has_native_bf16

    return ENGINES if cpu_has_native_bf16() else ("onnxruntime", "openvino")


def resolve_engine(request: str | None, backbone: Any, device: torch.device) -> str:
    """The engine a frozen forward of ``backbone`` on ``device`` should use ("torch" for
    none): CUDA and "torch" → torch; "auto" → the first installed of :func:`auto_order` for a
    backbone of at least :data:`AUTO_MIN_PARAMETERS` parameters; a named engine that is not
    installed → torch, with one warning."""
    import torch

    name = check_engine_name(request or default_engine())
    if torch.device(device).type != "cpu" or name == "torch":
        return "torch"
    if name == "auto":
        size = sum(p.numel() for p in backbone.parameters())
        if size < AUTO_MIN_PARAMETERS:
            return "torch"
        return next((e for e in auto_order() if _installed(e)), "torch")
    if not _installed(name):
        warn_once(f"engine {name!r} is not installed (pip install 'contrahash[engine]'); "
                  "encoding with torch")
        return "torch"
    return name


def engine_note(recorded: dict[str, Any] | None) -> str:
    """One line for ``index info``: the engine that encoded a collection (its manifest's
    ``run.engine``) and what would encode a query here, where a mismatch means codes that may
    differ from the indexed ones by a few bits."""
    if not recorded:
        return "engine: not recorded (encoded by torch)"
    name = str(recorded.get("name", "torch"))
    line = f"engine: {name} {recorded.get('precision', '')} {recorded.get('version', '')}".strip()
    request = default_engine()
    if name == "torch" or (request in ("auto", name) and _installed(name)):
        return line
    why = "--engine torch" if request == "torch" else (
        f"{name} is not installed here" if not _installed(name) else f"--engine {request}")
    return (f"{line}; MISMATCH: queries here would be encoded by another engine ({why}), "
            "codes may differ from the indexed ones by a few bits")


def engine_threads() -> int:
    """The engine's thread count: the thread policy's (:mod:`contrahash.runtime`), else
    torch's count in the calling thread."""
    import torch

    from contrahash.runtime import policy_threads

    return policy_threads() or int(torch.get_num_threads())


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 (24 hex digits) of a module's state: names, dtypes, shapes and values."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _precision(name: str, amp: bool) -> str:
    """bf16 where OpenVINO may use native bf16 kernels (and the model asks for amp), else f32."""
    from contrahash.models.features import cpu_has_native_bf16

    return "bf16" if name == "openvino" and amp and cpu_has_native_bf16() else "f32"


def _version(name: str) -> str:
    if name == "openvino":
        import openvino

        return str(openvino.get_version())
    import onnxruntime

    return str(onnxruntime.__version__)


@dataclass
class CompiledPart:
    """A frozen backbone part compiled by an engine: ``part(x)`` maps a float32 NCHW batch of
    normalised images (numpy, C-contiguous) to the part's float32 output."""

    engine: str
    precision: str
    version: str
    threads: int
    part: Part
    file: Path
    run: Callable[[np.ndarray], np.ndarray]

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # one inference at a time per compiled part

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.run(np.ascontiguousarray(x, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the engine that encoded."""
        return {"name": self.engine, "precision": self.precision, "version": self.version,
                "threads": self.threads, "part": list(self.part), "file": self.file.name}


def _part_module(backbone: Any, part: Part) -> torch.nn.Module:
    """The exported graph: one part of a backbone, calling the class's own methods (a
    ``torch.compile``-d bound forward on the instance is not traced)."""
    import torch

    class PartModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            cls = type(self.backbone)
            if part[0] == "features":
                return cls.forward(self.backbone, x)
            if part[0] == "tokens":
                return cls.forward_tokens(self.backbone, x)
            return cls.block_input(self.backbone, x, int(part[1]))

    return PartModule()


def torch_reference(backbone: Any, part: Part, x: torch.Tensor) -> torch.Tensor:
    """The torch fp32 output of ``part`` (what a compiled part must reproduce)."""
    import torch

    with torch.no_grad():
        return _part_module(backbone, part)(x).float()


def _probe(backbone: Any, size: int) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(0)
    x01 = torch.rand(2, 3, size, size, generator=generator)
    return backbone.normalize(x01).contiguous()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _export_onnx(backbone: Any, part: Part, size: int, target: Path) -> None:
    """fp32 ONNX of ``part`` with a dynamic batch dimension, written to ``target``."""
    import torch

    x = _probe(backbone, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
        torch.onnx.export(_part_module(backbone, part), (x,), str(target), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=17, dynamo=False)


def _files(name: str, stem: str) -> list[str]:
    return [f"{stem}.xml", f"{stem}.bin"] if name == "openvino" else [f"{stem}.onnx"]


def _build(name: str, backbone: Any, part: Part, size: int, folder: Path, stem: str,
           key: dict[str, Any]) -> None:
    """Export ``part`` into ``folder`` under ``stem`` (atomically: temporary names, then
    renames, the sidecar last — a half-written export is never taken for a finished one)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".tmp-{os.getpid()}-{threading.get_ident()}-{stem}"
    onnx_path = folder / f"{tmp}.onnx"
    written: list[Path] = []
    try:
        _export_onnx(backbone, part, size, onnx_path)
        written.append(onnx_path)
        if name == "openvino":
            import openvino

            model = openvino.Core().read_model(str(onnx_path))
            openvino.save_model(model, str(folder / f"{tmp}.xml"), compress_to_fp16=False)
            written += [folder / f"{tmp}.xml", folder / f"{tmp}.bin"]
        hashes = {}
        for final in _files(name, stem):
            source = folder / final.replace(stem, tmp, 1)
            hashes[final] = _sha256(source)
            os.replace(source, folder / final)
        sidecar = folder / f"{tmp}.json"
        sidecar.write_text(json.dumps({"key": key, "files": hashes}, indent=1, sort_keys=True))
        os.replace(sidecar, folder / f"{stem}.json")
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _intact(folder: Path, name: str, stem: str, key: dict[str, Any]) -> bool:
    """Whether the cached export exists, was made for ``key`` and has its recorded bytes."""
    try:
        meta = json.loads((folder / f"{stem}.json").read_text())
        files = meta["files"]
        if meta["key"] != json.loads(json.dumps(key)) or sorted(files) != sorted(_files(name, stem)):
            return False
        return all(_sha256(folder / f) == digest for f, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _load(name: str, folder: Path, stem: str, precision: str, threads: int
          ) -> Callable[[np.ndarray], np.ndarray]:
    if name == "openvino":
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(folder / f"{stem}.xml")), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        request = compiled.create_infer_request()
        return lambda x: np.asarray(request.infer({0: x})[0], dtype=np.float32).copy()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning between runs: the cores are shared (see contrahash.runtime)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(folder / f"{stem}.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    return lambda x: np.asarray(session.run(None, {"x": x})[0], dtype=np.float32)


def _verified(backbone: Any, part: Part, size: int, run: Callable[[np.ndarray], np.ndarray]
              ) -> float:
    """Lowest per-image cosine between the compiled part and torch fp32 on probe images."""
    x = _probe(backbone, size)
    ref = torch_reference(backbone, part, x).reshape(len(x), -1).numpy().astype(np.float64)
    out = np.asarray(run(x.numpy()), dtype=np.float64)
    if out.shape[0] != len(x) or out.size != ref.size:
        return -1.0
    out = out.reshape(len(x), -1)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-30)
    return float(cos.min()) if np.isfinite(cos).all() else -1.0


def compile_part(name: str, backbone: Any, part: Part, size: int, folder: Path, *,
                 amp: bool = True, threads: int | None = None) -> CompiledPart | None:
    """``part`` of ``backbone`` at ``size`` px compiled by engine ``name``, from the cached
    export in ``folder`` (rebuilt when missing, stale or corrupt); None, with one warning,
    when anything fails (the caller then runs torch)."""
    import torch

    threads = threads or engine_threads()
    was_training = backbone.training
    backbone.eval()
    try:
        precision = _precision(name, amp)
        version = _version(name)
        key = {"format": ENGINE_FORMAT, "engine": name, "engine_version": version,
               "torch": torch.__version__, "backbone": getattr(backbone, "name", "?"),
               "part": list(part), "size": int(size), "precision": precision,
               "weights": weights_hash(backbone)}
        stem = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        run = None
        for candidate in _folders(folder):  # a read-only collection may still hold its export
            if _intact(candidate, name, stem, key):
                try:
                    run = _load(name, candidate, stem, precision, threads)
                except Exception:  # unreadable despite its hashes: rebuilt below
                    continue
                if candidate != folder:  # found in the user cache: keep a copy by the model
                    _copy_export(candidate, folder, name, stem)
                folder = candidate
                break
        if run is None:
            folder = _writable(folder)
            _build(name, backbone, part, size, folder, stem, key)
            run = _load(name, folder, stem, precision, threads)
        cosine = _verified(backbone, part, size, run)
        if cosine < PROBE_MIN_COSINE:
            warn_once(f"engine {name}: its {part[0]} disagree with torch (cosine {cosine:.4f} "
                      f"< {PROBE_MIN_COSINE}); encoding with torch")
            return None
        return CompiledPart(name, precision, version, threads, part,
                            folder / _files(name, stem)[0], run)
    except Exception as exc:  # import error, CPU refused, export failed: torch it is
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        warn_once(f"engine {name} unavailable ({type(exc).__name__}: {reason}); "
                  "encoding with torch")
        return None
    finally:
        backbone.train(was_training)


def _copy_export(source: Path, target: Path, name: str, stem: str) -> None:
    """Best effort: the export's files (sidecar last, atomically) into ``target``."""
    import shutil

    try:
        target.mkdir(parents=True, exist_ok=True)
        tmp = f".tmp-{os.getpid()}-{threading.get_ident()}"
        for file in [*_files(name, stem), f"{stem}.json"]:
            shutil.copyfile(source / file, target / f"{tmp}-{file}")
            os.replace(target / f"{tmp}-{file}", target / file)
    except OSError:  # a read-only model folder: the user cache's copy serves
        pass


def _folders(folder: Path) -> list[Path]:
    from contrahash.io import default_cache_dir

    return [folder, default_cache_dir() / "engines"]


def _writable(folder: Path) -> Path:
    """``folder``, or the user cache's engine folder when ``folder`` cannot be written (a
    read-only collection)."""
    from contrahash.io import default_cache_dir

    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = default_cache_dir() / "engines"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback
