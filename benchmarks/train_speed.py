"""Training and encoding throughput of the end-to-end path (and the feature-cache path on CPU).

    python benchmarks/train_speed.py --backbone vgg16 --random-init

Synthetic 32×32 uint8 images (CIFAR-sized) live on the device; each step takes a batch,
makes two augmented 224 px views per image (the batched GPU recipe), runs the frozen backbone
once on both views (bf16, channels-last on CUDA) and trains a CIBHash head — the trainer's own
code path (`providers.make_image_forward` + `loop.run_epoch`). Images/s counts images, not
views. The process's thread policy (contrahash.runtime) is applied before torch loads, as the
CLI does.
Final line: ``train_img_per_s=<x> encode_img_per_s=<y>`` (+ ``cache_head_img_per_s=<z>`` on CPU).
"""

from __future__ import annotations

import argparse
import time

from contrahash.runtime import apply_thread_policy

apply_thread_policy()  # before torch loads: OpenMP's wait policy is read once, at start-up

import numpy as np  # noqa: E402
import torch  # noqa: E402

from contrahash.data.augment import test_transform, view_augmenters  # noqa: E402
from contrahash.methods import OptimSpec, StepInfo, build_method  # noqa: E402
from contrahash.models.backbones import build_backbone  # noqa: E402
from contrahash.models.features import (  # noqa: E402
    autocast_dtype,
    autocast_for,
    backbone_inputs,
    default_eval_batch_size,
)
from contrahash.runtime import tune_cpu_allocator  # noqa: E402
from contrahash.training.loop import run_epoch, train_on_features  # noqa: E402
from contrahash.training.optim import make_optimizer  # noqa: E402
from contrahash.training.providers import Epoch, make_image_forward  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vgg16")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune")
    ap.add_argument("--finetune-blocks", type=int, default=0)
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="bf16 autocast where native (CUDA; CPUs with AVX512-BF16/AMX)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--malloc-tuning", action=argparse.BooleanOptionalAction, default=True,
                    help="keep freed blocks in glibc's heap on CPU (contrahash.runtime)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and args.malloc_tuning:
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    steps = args.steps or (60 if device.type == "cuda" else 3)
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init,
                              finetune_blocks=args.finetune_blocks).to(device)
    if args.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    if args.compile:
        backbone.forward = torch.compile(backbone.forward, mode=args.compile_mode)
    method = build_method("cibhash", backbone.feature_dim, [args.bits]).to(device)
    gen = torch.Generator(device=device.type).manual_seed(0)
    n = args.batch * (steps + 5)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=None).to(device)
    augmenters = view_augmenters("contrastive", args.size, 2)
    forward = make_image_forward(backbone, augmenters, device, amp=args.amp,
                                 channels_last=args.channels_last, generator=gen)
    optimizer = make_optimizer(OptimSpec(), list(method.parameters()),
                               [p for p in backbone.parameters() if p.requires_grad])

    def batches(count: int):
        for i in range(count):
            rows = torch.arange(i * args.batch, (i + 1) * args.batch, device=device)
            yield [images[rows], images[rows]], rows

    trainables = (backbone,) if args.finetune_blocks else ()
    warm = Epoch(batches(5 if device.type == "cuda" else 1), forward, trainables)
    run_epoch(method, optimizer, warm, StepInfo())  # warm-up (cudnn autotune, compile)
    _sync(device)
    t = time.perf_counter()
    run_epoch(method, optimizer, Epoch(batches(steps), forward, trainables), StepInfo())
    _sync(device)
    train_rate = steps * args.batch / (time.perf_counter() - t)
    dtype = autocast_dtype(device, args.amp)
    print(f"train: {train_rate:,.0f} img/s ({2 * train_rate:,.0f} views/s), "
          f"{args.backbone} {args.size}px batch {args.batch}, device {device}, "
          f"{'fp32' if dtype is None else dtype}, channels_last={args.channels_last}")

    enc_batch = default_eval_batch_size(device)
    enc_steps = 20 if device.type == "cuda" else 2
    method.eval()
    backbone.eval()

    def encode_once(i: int) -> None:
        rows = torch.arange(i * enc_batch, (i + 1) * enc_batch, device=device) % n
        with torch.no_grad(), autocast_for(device, args.amp):
            x = backbone_inputs(backbone, images[rows], lambda b: test_transform(b, args.size), device,
                                args.channels_last)
            method.encode(backbone(x).float())

    encode_once(0)
    _sync(device)
    t = time.perf_counter()
    for i in range(enc_steps):
        encode_once(i)
    _sync(device)
    encode_rate = enc_steps * enc_batch / (time.perf_counter() - t)
    print(f"encode: {encode_rate:,.0f} img/s (batch {enc_batch})")
    line = f"train_img_per_s={train_rate:.1f} encode_img_per_s={encode_rate:.1f}"
    if device.type == "cpu":
        feats = torch.from_numpy(np.random.default_rng(0).standard_normal(
            (2048, 8, backbone.feature_dim), dtype=np.float32))
        head = build_method("cibhash", backbone.feature_dim, [args.bits])
        t = time.perf_counter()
        train_on_features(head, feats, epochs=1, optim=OptimSpec(batch_size=args.batch))
        cache_rate = feats.shape[0] / (time.perf_counter() - t)
        print(f"cache head: {cache_rate:,.0f} img/s (head training from cached features)")
        line += f" cache_head_img_per_s={cache_rate:.1f}"
    print(line)


if __name__ == "__main__":
    main()
