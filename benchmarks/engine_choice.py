"""Which engine on this CPU: the frozen EfficientNet-Lite0 forward on torch and on each engine.

    python benchmarks/engine_choice.py --data /path/to/cifar10-jpeg.npz [--batches 1 8 16 64]

EfficientNet-Lite0 with its ImageNet weights at 224 px, frozen, the process's thread policy
and allocator tuning (:mod:`contrahash.runtime`, applied before torch loads, as the CLI does:
without the tuning torch's fp32 forward at batch 64 ran three times slower on an AVX2-only
CPU). Inputs are photos — CIFAR-10 JPEGs upscaled by the test transform and normalised, as
the library feeds them. Each path runs the same inputs through :func:`contrahash.models.features.backbone_outputs` — torch in
the precision of today's default path (bf16 autocast where the CPU has native bf16, else
fp32; channels-last), and every installed engine as :mod:`contrahash.models.engine` compiles
it (OpenVINO bf16 where native, else f32; ONNX Runtime fp32). The paths alternate within each
round, so load on a shared machine falls on all of them alike; a figure is the best round.

Prints one line per batch size and, last::

    engine_choice cpu_bf16=… fastest=… torch_img_s=… openvino_img_s=… onnxruntime_img_s=…

(images per second at the largest batch; the per-image cosine of each engine's features
against torch fp32 is printed with the engine's description).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from contrahash.runtime import apply_thread_policy

apply_thread_policy()  # before torch loads: OpenMP's wait policy is read once, at start-up

import numpy as np  # noqa: E402
import torch  # noqa: E402
from encode_speed import lite0_model  # noqa: E402  (the same model, built the same way)

from contrahash.data import load_source  # noqa: E402
from contrahash.data.augment import test_transform  # noqa: E402
from contrahash.models.engine import ENGINES  # noqa: E402
from contrahash.models.features import backbone_outputs, cpu_has_native_bf16  # noqa: E402
from contrahash.runtime import tune_cpu_allocator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CONTRAHASH_CIFAR10"),
                    help="the packed CIFAR-10 file (default: $CONTRAHASH_CIFAR10)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 64])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="per path, batch and round")
    args = ap.parse_args()
    tune_cpu_allocator()  # as the CLI does, before any tensor work
    if not args.data:
        ap.error("--data: the packed CIFAR-10 file (or set CONTRAHASH_CIFAR10)")
    warnings.simplefilter("ignore")
    engines = ["torch", *ENGINES]  # an engine that is not installed compiles to None
    forwards = {}
    reference = lite0_model("torch", amp=False)
    dataset = load_source(args.data)
    rows = np.linspace(0, len(dataset.images) - 1, max(args.batches)).astype(np.int64)
    x = reference.backbone.normalize(test_transform(dataset.images[rows], 224)).contiguous()
    ref = backbone_outputs(reference.backbone, _layout(x[:8], None), reference.device,
                           amp=False).astype(np.float64)
    for name in engines:
        model = lite0_model(name)
        compiled = model.compiled_forward()
        if name != "torch" and compiled is None:
            print(f"{name}: not installed or not usable here", file=sys.stderr)
            continue
        forwards[name] = (model, compiled)
        out = backbone_outputs(model.backbone, _layout(x[:8], compiled), model.device,
                               amp=model.amp, engine=compiled).astype(np.float64)
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{name}: {model.engine_info()}; min cosine vs torch fp32 {cos.min():.6f}",
              file=sys.stderr)
    best: dict[int, dict[str, float]] = {}
    for batch in args.batches:
        for _ in range(args.rounds):
            for name, (model, compiled) in forwards.items():
                xb = _layout(x[:batch], compiled)
                backbone_outputs(model.backbone, xb, model.device, amp=model.amp, engine=compiled)
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    backbone_outputs(model.backbone, xb, model.device, amp=model.amp,
                                     engine=compiled)
                    n += batch
                rate = n / (time.perf_counter() - start)
                row = best.setdefault(batch, {})
                row[name] = max(row.get(name, 0.0), rate)
        print(f"batch {batch}: " + "  ".join(f"{k} {v:.1f} img/s" for k, v in best[batch].items()),
              flush=True)
    last = best[max(args.batches)]
    fastest = max(last, key=last.__getitem__)
    print(f"engine_choice cpu_bf16={int(cpu_has_native_bf16())} fastest={fastest} "
          + " ".join(f"{k}_img_s={v:.1f}" for k, v in last.items()))


def _layout(x: torch.Tensor, compiled: object) -> torch.Tensor:
    """torch reads channels-last, an engine float32 NCHW (what the library hands each)."""
    return x.contiguous(memory_format=torch.channels_last) if compiled is None else x.contiguous()


if __name__ == "__main__":
    main()
