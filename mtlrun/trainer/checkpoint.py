"""Checkpoints: the full training state (checkpoint.pt, for resuming) and the selected model (best_model.pt).

When one is written (`Checkpoints`): at the end of every ``trainer.checkpoint_every``-th epoch and of
the last, at every epoch whose evaluation picks a new best, mid-epoch once ``trainer.checkpoint_minutes``
passed since the last one, and when a stop signal arrives. checkpoint.pt holds everything that changes
during training (model, optimizer, scheduler, weighting state, the backward engine's counters, the
regulariser's state, every RNG, the position in the current epoch), so a run resumed from it ends exactly
where an uninterrupted run would.

best_model.pt is written after checkpoint.pt, and only with one: a new best is always saved together with a
checkpoint of the same epoch, so if a crash falls between the two files, `restore` rewrites
best_model.pt from the checkpoint's weights and the two never disagree. Files are replaced atomically and
fsynced (see `mtlrun.trainer.outputs`); loading uses ``weights_only=True``, so a file cannot run code.
"""

from __future__ import annotations

import ast
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mtlrun.errors import ConfigError
from mtlrun.trainer.outputs import MetricsWriter, atomic_write
from mtlrun.trainer.state import TrainState

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mtlrun.trainer.setup import Setup

CHECKPOINT = "checkpoint.pt"
BEST_MODEL = "best_model.pt"


class Checkpoints:
    """When and where checkpoints are written (``trainer.checkpoint*`` keys)."""

    def __init__(self, folder: Path, trainer: DictConfig, enabled: bool = True) -> None:
        """``enabled=False``: none at all (the ranks of a data-parallel run other than rank 0)."""
        self.folder = folder
        self.enabled = trainer.checkpoint and enabled
        self.every = trainer.checkpoint_every
        minutes = trainer.checkpoint_minutes
        self.seconds = None if minutes is None else 60.0 * minutes
        self._last = time.monotonic()

    def due_mid_epoch(self) -> bool:
        return self.enabled and self.seconds is not None and time.monotonic() - self._last >= self.seconds

    def due_after_epoch(self, epoch: int, last_epoch: int, new_best: bool) -> bool:
        return self.enabled and (epoch % self.every == 0 or epoch == last_epoch or new_best)

    def write(self, s: Setup, state: TrainState, metrics: MetricsWriter, new_best: bool = False) -> None:
        """checkpoint.pt (after putting the metrics rows it covers on the disk), then best_model.pt."""
        if not self.enabled:
            return
        metrics.sync()
        save(self.folder / CHECKPOINT, s, state)
        if new_best:
            save_model(self.folder / BEST_MODEL, s.model, state.epoch)
        self._last = time.monotonic()


def _save(obj: dict, path: Path) -> None:
    atomic_write(path, lambda file: torch.save(obj, file))


def save_model(path: Path, model: torch.nn.Module, epoch: int) -> None:
    _save({"model": model.state_dict(), "epoch": epoch}, path)


def save(path: Path, s: Setup, state: TrainState) -> None:
    _save(
        {
            "model": s.model.state_dict(),
            "weighting": s.weighting.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict() if s.scheduler is not None else None,
            "engine": s.engine.state_dict(),
            "diagnostics": s.diagnostics.state_dict(),
            "regularizer": s.regularizer.state_dict(),  # e.g. its task covariance, its clusters
            "affinity": s.affinity.state_dict(),  # trainer.affinity_every's running mean
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": repr(random.getstate()),
                "shuffle": s.shuffle.get_state(),
            },
            "state": state.to_dict(),
        },
        path,
    )


def load(path: Path) -> dict:
    """A checkpoint file's content; a missing, truncated or foreign file is a ConfigError that says so."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"resume: no checkpoint at {path}") from None
    except Exception as err:
        raise ConfigError(
            f"resume: {path} is not a readable mtlrun checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); it may be truncated or another file. Start the run again, "
            "or resume from a copy of the folder that has a good checkpoint.pt"
        ) from None
    missing = {"model", "weighting", "optimizer", "engine", "diagnostics", "rng", "state"} - set(
        saved if isinstance(saved, dict) else ()
    )
    if missing:
        raise ConfigError(
            f"resume: {path} is not a checkpoint of this version of mtlrun (missing {sorted(missing)}); "
            "start the run again"
        )
    return saved


def restore(saved: dict, s: Setup, folder: Path) -> TrainState:
    """Load everything a checkpoint holds into the run's objects; returns the training state. Rewrites
    best_model.pt in ``folder`` when a crash left it behind the checkpoint."""
    try:
        s.model.load_state_dict(saved["model"])
        s.weighting.load_state_dict(saved["weighting"])
        s.optimizer.load_state_dict(saved["optimizer"])
        if s.scheduler is not None and saved["scheduler"] is not None:
            s.scheduler.load_state_dict(saved["scheduler"])
        s.engine.load_state_dict(saved["engine"])
        s.diagnostics.load_state_dict(saved["diagnostics"])
        s.regularizer.load_state_dict(saved.get("regularizer", {}))
        s.affinity.load_state_dict(saved.get("affinity"))  # absent from checkpoints written before it
        state = TrainState.from_dict(saved["state"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"resume: the checkpoint does not fit this config ({str(err).splitlines()[0]}); "
            "resume with the same data, architecture, weighting and optimizer as the original run"
        ) from None
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np_state = rng["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached"],
        )
    )
    random.setstate(ast.literal_eval(rng["python"]))
    s.shuffle.set_state(rng["shuffle"])
    at_epoch_end = state.current.shuffle_state is None  # else the weights are those of a later step
    if at_epoch_end and state.best_epoch == state.epoch and model_epoch(folder / BEST_MODEL) != state.epoch:
        save_model(folder / BEST_MODEL, s.model, state.epoch)  # the crash fell between the two files
    return state


def model_epoch(path: Path) -> int | None:
    """The epoch a best_model.pt holds; None when there is no readable file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    except Exception:
        return None


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "cached": cached,
    }
