"""A training run, from its directory to its results: what ``contrahash train`` calls.

:func:`train_run` assembles a run from its pieces — the run directory
(:mod:`contrahash.training.rundir`), the model (:mod:`contrahash.models.model`), the feature
provider (:mod:`contrahash.training.providers`), neighbour mining
(:mod:`contrahash.training.neighbours`), the optimiser (:mod:`contrahash.training.optim`) and
the evaluator (:mod:`contrahash.evaluation.evaluate`) — and drives the one epoch loop
(:mod:`contrahash.training.loop`). The :class:`Trainer` holds the resume policy: a resume
continues from the last checkpoint (:mod:`contrahash.training.checkpoints`) with the run's own
config, thread count and process count, so a resumed CPU run ends with the same codes as an
uninterrupted one. The model of the last epoch is kept: nothing is selected on labelled query
data. Progress of every phase goes to a callback (:mod:`contrahash.progress`).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrahash.config import TrainConfig, expand_source, folder_labels
from contrahash.methods.base import OptimSpec
from contrahash.models.features import FeatureCache
from contrahash.models.model import HashingModel, build_model, select_device
from contrahash.progress import Progress, ProgressCallback, as_progress
from contrahash.training.checkpoints import CHECKPOINT_SECONDS, load_checkpoint, save_checkpoint
from contrahash.training.distributed import batch_context, context, global_batchnorm
from contrahash.training.loop import train_epochs
from contrahash.training.neighbours import NeighbourMining
from contrahash.training.optim import batch_size_for, make_optimizer, resolve_optim
from contrahash.training.providers import FeatureProvider, make_provider
from contrahash.training.rundir import RunDirectory, RunStateError

__all__ = ["RunResult", "Trainer", "default_run_dir", "train_run"]


@dataclass
class RunResult:
    """What a run produced (``reused``: it had finished before and nothing was recomputed)."""

    run_dir: Path
    results: dict[str, Any]
    epochs: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    reused: bool = False



def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<name> or runs/<method>-<source>-<timestamp>."""
    if cfg.name:
        return Path(cfg.out_dir) / cfg.name
    source = Path(str(cfg.data.source)).stem or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out_dir) / f"{cfg.method}-{source}-{stamp}"


def train_run(
    cfg: TrainConfig | None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressCallback | None = None,
    shared_cache: FeatureCache | None = None,
    stop_after_epoch: int | None = None,
    resume_overrides: Sequence[str] = (),
    allow_thread_change: bool = False,
) -> RunResult:
    """Train ``cfg.method`` and evaluate it in a run directory; see the module docstring.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint with its own
    config.yaml (``cfg`` is ignored); ``resume_overrides`` may change what a resume can honour
    (:data:`~contrahash.training.rundir.RESUME_OVERRIDES`, e.g. ``optim.epochs=60`` to train a finished
    run longer). A finished run is not recomputed: its results are returned (``reused``).
    A resume refuses another thread count than the run's (results at one seed depend on it)
    unless ``allow_thread_change``. ``shared_cache`` lets several runs share one feature
    cache; ``stop_after_epoch`` interrupts after that many epochs (tests of resume).
    """
    if run_dir is None and cfg is None:
        raise ValueError("train_run: give a config, or the run directory to resume")
    run = RunDirectory(run_dir if run_dir is not None else default_run_dir(cfg))
    trainer = Trainer(run, cfg, resume=resume, command=command, progress=as_progress(progress),
                      shared_cache=shared_cache, resume_overrides=resume_overrides,
                      allow_thread_change=allow_thread_change)
    return trainer.fit(stop_after_epoch=stop_after_epoch)


