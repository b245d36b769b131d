"""The one training loop shared by every method: feature-cache and end-to-end paths.

:func:`train_run` is what ``contrahash train`` calls. It writes a run directory holding the
resolved config, the split lists, metrics per epoch (JSONL), checkpoints (safetensors for
weights, a torch file for optimiser and RNG state, both written atomically), the codes, the
retrieval results, the environment and the exact command. ``resume=True`` continues from
the last finished epoch; every epoch draws its randomness from generators seeded by
``(seed, epoch)``, so a resumed CPU run ends with the same codes as an uninterrupted one.
The model of the last epoch is kept: nothing is selected on labelled query data.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrahash.config import TrainConfig
from contrahash.features import FeatureCache, autocast_for, backbone_inputs
from contrahash.io import atomic_write
from contrahash.methods.base import HashMethod, OptimSpec, StepInfo

#: a batch: per-view method inputs, and the batch rows' positions in the training split
Batch = tuple[list[torch.Tensor], torch.Tensor]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, inconsistent resume); the message says why."""


# ----------------------------------------------------------------------------- primitives
def make_optimizer(
    spec: OptimSpec, head_params: Sequence[torch.nn.Parameter], backbone_params=()
) -> torch.optim.Optimizer:
    """Adam or SGD over the method's parameters (and a backbone group at lr × scale)."""
    groups = [{"params": [p for p in head_params if p.requires_grad], "lr": spec.lr}]
    backbone_params = [p for p in backbone_params if p.requires_grad]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": spec.lr * spec.backbone_lr_scale})
    for group in groups:
        group["base_lr"] = group["lr"]
    if spec.name == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    raise ValueError(f"optim.name must be 'adam' or 'sgd', got '{spec.name}'")


def set_epoch_lr(optimizer: torch.optim.Optimizer, spec: OptimSpec, epoch: int, epochs: int) -> float:
    """Apply the schedule for ``epoch`` (constant or cosine); returns the head lr."""
    factor = 1.0
    if spec.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    elif spec.schedule != "constant":
        raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got '{spec.schedule}'")
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]


def resolve_optim(method: HashMethod, overrides: dict[str, Any]) -> OptimSpec:
    """The method's default recipe with config overrides, unknown keys named."""
    known = {f.name for f in fields(OptimSpec)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"optim: unknown key(s) {unknown}; known keys: {sorted(known)}")
    base = {f.name: getattr(method.default_optim, f.name) for f in fields(OptimSpec)}
    return OptimSpec(**{**base, **overrides})


def feature_view_batches(
    views: torch.Tensor,
    batch_size: int,
    n_views: int,
    generator: torch.Generator,
    neighbours: np.ndarray | None = None,
    neighbour_prob: float = 0.0,
    neighbour_features: torch.Tensor | None = None,
    recipes: int = 1,
) -> Iterator[Batch]:
    """Batches of ``n_views`` distinct cached views per image (one epoch, shuffled, full batches).

    With ``recipes`` > 1 the cache's column j was made with recipe ``j % recipes`` and view
    position p of a batch only draws from columns of recipe ``p % recipes`` (HARR's strong /
    RandAugment / weak views stay in their roles).

    ``views`` is [N, V, ...]. With ``neighbours`` ([N, k]) the last view is, with probability
    ``neighbour_prob``, taken from a random neighbour: a random cached view of it when
    ``neighbours`` index rows of ``views``, or its (un-augmented) feature when
    ``neighbour_features`` ([P, ...], e.g. an unlabelled pool) is given and indexed instead.
    """
    n, v = views.shape[0], views.shape[1]
    if 1 < v < n_views:
        raise ValueError(f"feature cache holds {v} views per image, the method needs {n_views}")
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        picks = torch.argsort(torch.rand(batch_size, v, generator=generator), dim=1)[:, :n_views]
        if v == 1:
            picks = torch.zeros(batch_size, n_views, dtype=torch.long)
        elif recipes > 1:
            picks = _recipe_picks(batch_size, v, n_views, recipes, generator)
        rows = idx.unsqueeze(1).expand(-1, n_views).clone()
        pool_rows = None
        if neighbours is not None and neighbour_prob > 0:
            use = torch.rand(batch_size, generator=generator) < neighbour_prob
            nb = torch.as_tensor(neighbours)[idx]
            which = torch.randint(0, nb.shape[1], (batch_size,), generator=generator)
            chosen = nb[torch.arange(batch_size), which]
            if neighbour_features is None:
                rows[:, -1] = torch.where(use, chosen, rows[:, -1])
            else:
                pool_rows = (use, chosen)
        out = [views[rows[:, j], picks[:, j]].float() for j in range(n_views)]
        if pool_rows is not None:
            use, chosen = pool_rows
            mask = use.view(-1, *([1] * (out[-1].ndim - 1)))
            out[-1] = torch.where(mask, neighbour_features[chosen].float(), out[-1])
        yield out, idx


