"""Run directories: creation, environment, checkpoints, evaluation and loading a trained run.

Layout of a run directory::

    config.yaml         resolved configuration (defaults + YAML + overrides)
    command.txt         the exact command line
    environment.json    versions, device, git commit, dataset fingerprint, skipped files
    split/              query.txt database.txt train.txt split.json (with sha256 of each list)
    events.jsonl        start/stop events; metrics.jsonl: one line per epoch
    checkpoint.safetensors + checkpoint_state.pt   last finished epoch (atomic)
    model.safetensors   final weights (method heads + fine-tuned backbone blocks)
    codes/<bits>.npz    query/database codes (±1 int8) and labels
    results.json        mAP@K, P@N, P@r2, PR curve and bit statistics per code length
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from contrahash.config import TrainConfig, config_to_dict, resolve_config
from contrahash.features import (
    FeatureCache,
    autocast_dtype,
    default_eval_batch_size,
    extract_features,
)
from contrahash.io import append_jsonl, atomic_write, write_json, write_npz, write_text
from contrahash.runtime import tune_cpu_allocator

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint_state.pt"
MODEL = "model.safetensors"


def environment_info(device: torch.device | None = None) -> dict[str, Any]:
    """Versions, machine and device facts for reproducibility."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module in ("torchvision", "faiss", "contrahash"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - optional packages
            info[module] = None
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["device"] = str(device) if device is not None else None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        info["git_commit"] = commit.stdout.strip() or None
    except Exception:  # noqa: BLE001 - git is optional
        info["git_commit"] = None
    return info


