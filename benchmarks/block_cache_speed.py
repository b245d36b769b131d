"""Block-input cache: cost of the frozen prefix vs training the last N blocks from the cache.

    nice python benchmarks/block_cache_speed.py [--random-init] [--ns 2,4,6,8] [--data PATH]

EfficientNet-Lite0 (ImageNet weights from the installed package unless --random-init) at
224 px, channels-last, bf16 autocast where native (``contrahash.models.features.autocast_for``).
For each N (blocks trained, of 18: stem, 16 MBConv, head):

* prefix: images/s through ``block_input(x, N)`` in eval mode without autograd, the float16
  conversion included (what building the cache costs per view, augmentation excluded);
* suffix train: images/s of CIBHash training from cached float16 activations, two views per
  image, batch 64 (both views in one ``forward_from`` call, as the trainer does), backward and
  an Adam step over the head and the last N blocks (``contrahash.training.optim.make_optimizer``);
* suffix eval: images/s of ``forward_from`` in eval mode without autograd (encoding the
  evaluated images from their cached block inputs);
* cache: bytes per cached view (float16), and its precision on 16 images (``--data``: real
  images, else synthetic), as relative L2 errors of the eval-mode features against the float32
  forward: "store err" = float32 prefix → float16 cache → float32 suffix (the cache's own
  rounding); "amp err" = bf16-autocast prefix → float16 → bf16-autocast suffix (the real
  pipeline; compare with the whole forward under autocast, printed above the table); and the
  largest |activation| (float16 overflows above 65504) and the share of non-zero values below
  float16's normal range (2⁻¹⁴, where it loses precision).

Images are synthetic 32×32 uint8 (CIFAR-sized) resized to 224 px, as in train_speed.py.
On a shared, oversubscribed CPU run it with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``):
with OpenMP's default spin-waiting, a 2-thread bf16 forward was ~30× slower there whenever
the other thread was descheduled.
Final line: ``prefix_img_per_s_n6=<x> suffix_train_img_per_s_n6=<y> cache_kib_per_view_n6=<z>``
and the same keys for every other N.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from _timing import best_time

from contrahash.data.augment import test_transform
from contrahash.methods import OptimSpec, StepInfo, build_method
from contrahash.models.backbones import Backbone, build_backbone
from contrahash.models.features import autocast_dtype, autocast_for, backbone_inputs
from contrahash.runtime import tune_cpu_allocator
from contrahash.training.optim import make_optimizer


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def measure(
    backbone: Backbone, n: int, x: torch.Tensor, x_check: torch.Tensor, args: argparse.Namespace
) -> dict:
    """The table's row for N = ``n``."""
    device = torch.device("cpu")
    shape = backbone.block_input_shape(n)
    kib = math.prod(shape) * 2 / 1024
    backbone.set_finetune(0).eval()

    # (a) prefix: block_input in eval mode, no autograd, cast to the cache's float16
    def prefix() -> torch.Tensor:
        with torch.no_grad(), autocast_for(device, args.amp):
            return backbone.block_input(x, n).to(torch.float16)

    prefix()  # warm-up
    seconds, cached = best_time(prefix, args.repeats)
    prefix_rate = args.batch / seconds

    # precision of the cache against the float32 forward
    def from_cache(a: torch.Tensor) -> torch.Tensor:
        return a.to(torch.float16).float().contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        exact_a = backbone.block_input(x_check, n)
        exact_f = backbone.forward_from(exact_a, n)
        store_f = backbone.forward_from(from_cache(exact_a), n)
        with autocast_for(device, args.amp):
            amp_a = from_cache(backbone.block_input(x_check, n))
            amp_f = backbone.forward_from(amp_a, n).float()
    nonzero = exact_a[exact_a != 0].abs()

    # suffix in eval mode: encoding evaluated images from their cached block inputs
    def suffix_eval() -> torch.Tensor:
        a = cached.float().contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast_for(device, args.amp):
            return backbone.forward_from(a, n).float()

    suffix_eval()
    seconds, _ = best_time(suffix_eval, args.repeats)
    eval_rate = args.batch / seconds

    # (b) suffix training from float16 views: CIBHash's loss, backward, Adam (the trainer's
    # optimiser groups: head at lr, the last n blocks at lr × backbone_lr_scale)
    backbone.set_finetune(n).train()
    method = build_method("cibhash", backbone.feature_dim, [args.bits]).train()
    optimizer = make_optimizer(
        OptimSpec(), list(method.parameters()), backbone.trainable_parameters()
    )
    views = [cached.roll(v, dims=0) for v in range(args.views)]  # distinct rows per view

    def forward(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        a = torch.cat([v.float() for v in batch]).contiguous(memory_format=torch.channels_last)
        with autocast_for(device, args.amp):
            f = backbone.forward_from(a, n)
        return list(f.float().chunk(len(batch)))

    def train(steps: int) -> None:
        for _ in range(steps):
            loss = method.training_loss(forward(views), StepInfo()).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    train(1)  # warm-up
    seconds, _ = best_time(lambda: train(args.steps))
    train_rate = args.steps * args.batch / seconds
    backbone.set_finetune(0).eval()
    return {
        "shape": "×".join(map(str, shape)),
        "kib": kib,
        "prefix": prefix_rate,
        "train": train_rate,
        "eval": eval_rate,
        "store_err": rel_err(store_f, exact_f),
        "amp_err": rel_err(amp_f, exact_f),
        "amax": float(exact_a.abs().max()),
        "subnormal": float((nonzero < 2.0**-14).float().mean()) if nonzero.numel() else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--ns", default="2,4,6,8", help="comma-separated numbers of trained blocks")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--views", type=int, default=2, help="views per image in a training step")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per N")
    ap.add_argument("--repeats", type=int, default=3, help="timed prefix/eval batches per N (best)")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument(
        "--data",
        default=None,
        help="dataset spec (contrahash.data.load_source) for the precision check",
    )
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ns = [int(v) for v in args.ns.split(",")]
    device = torch.device("cpu")
    tune_cpu_allocator()
    torch.manual_seed(0)

    if args.random_init:
        # random weights with default BatchNorm statistics shrink the activations into the
        # subnormal range, where CPU arithmetic is many times slower: flush them to zero
        torch.set_flush_denormal(True)
    backbone = build_backbone(args.backbone, random_init=args.random_init, image_size=args.size)
    backbone = backbone.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(device, args.amp)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8, generator=gen)
    x = backbone_inputs(backbone, images, lambda b: test_transform(b, args.size), device)
    if args.data is not None:
        from contrahash.data import load_source

        dataset = load_source(args.data)
        rows = np.random.default_rng(0).choice(len(dataset), size=16, replace=False)
        real = dataset.images[np.sort(rows)]
    else:
        real = images[:16]
    x_check = backbone_inputs(backbone, real, lambda b: test_transform(b, args.size), device)

    print(
        f"{args.backbone} {args.size}px, {'fp32' if dtype is None else dtype} autocast, "
        f"channels-last, batch {args.batch}, {args.views} views/image, "
        f"{torch.get_num_threads()} threads, "
        f"{'random init' if args.random_init else 'ImageNet weights'}"
    )
    header = (
        f"{'N':>3} {'act shape':>14} {'KiB/view':>9} {'prefix img/s':>13} "
        f"{'suffix train img/s':>19} {'suffix eval img/s':>18} {'store err':>9} "
        f"{'amp err':>8} {'max|a|':>8} {'subnormal':>9}"
    )
    with torch.no_grad():
        exact = backbone(x_check)
        with autocast_for(device, args.amp):
            whole_amp_err = rel_err(backbone(x_check).float(), exact)
    print(f"whole forward under autocast vs float32: relative feature error {whole_amp_err:.1e}")
    print(header)
    results: dict[int, dict] = {}
    for n in ns:
        r = results[n] = measure(backbone, n, x, x_check, args)
        print(
            f"{n:>3} {r['shape']:>14} {r['kib']:>9.1f} {r['prefix']:>13.1f} "
            f"{r['train']:>19.1f} {r['eval']:>18.1f} {r['store_err']:>9.1e} "
            f"{r['amp_err']:>8.1e} {r['amax']:>8.1f} {r['subnormal']:>9.1e}",
            flush=True,
        )

    print(
        " ".join(
            f"prefix_img_per_s_n{n}={r['prefix']:.1f} suffix_train_img_per_s_n{n}={r['train']:.1f} "
            f"suffix_eval_img_per_s_n{n}={r['eval']:.1f} cache_kib_per_view_n{n}={r['kib']:.1f}"
            for n, r in results.items()
        )
    )


if __name__ == "__main__":
    main()
