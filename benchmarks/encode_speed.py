"""Encoding speed and code agreement: today's torch path against the default CPU engine.

    python benchmarks/encode_speed.py --data /path/to/cifar10-jpeg.npz

EfficientNet-Lite0 with its ImageNet weights at 224 px, CIFAR-10 JPEGs upscaled by the test
transform, the process's thread policy (contrahash.runtime, applied before torch loads, as the
CLI does). In one process:

1. an FDBH 64-bit head is trained (``--train`` images, two flip/crop views each, features from
   the torch bf16 path — today's default — so the head owes nothing to the engine);
2. the same ``--eval`` images, in the same batches of ``--batch``, are encoded by the torch
   path (bf16 autocast where native, channels-last: ``--engine torch``) and by the default
   engine (``--engine auto``), alternately for ``--rounds`` rounds; speed is images per
   second of :meth:`HashingModel.extract` (transform, forward, float16 rows), median round;
3. codes of the trained head from torch fp32 features are the reference: the fraction of bits
   equal to them, for the engine's features and for torch bf16's.

Final line::

    encode_speedup_vs_torch=… code_bit_agreement=… torch_bf16_bit_agreement=… engine=…
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from contrahash.runtime import apply_thread_policy

apply_thread_policy()  # before torch loads: OpenMP's wait policy is read once, at start-up

import numpy as np  # noqa: E402
import torch  # noqa: E402

from contrahash.config import resolve_config  # noqa: E402
from contrahash.models.model import HashingModel, build_model  # noqa: E402
from contrahash.runtime import thread_settings, tune_cpu_allocator  # noqa: E402


def lite0_model(engine: str, amp: bool = True, bits: int = 64) -> HashingModel:
    """EfficientNet-Lite0 (ImageNet weights, frozen) + an FDBH head, on the CPU."""
    cfg = resolve_config(None, ["backbone.name=efficientnet_lite0", "backbone.image_size=224",
                                "method=fdbh", f"bits=[{bits}]", "device=cpu",
                                f"amp={'true' if amp else 'false'}",
                                "method_config.neighbour_prob=0"])
    model = build_model(cfg, torch.device("cpu"))
    model.engine = engine
    return model


def train_head(model: HashingModel, images: object, rows: np.ndarray, epochs: int) -> None:
    """Train the model's FDBH head on two views per image (flip; 87.5 % crop) of torch
    features."""
    from contrahash.training.loop import train_on_features

    size = model.image_size

    def flipped(x: torch.Tensor, **_: object) -> torch.Tensor:
        from contrahash.data.augment import test_transform

        return test_transform(x, size).flip(-1)

    def cropped(x: torch.Tensor, **_: object) -> torch.Tensor:
        from contrahash.data.augment import test_transform

        y = test_transform(x, size + size // 7)
        lo = (y.shape[-1] - size) // 2
        return y[..., lo:lo + size, lo:lo + size]

    views = np.stack([model.extract(images, rows, t) for t in (None, flipped, cropped)], axis=1)
    train_on_features(model.method, torch.from_numpy(views.astype(np.float32)), epochs=epochs)
    model.method.eval()


def timed(model: HashingModel, images: object, rows: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    features = model.extract(images, rows)
    return time.perf_counter() - t0, features


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("CONTRAHASH_CIFAR10"),
                    help="packed CIFAR-10 JPEGs (default: $CONTRAHASH_CIFAR10)")
    ap.add_argument("--train", type=int, default=1024, help="images the head trains on")
    ap.add_argument("--eval", type=int, default=1024, help="images encoded and compared")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64, help="images per forward")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engine", default="auto", help="the engine compared with torch")
    args = ap.parse_args()
    if not args.data:
        sys.exit("error: --data: give the packed CIFAR-10 file (or set CONTRAHASH_CIFAR10)")
    tune_cpu_allocator()
    from contrahash.data import load_source

    dataset = load_source(args.data)
    images = dataset.images
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    train_rows, eval_rows = order[:args.train], order[args.train:args.train + args.eval]

    torch_bf16 = lite0_model("torch")
    torch_fp32 = lite0_model("torch", amp=False)
    engine = lite0_model(args.engine)
    for m in (torch_bf16, torch_fp32, engine):
        m.eval_batch_size = args.batch
    t0 = time.perf_counter()
    info = engine.engine_info()  # export (or cached export) + compile + probe check
    print(f"engine: {info} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    train_head(torch_bf16, images, train_rows, args.epochs)
    for m in (torch_fp32, engine):
        m.method.load_state_dict(torch_bf16.method.state_dict())
        m.method.eval()
    print(f"head trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    timed(torch_bf16, images, eval_rows[:args.batch])  # warm both paths up
    timed(engine, images, eval_rows[:args.batch])
    times: dict[str, list[float]] = {"torch": [], "engine": []}
    feats: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, m in (("torch", torch_bf16), ("engine", engine)):
            seconds, features = timed(m, images, eval_rows)
            times[name].append(seconds)
            feats.setdefault(name, features)
            print(f"round {r} {name}: {len(eval_rows) / seconds:.1f} img/s", file=sys.stderr)
    fp32 = torch_fp32.extract(images, eval_rows)
    reference = torch_fp32.encode(fp32)[64]
    bf16_codes = torch_bf16.encode(feats["torch"])[64]
    engine_codes = engine.encode(feats["engine"])[64]

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())

    torch_ips = len(eval_rows) / float(np.median(times["torch"]))
    engine_ips = len(eval_rows) / float(np.median(times["engine"]))
    print(f"torch (bf16 autocast={torch_bf16.torch_precision}, channels-last): "
          f"{torch_ips:.1f} img/s; engine {engine.precision}: {engine_ips:.1f} img/s; "
          f"min feature cosine vs torch fp32: engine {cosine(feats['engine'], fp32):.5f}, "
          f"torch bf16 {cosine(feats['torch'], fp32):.5f}; images {len(eval_rows)}, "
          f"batch {args.batch}, threads {thread_settings()['policy']}", file=sys.stderr)
    print(f"encode_speedup_vs_torch={engine_ips / torch_ips:.3f} "
          f"code_bit_agreement={agreement(engine_codes, reference):.4f} "
          f"torch_bf16_bit_agreement={agreement(bf16_codes, reference):.4f} "
          f"engine={engine.precision}")


if __name__ == "__main__":
    main()