class RunContext:
    """Everything a run needs, built lazily from its config, bound to its directory."""

    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.shared_cache: FeatureCache | None = None
        self.cache_recipes = 1
        self.resumed = False
        self.completed_epochs = 0
        self._clean: np.ndarray | None = None

    # -- creation ----------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: TrainConfig, run_dir: str | os.PathLike, *, resume: bool = False,
               command: str | None = None) -> RunContext:
        """Prepare ``run_dir``: a new run writes its config; a resumed one re-reads it."""
        run_dir = Path(run_dir)
        if resume:
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(f"--resume: {run_dir} holds no config.yaml (not a run directory)")
            cfg = resolve_config(run_dir / "config.yaml")
        elif (run_dir / CHECKPOINT).exists() or (run_dir / "results.json").exists():
            raise FileExistsError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                "name=/out_dir= (nothing was overwritten)"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        ctx = cls(cfg, run_dir)
        ctx.resumed = resume
        if not resume:
            write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        write_text(run_dir / ("command.txt" if not resume else "command_resume.txt"),
                   (command or " ".join(shlex.quote(a) for a in sys.argv)) + "\n")
        return ctx

    @classmethod
    def open(cls, run_dir: str | os.PathLike, device: str | None = None) -> RunContext:
        """A finished run, ready to encode or evaluate (weights loaded from model.safetensors)."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        cfg = resolve_config(run_dir / "config.yaml")
        if device is not None:
            cfg.device = device
        ctx = cls(cfg, run_dir)
        ctx.setup(record_environment=False)  # a finished run's record stays as it was
        if not (run_dir / MODEL).is_file():
            raise FileNotFoundError(f"{run_dir / MODEL} is missing: the run did not finish")
        ctx._load_weights(run_dir / MODEL)
        return ctx

    # -- set-up ------------------------------------------------------------------------
    def setup(self, record_environment: bool = True) -> None:
        """Seeds, device, dataset, split, backbone and method (and environment.json)."""
        from contrahash.backbones import build_backbone
        from contrahash.data import load_source
        from contrahash.methods import build_method
        from contrahash.protocols import split_for_run

        cfg = self.cfg
        from contrahash.train import select_device

        self.device = select_device(cfg.device)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)  # noqa: NPY002 - global RNG some libraries use
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dataset = load_source(expand_source(cfg.data.source), image_root=cfg.data.image_root,
                                   cache_dir=cfg.data.cache_dir)
        self.split = split_for_run(self.run_dir, cfg.data.protocol, self.dataset,
                                   seed=cfg.data.seed, **cfg.data.protocol_options)
        bb = cfg.backbone
        torch.manual_seed(cfg.seed)  # random-init backbones are a function of the seed
        self.backbone = build_backbone(bb.name, weights=bb.weights, random_init=bb.random_init,
                                       finetune_blocks=bb.finetune_blocks, image_size=bb.image_size)
        self.backbone.to(self.device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        self.eval_batch_size = cfg.eval_batch_size or default_eval_batch_size(self.device)
        if cfg.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if cfg.compile:
            # compile the bound forward(s), not the module: state_dict keys stay unchanged
            for name in ("forward", "forward_tokens"):
                if hasattr(self.backbone, name):
                    setattr(self.backbone, name,
                            torch.compile(getattr(self.backbone, name), mode=cfg.compile_mode))
        self.image_size = bb.image_size or self.backbone.input_size
        from contrahash.methods import METHODS

        if cfg.method not in METHODS:
            build_method(cfg.method, 1, cfg.bits)  # raises the "unknown method" message
        self.tokens = METHODS[cfg.method].input_kind == "tokens"
        dim = self.backbone.token_dim if self.tokens else self.backbone.feature_dim
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg.method, dim, cfg.bits, cfg.method_config).to(self.device)
        self.frozen = bb.finetune_blocks == 0
        mode = cfg.cache.mode
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"cache.mode must be auto, on or off, got '{mode}'")
        if mode == "on" and not self.frozen:
            raise ValueError("cache.mode=on needs a frozen backbone (backbone.finetune_blocks=0)")
        self.use_cache = self.frozen and mode != "off"
        if self.use_cache and self.tokens and mode == "auto":
            self.use_cache = self._token_cache_gib() <= cfg.cache.max_token_gib
        self.cache = self.shared_cache or FeatureCache(cfg.cache.dir)
        self._images_on_device: torch.Tensor | None = None
        self._pool_features: torch.Tensor | None = None
        if not record_environment:
            return
        env = environment_info(self.device)
        env.update(dataset=self.dataset.name, dataset_fingerprint=self.dataset.fingerprint,
                   images=len(self.dataset.images), skipped_files=self.dataset.n_skipped,
                   skipped_examples=[list(s) for s in self.dataset.skipped[:20]],
                   split_hashes=_split_hashes(self.run_dir / "split"))
        # a resumed run keeps the original record and adds its own
        write_json(self.run_dir / ("environment_resume.json" if self.resumed else "environment.json"), env)

    # -- features ----------------------------------------------------------------------
    def _token_cache_gib(self) -> float:
        """Size of a token-grid cache for this run: training views plus evaluated images."""
        probe = self._extract(self.split.train[:1], self._test_transform())
        rows = len(self.split.train) * self.cfg.cache.views + len(self._used_indices())
        return rows * int(np.prod(probe.shape[1:])) * 2 / 2**30

    def _used_indices(self) -> np.ndarray:
        """Dataset indices of every image the split uses (query ∪ database ∪ train), sorted."""
        return np.unique(np.concatenate([self.split.query, self.split.database, self.split.train]))

    def _feature_key(self, kind: str, **extra: Any) -> dict[str, Any]:
        bb = self.cfg.backbone
        weights = bb.weights or (f"random-init-seed-{self.cfg.seed}" if bb.random_init else "pretrained")
        dtype = autocast_dtype(self.device, self.cfg.amp)
        return {"backbone": bb.name, "weights": weights, "size": self.image_size,
                "dataset": self.dataset.fingerprint, "kind": kind, "tokens": self.tokens,
                "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."), **extra}

    def _test_transform(self):
        from contrahash.augment import test_transform

        size = self.image_size
        return lambda x: test_transform(x, size)

    def clean_features(self, indices: np.ndarray) -> np.ndarray:
        """Un-augmented backbone features of the split's images (cached when frozen).

        Computed once for every image the split uses (query ∪ database ∪ train), in dataset
        order; ``indices`` are dataset indices.
        """
        if self._clean is None:
            used = self._used_indices()
            self._clean_row = np.full(len(self.dataset.images), -1, dtype=np.int64)
            self._clean_row[used] = np.arange(len(used))

            def compute(out: np.ndarray, start: int) -> np.ndarray:
                return self._extract(used, self._test_transform(), out, start)

            if self.frozen:
                probe = self._extract(used[:1], self._test_transform())
                key = self._feature_key("clean", images=_hash_indices(used))
                self._clean = self.cache.get_or_compute(key, (len(used), *probe.shape[1:]), compute)
            else:
                self._clean = self._extract(used, self._test_transform())
        rows = self._clean_row[np.asarray(indices)]
        if (rows < 0).any():
            raise IndexError("clean_features: index outside the split's images")
        return np.asarray(self._clean[rows])

    def train_clean_features(self) -> np.ndarray:
        return self.clean_features(self.split.train)

    def cached_views(self) -> np.ndarray:
        """[n_train, V, d] features of V augmented views per training image (computed once)."""
        from contrahash.augment import view_augmenters

        v = self.cfg.cache.views
        if v < self.method.n_views:
            raise ValueError(f"cache.views={v} but method '{self.method.name}' needs "
                             f"{self.method.n_views} views per image")
        train = self.split.train
        augmenters = view_augmenters(self.method.augmentation, self.image_size, self.method.n_views)
        recipes = [a.recipe for a in augmenters]
        self.cache_recipes = len(set(recipes))
        parts = self._feature_key("views", views=v, recipes=recipes, augment=self.cfg.augment,
                                  train=_hash_indices(train), view_seed=self.cfg.seed)

        def compute(out: np.ndarray, start: int) -> np.ndarray:
            # view j of every image uses recipe j % len(recipes), one seeded generator per view
            for j in range(start // len(train) if len(train) else 0, v):
                aug = _with_overrides(augmenters[j % len(augmenters)], self.cfg.augment)
                gen = torch.Generator(device=self._gen_device()).manual_seed(self.cfg.seed * 1000 + j)
                out[:, j] = self._extract(train, aug, None, 0, generator=gen)
                self.cache.mark_progress((j + 1) * len(train))
            return out

        probe = self._extract(train[:1], self._test_transform())
        return self.cache.get_or_compute(parts, (len(train), v, *probe.shape[1:]), compute)

    def _gen_device(self) -> str:
        return self.device.type if self.device.type == "cuda" else "cpu"

    def _extract(self, indices, transform, out=None, start=0, generator=None) -> np.ndarray:
        images = self._device_images()
        images = self.dataset.images if images is None else images
        return extract_features(self.backbone, images, indices, transform, device=self.device,
                                batch_size=self.eval_batch_size, amp=self.cfg.amp,
                                tokens=self.tokens, generator=generator, out=out, start=start)

    def _device_images(self):
        """The whole uint8 image tensor moved to the GPU once, when it fits."""
        if self.device.type != "cuda":
            return None
        if self._images_on_device is None:
            tensor = getattr(self.dataset.images, "tensor", None)
            if tensor is None or tensor.numel() > 8e9:
                return None
            self._images_on_device = tensor.to(self.device)
        return self._images_on_device

    # -- neighbour positives -------------------------------------------------------------
    def _neighbour_setting(self) -> tuple[float, int, str]:
        c = self.method.config
        return (float(getattr(c, "neighbour_prob", 0.0)), int(getattr(c, "neighbour_k", 5)),
                str(getattr(c, "neighbour_pool", "train")))

    def _mine(self, refresh_epoch: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """(neighbours as dataset indices [n_train, k], pool dataset indices) or None.

        First mined by cosine of the frozen backbone's features before any training; with
        ``refresh_epoch`` re-mined by cosine of ``method.embed`` of the current model
        (neighbour_refresh). neighbours.npz always holds the latest set, so a resumed run
        continues with the neighbours its checkpoint trained on.
        """
        from contrahash.train import mine_neighbours

        prob, k, pool_name = self._neighbour_setting()
        if prob <= 0:
            return None
        path = self.run_dir / "neighbours.npz"
        if refresh_epoch is None and path.exists():
            z = np.load(path)
            return z["neighbours"], z["pool"]
        train = self.split.train
        pool = train if pool_name == "train" else self.split.database
        position = {int(i): p for p, i in enumerate(pool)}
        self_index = np.array([position.get(int(i), -1) for i in train])
        if refresh_epoch is None:  # no labels, no training yet: the frozen backbone's features
            anchors, candidates = self.clean_features(train), self.clean_features(pool)
        else:
            anchors, candidates = self._embedding(train), self._embedding(pool)
        nb_pos = mine_neighbours(anchors, candidates, k, self_index, device=self.device)
        neighbours = pool[nb_pos]
        agreement = _label_agreement(self.dataset.labels, train, neighbours)
        epoch = -1 if refresh_epoch is None else int(refresh_epoch)
        write_npz(path, neighbours=neighbours, pool=pool, epoch=np.array(epoch))
        self.log_event("neighbours", pool=pool_name, k=k, pool_size=len(pool), epoch=epoch,
                       label_agreement_diagnostic=agreement)
        return neighbours, pool

    def _embedding(self, indices: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        """``method.embed`` of the current model on un-augmented images (for re-mining)."""
        embed = getattr(self.method, "embed", None)
        if embed is None:
            raise ValueError(f"method '{self.method.name}' cannot re-mine neighbours (no embed())")
        out = []
        for lo in range(0, len(indices), chunk):
            feats = torch.as_tensor(np.asarray(self.test_features(indices[lo:lo + chunk])))
            out.append(embed(feats.float().to(self.device)).float().cpu())
        return torch.cat(out)

    def neighbour_refresh(self) -> int:
        """Epochs between re-minings of the neighbours (0: mined once, never refreshed)."""
        return int(getattr(self.method.config, "neighbour_refresh", 0) or 0)

    def neighbours_for_cache(self, refresh_epoch: int | None = None
                             ) -> tuple[np.ndarray | None, torch.Tensor | None]:
        """Neighbours for the cached path: train-row indices, or pool rows + pool features."""
        mined = self._mine(refresh_epoch)
        if mined is None:
            return None, None
        neighbours, pool = mined
        train = self.split.train
        if self._neighbour_setting()[2] == "train":
            row = {int(i): r for r, i in enumerate(train)}
            return np.vectorize(lambda i: row[int(i)])(neighbours), None
        row = {int(i): r for r, i in enumerate(pool)}
        pool_rows = np.vectorize(lambda i: row[int(i)])(neighbours)
        if self._pool_features is None:  # frozen features: the same at every re-mining
            self._pool_features = torch.as_tensor(np.asarray(self.clean_features(pool)))
        return pool_rows, self._pool_features

    def neighbours_for_images(self, refresh_epoch: int | None = None) -> np.ndarray | None:
        mined = self._mine(refresh_epoch)
        return None if mined is None else mined[0]

    # -- end-to-end batches --------------------------------------------------------------
    def image_batches(self, batch: int, generator: torch.Generator, neighbours, prob: float
                      ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """Per-view uint8 image batches of the training split (shuffled, full batches)."""
        train = torch.as_tensor(self.split.train)
        images = self._device_images()
        store = images if images is not None else self.dataset.images
        n_views = self.method.n_views
        order = torch.randperm(len(train), generator=generator)
        for start in range(0, len(train) - batch + 1, batch):
            pos = order[start : start + batch]
            rows = [train[pos] for _ in range(n_views)]
            if neighbours is not None and prob > 0:
                use = torch.rand(batch, generator=generator) < prob
                nb = torch.as_tensor(neighbours)[pos]
                which = torch.randint(0, nb.shape[1], (batch,), generator=generator)
                rows[-1] = torch.where(use, nb[torch.arange(batch), which], rows[-1])
            if images is not None:
                yield [store[r.to(self.device)] for r in rows], pos
            else:
                yield [store[r.numpy()] for r in rows], pos

    def image_forward(self, generator: torch.Generator) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
        """Augment each view, run the backbone once on all views, split the outputs."""
        from contrahash.augment import view_augmenters
        from contrahash.train import make_image_forward

        augmenters = [_with_overrides(a, self.cfg.augment) for a in
                      view_augmenters(self.method.augmentation, self.image_size, self.method.n_views)]
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        gen = torch.Generator(device=self._gen_device()).manual_seed(seed)
        return make_image_forward(self.backbone, augmenters, self.device, amp=self.cfg.amp,
                                  channels_last=self.cfg.channels_last, tokens=self.tokens,
                                  generator=gen)

    def progress_bar(self, epoch: int, epochs: int, steps: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn(f"epoch {epoch + 1}/{epochs}"), BarColumn(),
                            TextColumn("{task.fields[rate]} img/s  loss {task.fields[loss]}"),
                            TimeRemainingColumn(), transient=True)
        task = progress.add_task("train", total=steps, rate="-", loss="-")
        progress.start()
        start = time.perf_counter()
        seen = [0]

        steps_done = [0]

        def update(n: int | None, loss: torch.Tensor | None) -> None:
            if n is None:
                progress.stop()
                return
            seen[0] += n
            steps_done[0] += 1
            if steps_done[0] % 20 and steps_done[0] != steps:
                progress.update(task, advance=1)  # reading the loss would wait for the GPU
                return
            rate = seen[0] / max(1e-9, time.perf_counter() - start)
            progress.update(task, advance=1, rate=f"{rate:,.0f}", loss=f"{float(loss):.4f}")

        return update

    # -- checkpoints -------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        tensors = {f"method.{k}": v for k, v in self.method.state_dict().items()}
        if not self.frozen:  # fine-tuned backbone: keep all of it (BN statistics included)
            tensors.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return tensors

    def _load_weights(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device=str(self.device))
        except Exception as exc:  # noqa: BLE001 - corrupt/truncated file
            raise ValueError(f"{path}: cannot read weights ({exc})") from None
        method = {k[7:]: v for k, v in tensors.items() if k.startswith("method.")}
        self.method.load_state_dict(method)
        backbone = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
        if backbone:
            self.backbone.load_state_dict(backbone)

    def save_checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        from contrahash.train import save_safetensors

        state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
                 "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),  # noqa: NPY002
                 "python_rng": random.getstate()}
        # weights first, then the state naming the epoch: a crash between leaves the older
        # epoch number, and resume re-runs that epoch from its own seed
        save_safetensors(self.run_dir / CHECKPOINT, self._weights(), {"epoch": str(epoch)})
        atomic_write(self.run_dir / CHECKPOINT_STATE, lambda f: torch.save(state, f))
        self.completed_epochs = epoch

    def load_checkpoint(self, optimizer: torch.optim.Optimizer) -> int:
        """Restore the last finished epoch if the run has one; returns the epoch to start at."""
        weights, state_path = self.run_dir / CHECKPOINT, self.run_dir / CHECKPOINT_STATE
        if not (weights.exists() and state_path.exists()):
            return 0
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            weights_epoch = int((f.metadata() or {}).get("epoch", -1))
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        if weights_epoch != state["epoch"]:
            raise RuntimeError(f"{self.run_dir}: checkpoint weights (epoch {weights_epoch}) and "
                               f"state (epoch {state['epoch']}) disagree; delete both to restart")
        self._load_weights(weights)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])  # noqa: NPY002
        random.setstate(state["python_rng"])
        self.completed_epochs = state["epoch"]
        self.log_event("resume", epoch=state["epoch"])
        return int(state["epoch"])

    def save_model(self) -> None:
        from contrahash.train import save_safetensors

        save_safetensors(self.run_dir / MODEL, self._weights(),
                         {"method": self.cfg.method, "bits": ",".join(map(str, self.cfg.bits))})

    # -- logging -----------------------------------------------------------------------
    def log_epoch(self, record: dict[str, Any]) -> None:
        append_jsonl(self.run_dir / "metrics.jsonl", record)

    def log_event(self, event: str, **fields: Any) -> None:
        append_jsonl(self.run_dir / "events.jsonl", {"event": event, "time": time.time(), **fields})

    # -- evaluation --------------------------------------------------------------------
    def test_features(self, indices: np.ndarray) -> np.ndarray:
        """Features of ``indices`` with the (possibly fine-tuned) backbone, test transform."""
        if self.frozen:
            return self.clean_features(indices)
        return self._extract(indices, self._test_transform())

    def encode(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        from contrahash.train import encode_features

        return encode_features(self.method, self.test_features(indices), device=self.device)

    def evaluate(self) -> dict[str, Any]:
        """Encode query and database, save codes, compute every metric per code length."""
        from contrahash.metrics import bit_statistics, retrieval_report

        split, labels = self.split, self.dataset.labels
        queries, database = self.evaluation_sets()
        q_codes, db_codes = self.encode(queries), self.encode(database)
        out: dict[str, Any] = {"method": self.cfg.method, "protocol": split.protocol,
                               "topk": split.topk, "evaluated_on": self.cfg.evaluate_on,
                               "bits": {}}
        for k in self.method.bits:
            write_npz(self.run_dir / "codes" / f"{k}.npz", query=q_codes[k], database=db_codes[k],
                      query_labels=labels[queries], database_labels=labels[database],
                      query_index=queries, database_index=database)
            report = retrieval_report(q_codes[k], db_codes[k], labels[queries],
                                      labels[database], topk=split.topk)
            stats = bit_statistics(db_codes[k])
            report["bit_balance"] = stats
            out["bits"][str(k)] = report
        return out

    def evaluation_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """(queries, database) to evaluate on: the protocol's, or validation vs the rest."""
        split = self.split
        if self.cfg.evaluate_on == "query":
            return split.query, split.database
        if self.cfg.evaluate_on != "val":
            raise ValueError(f"evaluate_on must be 'query' or 'val', got '{self.cfg.evaluate_on}'")
        if split.val is None or len(split.val) == 0:
            raise ValueError("evaluate_on=val needs a validation split: set "
                             "data.protocol_options.val_size (e.g. 1000)")
        return split.val, np.setdiff1d(split.database, split.val)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.run_dir / "results.json", results)
        self.log_event("finished", **{f"map@{results['topk']}_{k}": v.get("map")
                                      for k, v in results["bits"].items()})