class Trainer:
    """One run from its directory to its results (:func:`train_run` is the entry point)."""

    def __init__(self, run: RunDirectory, cfg: TrainConfig | None, *, resume: bool = False,
                 command: str | None = None, progress: Progress | ProgressCallback | None = None,
                 shared_cache: FeatureCache | None = None,
                 resume_overrides: Sequence[str] = (), allow_thread_change: bool = False) -> None:
        self.run = run
        self.cfg = cfg
        self.resume = resume
        self.command = command
        self.progress = as_progress(progress)
        self.shared_cache = shared_cache
        self.resume_overrides = list(resume_overrides)
        self.allow_thread_change = allow_thread_change
        self.completed_epochs = 0
        self.ctx = context()

    # -- set-up ------------------------------------------------------------------------
    def setup(self) -> None:
        """Seeds, device, dataset, split, model, feature provider; environment.json."""
        from contrahash.data import load_source
        from contrahash.data.protocols import split_for_run
        from contrahash.environment import environment_info
        from contrahash.runtime import tune_cpu_allocator

        cfg = self.cfg
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
        else:
            tune_cpu_allocator()

        def data_and_split() -> tuple[Any, Any]:
            with self.progress.phase("data loading", None, unit="source",
                                     source=cfg.data.source):
                dataset = load_source(expand_source(cfg.data.source),
                                      image_root=cfg.data.image_root,
                                      cache_dir=cfg.data.cache_dir,
                                      labels=folder_labels(cfg.data))
            self.run.track("split")
            split = split_for_run(self.run.path, cfg.data.protocol, dataset,
                                  seed=cfg.data.seed, **cfg.data.protocol_options)
            return dataset, split

        # rank 0 first: it may fill the decoded-image cache and writes the split lists
        self.dataset, self.split = self._main_first(data_and_split)
        self.model: HashingModel = build_model(cfg, self.device)
        if self.ctx.world_size > 1 and self.model.method.trainable:  # fit-only methods: fine
            self.model.method.check_distributed()
            if not self.model.frozen:  # fine-tuned blocks normalise with the global batch
                global_batchnorm(self.model.backbone, self.device)
                self.model.backbone.refresh_blocks()
        self.provider: FeatureProvider = make_provider(
            self.model, self.dataset, self.split, cfg,
            self.shared_cache or FeatureCache(cfg.cache.dir), self.progress)
        env = environment_info(self.device)
        env.update(dataset=self.dataset.name, dataset_fingerprint=self.dataset.fingerprint,
                   images=len(self.dataset.images), skipped_files=self.dataset.n_skipped,
                   skipped_examples=[list(s) for s in self.dataset.skipped[:20]],
                   split_hashes=self.run.split_hashes(), world_size=self.ctx.world_size,
                   engine=self.model.engine_info())
        if self.resume:
            self._check_world_size()
        self.run.write_environment(env, resumed=self.resume)

    def _main_first(self, work: Callable[[], Any]) -> Any:
        """``work()`` on rank 0, then on the other processes (what it writes, they read)."""
        if self.ctx.is_main:
            out = work()
            self.ctx.barrier()
            return out
        self.ctx.barrier()
        return work()

    def _check_world_size(self) -> None:
        import warnings

        before = self.run.read_json("environment.json").get("world_size", 1)
        if before != self.ctx.world_size:
            self.run.log_event("world_size_change", recorded=before, now=self.ctx.world_size)
            warnings.warn(f"{self.run.path} trained with {before} process(es) and resumes with "
                          f"{self.ctx.world_size}: it continues, but the result is not "
                          "bit-identical to an uninterrupted run (float sums in another order)",
                          stacklevel=2)

    # -- orchestration -------------------------------------------------------------------
    def fit(self, stop_after_epoch: int | None = None) -> RunResult:
        """Set up, train (or fit), save the model, evaluate, write results.json — holding the
        run directory's lock; a new run that fails before its first checkpoint leaves nothing
        behind."""
        from contextlib import nullcontext

        from contrahash.config import resolve_config
        from contrahash.locks import DirectoryLock
        from contrahash.training.distributed import init_from_env

        if self.resume and not self.run.path.is_dir():
            raise FileNotFoundError(f"--resume: {self.run.path} does not exist")
        if self.resume and not self.run.is_run():
            raise FileNotFoundError(
                f"--resume: {self.run.path} holds no config.yaml (not a run directory)")
        cfg = self.cfg if not self.resume else resolve_config(self.run.path / "config.yaml")
        self.ctx = init_from_env(select_device(cfg.device))
        self.run.writer = self.ctx.is_main  # one writer: rank 0
        lock = (DirectoryLock(self.run.path, what="run", command=self.command,
                              hint="choose another --run-dir / name=")
                if self.ctx.is_main else nullcontext())
        with lock:
            try:
                return self._fit(stop_after_epoch)
            except Exception:
                if not self.resume and self.run.state() == "new":
                    self.run.abandon()
                raise

    def _fit(self, stop_after_epoch: int | None) -> RunResult:
        if self.resume:
            finished = self.run.state() == "finished"
            before = self.run.read_json("results.json").get("optim", {}).get("epochs")
            self.cfg = self.run.open_for_resume(self.command, self.resume_overrides)
            self._check_threads()
            longer = self.cfg.optim.get("epochs") not in (None, before)
            if finished and not longer:
                results = self.run.read_json("results.json")
                return RunResult(self.run.path, results, self.run.epoch_records(),
                                 float(results.get("train_seconds") or 0.0),
                                 float(results.get("images_per_second") or 0.0), reused=True)
        else:
            self.run.create(self.cfg, self.command)
        self.setup()
        method = self.model.method
        spec = resolve_optim(method, self.cfg.optim)
        method_config = asdict(method.config)
        # every hyper-parameter in effect, defaults included: config.yaml holds only what was set
        self.run.log_event("start", optim=spec.__dict__, method_config=method_config,
                           device=str(self.device), provider=type(self.provider).__name__,
                           world_size=self.ctx.world_size)
        t0 = time.perf_counter()
        logs: list[dict[str, Any]] = []
        if not method.trainable or method.needs_fit:  # (every process: caches build together)
            train_features = self.provider.clean_features(self.split.train)
        if not method.trainable:
            method.fit(torch.as_tensor(train_features).float())
        else:
            if method.needs_fit:
                method.fit(torch.as_tensor(train_features).float().to(self.device))
            logs = self._train(spec, stop_after_epoch)
            if stop_after_epoch is not None and self.completed_epochs < spec.epochs:
                self.ctx.barrier()
                return RunResult(self.run.path, {}, logs, _train_seconds(logs))
        self.run.save_model(self.model.weights(),
                            {"method": self.cfg.method, "bits": ",".join(map(str, self.cfg.bits))})
        results = self.evaluate()  # every process encodes a share; rank 0 writes
        train_seconds = _train_seconds(logs)
        images = sum(int(r.get("images", 0)) for r in logs)
        results["method_config"] = method_config
        results["optim"] = dict(spec.__dict__)
        results["train_seconds"] = round(train_seconds, 3)
        results["images_per_second"] = round(images / train_seconds, 1) if train_seconds else 0.0
        results["total_seconds"] = round(time.perf_counter() - t0, 3)
        self.run.write_results(results)
        self.ctx.barrier()
        return RunResult(self.run.path, results, logs, train_seconds, results["images_per_second"])

    def evaluate(self) -> dict[str, Any]:
        """Encode, save the codes, compute the metrics (see :mod:`contrahash.evaluation.evaluate`)."""
        from contrahash.evaluation.evaluate import evaluate

        return evaluate(self.model, self.provider.test_features, self.dataset.labels, self.split,
                        self.cfg.evaluate_on, method_name=self.cfg.method, run=self.run,
                        progress=self.progress, views=self.provider.evaluation_views)

    def _check_threads(self) -> None:
        """A resume runs with the run's thread count: results at one seed depend on it."""
        recorded = (self.run.read_json("environment.json").get("threads") or {}).get(
            "torch_intra_op")
        now = torch.get_num_threads()
        if recorded is None or recorded == now or self.allow_thread_change:
            if recorded is not None and recorded != now:
                self.run.log_event("thread_change", recorded=recorded, now=now)
            return
        raise RunStateError(
            f"{self.run.path} trained with {recorded} thread(s), this process has {now}: results "
            f"at one seed depend on the thread count, so the resumed run would not be "
            f"bit-identical; resume with --threads {recorded} (or CONTRAHASH_THREADS={recorded}), "
            "or pass --allow-thread-change to continue anyway")

    # -- training ----------------------------------------------------------------------
    def _train(self, spec: OptimSpec, stop_after_epoch: int | None) -> list[dict[str, Any]]:
        method, model, provider = self.model.method, self.model, self.provider
        n_train = len(self.split.train)
        batch = batch_size_for(method, spec, n_train)
        optimizer = make_optimizer(spec, list(method.parameters()),
                                   [p for p in model.backbone.parameters() if p.requires_grad])
        start_epoch = self._load_checkpoint(optimizer)
        mining = self._neighbour_mining()
        spec_nb = method.neighbours()

        provider.prepare()  # the caches training reads (built by every process together)
        if mining is not None:
            provider.use_neighbours(mining.initial(provider.clean_features), spec_nb)

        def before_epoch(epoch: int) -> None:
            if mining is not None and mining.refresh_due(epoch):  # re-mine from the model
                provider.use_neighbours(mining.refreshed(epoch, self._embedding), spec_nb)

        last_save = [time.monotonic()]

        def after_epoch(record: dict[str, Any]) -> bool:
            done = len(logs_seen) + 1
            stop = stop_after_epoch is not None and done >= stop_after_epoch
            # a checkpoint at most every CHECKPOINT_SECONDS (and at the end, or a stop); a
            # resume repeats the epochs since (each is seeded by (seed, epoch): same result)
            if (stop or record["epoch"] >= spec.epochs
                    or time.monotonic() - last_save[0] >= CHECKPOINT_SECONDS):
                self._save_checkpoint(optimizer, record["epoch"])
                last_save[0] = time.monotonic()
            self.run.log_epoch(record)
            logs_seen.append(record)
            return not stop

        logs_seen: list[dict[str, Any]] = []
        steps = n_train // batch
        return train_epochs(method, optimizer, spec, lambda e, g: provider.epoch(batch, g),
                            steps_per_epoch=steps, images_per_epoch=steps * batch,
                            seed=self.cfg.seed, start_epoch=start_epoch, device=self.device,
                            before_epoch=before_epoch, after_epoch=after_epoch,
                            progress=self.progress, batch=batch_context(self.ctx, batch))

    def _neighbour_mining(self) -> NeighbourMining | None:
        spec = self.model.method.neighbours()
        if spec is None:
            return None
        return NeighbourMining(spec, self.split.train, self.split.database,
                               self.run.neighbours_path, device=self.device,
                               labels=self.dataset.labels, log_event=self.run.log_event,
                               progress=self.progress, write=self.ctx.is_main)

    def _embedding(self, indices: np.ndarray, chunk: int = 4096) -> torch.Tensor:
        """``method.embed`` of the current model on un-augmented images (for re-mining)."""
        out = []
        for lo in range(0, len(indices), chunk):
            feats = torch.as_tensor(np.asarray(self.provider.test_features(indices[lo:lo + chunk])))
            out.append(self.model.method.embed(feats.float().to(self.device)).float().cpu())
        return torch.cat(out)

    # -- checkpoints (contrahash.training.checkpoints) -----------------------------------
    def _save_checkpoint(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        save_checkpoint(self.run, self.model.weights(), optimizer, epoch)
        self.completed_epochs = epoch

    def _load_checkpoint(self, optimizer: torch.optim.Optimizer) -> int:
        """Restore the last finished epoch if the run has one; the epoch to start at."""
        self.completed_epochs = load_checkpoint(self.run, optimizer, self.device,
                                                self.model.load_weights)
        return self.completed_epochs


def _train_seconds(logs: Sequence[dict[str, Any]]) -> float:
    return float(sum(r["seconds"] for r in logs))