def _recipe_picks(batch: int, v: int, n_views: int, recipes: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Per view position p, a random cache column among those made with recipe p % recipes."""
    cols = []
    for p in range(n_views):
        slots = torch.arange(p % recipes, v, recipes)
        if len(slots) == 0:
            raise ValueError(f"feature cache holds {v} views; recipe {p % recipes} has none")
        cols.append(slots[torch.randint(0, len(slots), (batch,), generator=generator)])
    return torch.stack(cols, dim=1)


def run_epoch(
    method: HashMethod,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    info: StepInfo,
    forward: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    trainables: Sequence[torch.nn.Module] = (),
) -> dict[str, float]:
    """One pass of optimisation steps; returns mean loss and mean loss parts.

    ``forward`` maps a batch's per-view inputs (e.g. uint8 images) to the method's inputs
    (backbone outputs); identity for cached features. Before each step the batch's positions
    in the training split are put in ``method.batch_index`` (HARR's similarity lookup).

    Losses are summed on the device and read once at the end of the epoch: no step waits for
    the GPU, so the host queues the next batch's augmentation while the GPU computes. A
    non-finite loss is detected at the end of the epoch (before any checkpoint is written) and
    reported with the step where it first appeared.
    """
    method.train()
    for module in trainables:
        module.train()
    sums: dict[str, torch.Tensor | float] = {}
    first_bad: torch.Tensor | None = None
    steps = 0
    for step, (batch, index) in enumerate(batches):
        info.step = step
        inputs = forward(batch) if forward is not None else batch
        method.batch_index = index
        out = method.training_loss(inputs, info)
        loss = out.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        value = loss.detach()
        bad = ~torch.isfinite(value)
        first_bad = (torch.where(bad, step, -1) if first_bad is None
                     else torch.where((first_bad < 0) & bad, step, first_bad))
        sums["loss"] = sums.get("loss", 0.0) + value
        for key, part in out.parts.items():
            sums[key] = sums.get(key, 0.0) + part
        if on_step is not None:
            on_step(len(index), value)
    method.batch_index = None
    if first_bad is not None and int(first_bad) >= 0:
        raise TrainingError(
            f"non-finite loss at epoch {info.epoch + 1}, step {int(first_bad) + 1}; "
            "try a lower optim.lr. The last good checkpoint is kept."
        )
    return {key: float(v) / max(1, steps) for key, v in sums.items()}


def train_on_features(
    method: HashMethod,
    views: torch.Tensor,
    *,
    epochs: int | None = None,
    optim: OptimSpec | None = None,
    seed: int = 0,
    neighbours: np.ndarray | None = None,
    neighbour_prob: float = 0.0,
    neighbour_features: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train a method's heads from precomputed backbone outputs of augmented views.

    ``views``: [N, V, d] (or [N, V, T, d] token grids); each step draws ``method.n_views``
    distinct views per image. Returns the per-epoch mean losses.

    >>> from contrahash.methods import build_method
    >>> m = build_method("cibhash", feature_dim=8, bits=[8])
    >>> logs = train_on_features(m, torch.randn(64, 4, 8), epochs=2,
    ...                          optim=OptimSpec(batch_size=16))
    >>> len(logs)
    2
    """
    spec = optim or method.default_optim
    epochs = spec.epochs if epochs is None else epochs
    batch = _batch_size(method, spec, views.shape[0])
    optimizer = make_optimizer(spec, list(method.parameters()))
    logs = []
    for epoch in range(epochs):
        set_epoch_lr(optimizer, spec, epoch, epochs)
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        info = StepInfo(epoch=epoch, epochs=epochs, steps_per_epoch=views.shape[0] // batch)
        batches = feature_view_batches(
            views, batch, method.n_views, generator, neighbours, neighbour_prob, neighbour_features
        )
        logs.append(run_epoch(method, optimizer, batches, info))
    method.eval()
    return logs


def encode_features(
    method: HashMethod, features: torch.Tensor | np.ndarray, chunk: int = 4096, device=None
) -> dict[int, np.ndarray]:
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


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch * 7_919 + 1


def _batch_size(method: HashMethod, spec: OptimSpec, n: int) -> int:
    batch = min(spec.batch_size, n)
    if method.max_batch is not None:
        batch = min(batch, method.max_batch)
    if batch < 2:
        raise ValueError(f"training needs at least 2 images per batch, have {n} training images")
    return batch


def mine_neighbours(
    anchors: np.ndarray, pool: np.ndarray, k: int, self_index: np.ndarray | None = None,
    device: torch.device | str = "cpu", chunk: int = 1024,
) -> np.ndarray:
    """Indices (into ``pool``) of each anchor's ``k`` nearest pool items by cosine.

    ``self_index[i]`` is anchor i's own row in ``pool`` (excluded), or -1 when absent.
    """
    device = torch.device(device)
    pool_t = torch.nn.functional.normalize(torch.as_tensor(np.asarray(pool)).float().to(device), dim=1)
    out = np.empty((len(anchors), k), dtype=np.int64)
    for lo in range(0, len(anchors), chunk):
        a = torch.as_tensor(np.asarray(anchors[lo : lo + chunk])).float().to(device)
        sim = torch.nn.functional.normalize(a, dim=1) @ pool_t.t()
        if self_index is not None:
            own = torch.as_tensor(self_index[lo : lo + chunk], device=device)
            valid = own >= 0
            rows = torch.arange(len(own), device=device)[valid]
            sim[rows, own[valid]] = -float("inf")
        out[lo : lo + len(a)] = sim.topk(k, dim=1).indices.cpu().numpy()
    return out


def make_image_forward(
    backbone: Any,
    augmenters: Sequence[Callable[..., torch.Tensor]],
    device: torch.device,
    *,
    amp: bool = True,
    channels_last: bool = True,
    tokens: bool = False,
    generator: torch.Generator | None = None,
) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """Batch forward for the end-to-end path: uint8 view batches → backbone outputs per view.

    Each view gets its own augmenter; all views go through the backbone in one call (bf16
    autocast and channels-last on CUDA); a frozen backbone runs without autograd.
    """
    frozen = not any(p.requires_grad for p in backbone.parameters())

    def forward(views: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [backbone_inputs(backbone, v, aug, device, channels_last, generator)
              for v, aug in zip(views, augmenters, strict=True)]
        x = torch.cat(xs)
        with autocast_for(device, amp), torch.set_grad_enabled(not frozen and torch.is_grad_enabled()):
            f = backbone.forward_tokens(x) if tokens else backbone(x)
        return list(f.float().chunk(len(views)))

    return forward


# ----------------------------------------------------------------------------- a run
@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    results: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0


def select_device(name: str) -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available")
    return device


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<name> or runs/<method>-<source>-<timestamp>."""
    if cfg.name:
        return Path(cfg.out_dir) / cfg.name
    source = Path(str(cfg.data.source)).stem or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out_dir) / f"{cfg.method}-{source}-{stamp}"


def train_run(
    cfg: TrainConfig,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: bool = True,
    shared_cache: FeatureCache | None = None,
    stop_after_epoch: int | None = None,
) -> RunResult:
    """Train ``cfg.method`` end to end and evaluate it; see the module docstring.

    ``stop_after_epoch`` interrupts after that many epochs (tests of resume).
    """
    from contrahash.runs import RunContext  # run-directory plumbing lives there

    ctx = RunContext.create(cfg, run_dir or default_run_dir(cfg), resume=resume, command=command)
    ctx.shared_cache = shared_cache
    return _Trainer(ctx, progress=progress).fit(stop_after_epoch=stop_after_epoch)


class _Trainer:
    def __init__(self, ctx: Any, progress: bool = True):
        self.ctx = ctx
        self.cfg: TrainConfig = ctx.cfg
        self.progress = progress and sys.stderr.isatty()

    # -- orchestration ---------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> RunResult:
        ctx, cfg = self.ctx, self.cfg
        ctx.setup()  # seeds, device, data, split, backbone, method
        method = ctx.method
        spec = resolve_optim(method, cfg.optim)
        # every hyper-parameter in effect, defaults included: config.yaml holds only what was set
        method_config = asdict(method.config) if is_dataclass(method.config) else {}
        ctx.log_event("start", optim=spec.__dict__, method_config=method_config,
                      device=str(ctx.device))
        t0 = time.perf_counter()
        epochs_log: list[dict[str, float]] = []
        images_seen = 0
        train_time = 0.0
        if not method.trainable:
            method.fit(torch.as_tensor(np.asarray(ctx.train_clean_features())).float())
        else:
            if getattr(method, "needs_fit", False):
                method.fit(torch.as_tensor(np.asarray(ctx.train_clean_features())).float().to(ctx.device))
            epochs_log, images_seen, train_time = self._train(spec, stop_after_epoch)
            if stop_after_epoch is not None and len(epochs_log) >= stop_after_epoch and (
                ctx.completed_epochs < spec.epochs
            ):
                return RunResult(ctx.run_dir, {}, epochs_log, train_time)
        ctx.save_model()
        results = ctx.evaluate()
        results["method_config"] = method_config
        results["optim"] = dict(spec.__dict__)
        results["train_seconds"] = round(train_time, 3)
        results["images_per_second"] = round(images_seen / train_time, 1) if train_time else 0.0
        results["total_seconds"] = round(time.perf_counter() - t0, 3)
        ctx.write_results(results)
        return RunResult(ctx.run_dir, results, epochs_log, train_time,
                         results["images_per_second"])

    # -- the loop --------------------------------------------------------------------
    def _train(self, spec: OptimSpec, stop_after_epoch: int | None):
        ctx, method, backbone = self.ctx, self.ctx.method, self.ctx.backbone
        epochs = spec.epochs
        n_train = len(ctx.split.train)
        batch = _batch_size(method, spec, n_train)
        backbone_params = [p for p in backbone.parameters() if p.requires_grad]
        optimizer = make_optimizer(spec, list(method.parameters()), backbone_params)
        start_epoch = ctx.load_checkpoint(optimizer)
        use_cache = ctx.use_cache
        if use_cache:
            views = torch.from_numpy(np.array(ctx.cached_views()))  # in RAM: sampled every step
            nb, nb_feats = ctx.neighbours_for_cache()
        else:
            nb = ctx.neighbours_for_images()
            nb_feats = None
        prob = float(getattr(method.config, "neighbour_prob", 0.0)) if nb is not None else 0.0
        logs: list[dict[str, float]] = []
        images_seen, train_time = 0, 0.0
        steps = n_train // batch
        refresh = ctx.neighbour_refresh() if nb is not None else 0
        for epoch in range(start_epoch, epochs):
            if refresh and epoch > 0 and epoch % refresh == 0:  # re-mine from the current model
                if use_cache:
                    nb, nb_feats = ctx.neighbours_for_cache(refresh_epoch=epoch)
                else:
                    nb = ctx.neighbours_for_images(refresh_epoch=epoch)
            lr = set_epoch_lr(optimizer, spec, epoch, epochs)
            torch.manual_seed(_epoch_seed(self.cfg.seed, epoch))  # dropout etc.
            generator = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch))
            info = StepInfo(epoch=epoch, epochs=epochs, steps_per_epoch=steps)
            if use_cache:
                batches = feature_view_batches(views, batch, method.n_views, generator, nb, prob,
                                               nb_feats, recipes=ctx.cache_recipes)
                batches = ((list(v.to(ctx.device) for v in b), i) for b, i in batches)
                forward, trainables = None, ()
            else:
                batches = ctx.image_batches(batch, generator, nb, prob)
                forward, trainables = ctx.image_forward(generator), (backbone,)
            seen = [0]
            bar = ctx.progress_bar(epoch, epochs, steps) if self.progress else None

            def on_step(n: int, loss: torch.Tensor, seen=seen, bar=bar) -> None:
                seen[0] += n
                if bar is not None:
                    bar(n, loss)

            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            stats = run_epoch(method, optimizer, batches, info, forward, on_step, trainables)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            if bar is not None:
                bar(None, None)
            train_time += dt
            images_seen += seen[0]
            record = {"epoch": epoch + 1, "lr": lr, "seconds": round(dt, 3),
                      "images_per_second": round(seen[0] / dt, 1) if dt else 0.0, **stats}
            logs.append(record)
            ctx.save_checkpoint(optimizer, epoch + 1)
            ctx.log_epoch(record)
            if stop_after_epoch is not None and len(logs) >= stop_after_epoch:
                break
        return logs, images_seen, train_time


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write of CPU-contiguous copies."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(clean, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob))


__all__ = [
    "RunResult",
    "TrainingError",
    "encode_features",
    "feature_view_batches",
    "make_optimizer",
    "mine_neighbours",
    "run_epoch",
    "save_safetensors",
    "train_on_features",
    "train_run",
]