def expand_source(source: str) -> str:
    """Expand ``$VARS`` and ``~`` in a data source; name the variable when it is unset.

    Configs refer to data by variable (e.g. ``${CONTRAHASH_CIFAR10}``), never by a path of
    one machine.
    """
    expanded = os.path.expanduser(os.path.expandvars(str(source)))
    if "$" in expanded:
        raise ValueError(
            f"data.source '{source}': environment variable not set; export it or pass "
            "data.source=PATH (e.g. data.source=/path/to/cifar10-jpeg.npz)"
        )
    return expanded


def evaluate_run(run_dir: str | os.PathLike, topk: int | None = None) -> dict[str, Any]:
    """Metrics of a finished run from its saved codes (no model needed)."""
    from contrahash.metrics import retrieval_report

    run_dir = Path(run_dir)
    code_files = sorted((run_dir / "codes").glob("*.npz"), key=lambda p: int(p.stem))
    if not code_files:
        raise FileNotFoundError(f"{run_dir}/codes holds no codes: has the run finished?")
    if topk is None:
        split = json.loads((run_dir / "split" / "split.json").read_text())
        topk = split.get("topk")
    out: dict[str, Any] = {}
    for path in code_files:
        z = np.load(path)
        out[path.stem] = retrieval_report(z["query"], z["database"], z["query_labels"],
                                          z["database_labels"], topk=topk)
    return out


