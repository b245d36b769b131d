"""A run directory: what a training run writes, where, and how it is read back.

Layout::

    config.yaml         resolved configuration (defaults + YAML + overrides)
    command.txt         the exact command line (command_resume.txt for each resume)
    environment.json    versions, device, threads, git commit, dataset fingerprint, skipped files
    split/              query.txt database.txt train.txt split.json (with sha256 of each list)
    events.jsonl        start/neighbours/resume/finished events; metrics.jsonl: one line per epoch
    neighbours.npz      the latest mined neighbours (methods with neighbour positives)
    checkpoint.json     names the last finished epoch's checkpoint-NNNNN.safetensors (weights)
                        and checkpoint-NNNNN.pt (optimiser and RNG state), written as a unit
    model.safetensors   final weights (method heads + fine-tuned backbone blocks)
    codes/<bits>.npz    query/database codes (±1 int8), labels and dataset indices
    results.json        mAP@K, P@N, P@r2, PR curve and bit statistics per code length

Every file is written atomically (:mod:`contrahash.io`), and a directory has one writer at a
time (:class:`~contrahash.locks.DirectoryLock`). This module knows files, not models: weights
arrive and leave as name → tensor dicts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from contrahash.config import TrainConfig, config_to_dict, resolve_config
from contrahash.io import append_jsonl, atomic_write, write_json, write_npz, write_text

__all__ = ["CHECKPOINT", "MODEL", "RESUME_OVERRIDES", "RunDirectory", "RunStateError"]

#: names the last checkpoint's pair of files (checkpoint-NNNNN.safetensors and .pt)
CHECKPOINT = "checkpoint.json"
MODEL = "model.safetensors"
RESULTS = "results.json"
#: config keys a resume may change: training longer, and where or how fast it runs
RESUME_OVERRIDES = ("optim.epochs", "device", "eval_batch_size")


class RunStateError(RuntimeError):
    """The directory is not in a state the request needs (e.g. a checkpoint pair that
    disagrees); the message says what to do."""


class RunDirectory:
    """Files of one run (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike, writer: bool = True) -> None:
        self.path = Path(path)
        #: False in the processes of a distributed run other than rank 0: they read, only
        #: rank 0 writes
        self.writer = writer
        self._created: list[Path] = []
        self._made_dir = False

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- state ---------------------------------------------------------------------------
    @property
    def split_dir(self) -> Path:
        return self.path / "split"

    @property
    def neighbours_path(self) -> Path:
        return self.path / "neighbours.npz"

    def is_run(self) -> bool:
        """Whether the directory holds a run's config."""
        return (self.path / "config.yaml").is_file()

    def state(self) -> str:
        """'finished' (results.json), 'partial' (a checkpoint, no results) or 'new'."""
        if (self.path / RESULTS).is_file():
            return "finished"
        if (self.path / CHECKPOINT).exists():
            return "partial"
        return "new"

    # -- creation ------------------------------------------------------------------------
    def create(self, cfg: TrainConfig, command: str | None = None) -> None:
        """Start a new run here: refuses a directory that already holds one."""
        if self.state() != "new":
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose "
                "another name=/out_dir= (nothing was overwritten)"
            )
        if not self.writer:
            return
        self._made_dir = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._write("config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        self._write("command.txt", _command_line(command) + "\n")

    def open_for_resume(self, command: str | None = None,
                        overrides: list[str] | None = None) -> TrainConfig:
        """The run's own config, for a resume; records the resuming command.

        ``overrides`` (``key=value``) may only change what a resume can honour:
        :data:`RESUME_OVERRIDES` (e.g. more ``optim.epochs``); the changed config is written
        back to config.yaml and logged as a "config_change" event. Anything else is refused.
        """
        from contrahash.config import parse_override

        if not self.is_run():
            raise FileNotFoundError(
                f"--resume: {self.path} holds no config.yaml (not a run directory)")
        cfg = resolve_config(self.path / "config.yaml")
        changes: list[str] = []
        for text in overrides or []:
            keys, _ = parse_override(text)
            key = ".".join(keys)
            if key not in RESUME_OVERRIDES:
                raise ValueError(
                    f"--resume: '{key}' cannot change in a run that has started (its results "
                    f"would mix two configs); a resume may change {', '.join(RESUME_OVERRIDES)}; "
                    "start a new run for anything else")
            changes.append(text)
        if changes:
            new = resolve_config(self.path / "config.yaml", changes)
            if "epochs" in cfg.optim or "epochs" in new.optim:
                done = len(self.epoch_records())
                if int(new.optim.get("epochs", 0)) < done:
                    raise ValueError(f"--resume: optim.epochs={new.optim.get('epochs')} is fewer "
                                     f"than the {done} epochs already trained")
            if self.writer:
                write_text(self.path / "config.yaml", yaml.safe_dump(config_to_dict(new),
                                                                      sort_keys=False))
            self.log_event("config_change", overrides=changes)
            cfg = new
        if self.writer:
            write_text(self.path / "command_resume.txt", _command_line(command) + "\n")
        return cfg

    def abandon(self) -> None:
        """Undo a failed start of a new run: remove what :meth:`create` and the set-up wrote
        (the whole directory when this run created it), so nothing is left behind."""
        if self.state() != "new" or not self.writer:
            return
        if self._made_dir:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for path in self._created:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def track(self, name: str) -> Path:
        """A path inside the run that :meth:`abandon` removes after a failed start."""
        path = self.path / name
        if path not in self._created:
            self._created.append(path)
        return path

    def _write(self, name: str, text: str) -> None:
        write_text(self.track(name), text)

    # -- records -------------------------------------------------------------------------
    def write_environment(self, env: dict[str, Any], resumed: bool = False) -> None:
        """environment.json (a resume keeps the original and writes environment_resume.json)."""
        name = "environment_resume.json" if resumed else "environment.json"
        if self.writer:
            write_json(self.track(name), env)

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the run, or {} when absent or unreadable."""
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return {}

    def log_event(self, event: str, **fields: Any) -> None:
        """Append an event (start, neighbours, resume, finished) to events.jsonl."""
        if self.writer:
            append_jsonl(self.track("events.jsonl"),
                         {"event": event, "time": time.time(), **fields})

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Readable records of events.jsonl (of one kind when given), in order."""
        path = self.path / "events.jsonl"
        out: list[dict[str, Any]] = []
        if not path.is_file():
            return out
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and (kind is None or record.get("event") == kind):
                out.append(record)
        return out

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's metrics to metrics.jsonl."""
        if self.writer:
            append_jsonl(self.track("metrics.jsonl"), record)

    def epoch_records(self) -> list[dict[str, Any]]:
        """metrics.jsonl, the last record of each epoch (a resume may repeat an epoch)."""
        path = self.path / "metrics.jsonl"
        per_epoch: dict[int, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    per_epoch[int(record["epoch"])] = record
                except (ValueError, KeyError, TypeError):
                    continue
        return [per_epoch[e] for e in sorted(per_epoch)]

    # -- weights -------------------------------------------------------------------------
    def save_checkpoint(self, weights: dict[str, torch.Tensor], state: dict[str, Any],
                        epoch: int) -> None:
        """The last finished epoch's weights and optimiser/RNG state, as one unit: both files
        are written under the epoch's name, then ``checkpoint.json`` is pointed at them (an
        atomic replace, the commit point), then the previous pair is removed. A crash at any
        moment leaves a complete pair that the pointer names."""
        if not self.writer:
            return
        name = f"checkpoint-{epoch:05d}"
        save_safetensors(self.path / f"{name}.safetensors", weights, {"epoch": str(epoch)})
        atomic_write(self.path / f"{name}.pt", lambda f: torch.save({**state, "epoch": epoch}, f))
        write_json(self.path / CHECKPOINT, {"epoch": epoch, "weights": f"{name}.safetensors",
                                            "state": f"{name}.pt"})
        for old in self.path.glob("checkpoint-*"):
            if not old.name.startswith(name):
                old.unlink(missing_ok=True)

    def load_checkpoint(self, device: torch.device | str = "cpu"
                        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(weights, state) of the last finished epoch, or None when there is none."""
        pointer = self.read_json(CHECKPOINT)
        if not pointer:
            return None
        weights, state_path = self.path / pointer["weights"], self.path / pointer["state"]
        if not (weights.is_file() and state_path.is_file()):
            raise RunStateError(f"{self.path}: {CHECKPOINT} names {weights.name} and "
                                f"{state_path.name}, which are missing; the checkpoint is lost "
                                "(start the run again)")
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        if state["epoch"] != pointer["epoch"]:
            raise RunStateError(f"{self.path}: {state_path.name} holds epoch {state['epoch']}, "
                                f"{CHECKPOINT} says {pointer['epoch']}; start the run again")
        return load_safetensors(weights, device), state

    def save_model(self, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """The final weights (model.safetensors)."""
        if self.writer:
            save_safetensors(self.path / MODEL, weights, metadata)

    def load_model(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The final weights; a clear error when the run did not finish."""
        path = self.path / MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the run did not finish")
        return load_safetensors(path, device)

    # -- outputs -------------------------------------------------------------------------
    def write_codes(self, bits: int, **arrays: np.ndarray) -> Path:
        """codes/<bits>.npz."""
        path = self.path / "codes" / f"{bits}.npz"
        return write_npz(path, **arrays) if self.writer else path

    def code_files(self) -> list[Path]:
        """codes/<bits>.npz files, shortest code first."""
        return sorted((self.path / "codes").glob("*.npz"), key=lambda p: int(p.stem))

    def write_results(self, results: dict[str, Any]) -> None:
        """results.json, and a "finished" event with the headline numbers."""
        if self.writer:
            write_json(self.path / RESULTS, results)
        if results.get("labels") is False:
            self.log_event("finished", **{f"self_retrieval@10_{k}": v.get("self_retrieval_at_10")
                                          for k, v in results.get("bits", {}).items()})
            return
        self.log_event("finished", **{f"map@{results.get('topk')}_{k}": v.get("map")
                                      for k, v in results.get("bits", {}).items()})

    def split_hashes(self) -> dict[str, str]:
        """sha256 of each split list (from split/split.json)."""
        meta = self.read_json("split/split.json")
        return meta.get("sha256", meta.get("hashes", {}))


def save_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> None:
    """Atomic safetensors write of CPU-contiguous copies."""
    from safetensors.torch import save

    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(clean, metadata=metadata)
    atomic_write(path, lambda f: f.write(blob))


def load_safetensors(path: str | os.PathLike, device: torch.device | str = "cpu"
                     ) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged file is a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated file
        raise ValueError(f"{path}: cannot read weights ({exc})") from None


def _command_line(command: str | None) -> str:
    return command or " ".join(shlex.quote(a) for a in sys.argv)