def encode_run(run_dir: str | os.PathLike, data: str | None = None, image_root: str | None = None,
               device: str | None = None) -> tuple[dict[int, np.ndarray], Any]:
    """Codes of every image of ``data`` (default: the run's own source) with a trained run."""
    from contrahash.data import load_source

    ctx = RunContext.open(run_dir, device=device)
    if data is not None:
        ctx.dataset = load_source(expand_source(data), image_root=image_root)
    from contrahash.train import encode_features

    indices = np.arange(len(ctx.dataset.images))
    features = ctx._extract(indices, ctx._test_transform())  # fresh: any images, any split
    return encode_features(ctx.method, features, device=ctx.device), ctx.dataset


def _with_overrides(augmenter: Any, overrides: dict[str, Any]) -> Any:
    if not overrides:
        return augmenter
    from contrahash.augment import BatchAugment

    return BatchAugment(augmenter.recipe, augmenter.size, **overrides)


def _hash_indices(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _split_hashes(split_dir: Path) -> dict[str, str]:
    path = split_dir / "split.json"
    if not path.exists():
        return {}
    meta = json.loads(path.read_text())
    return meta.get("sha256", meta.get("hashes", {}))


def _label_agreement(labels: np.ndarray, anchors: np.ndarray, neighbours: np.ndarray) -> float:
    """Diagnostic only (never used for training): how often a mined neighbour shares a label."""
    a = labels[anchors].astype(bool)[:, None, :]
    b = labels[neighbours].astype(bool)
    return float((a & b).any(axis=2).mean())
