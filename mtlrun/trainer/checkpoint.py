"""Checkpoints: the full training state (for resuming) and the selected model's weights.

Files are written through a temporary file and renamed, so a run killed mid-write keeps the previous
checkpoint. Loading uses ``weights_only=True``: a checkpoint cannot run code.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch

from mtlrun.errors import ConfigError


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(path: Path, model: torch.nn.Module) -> None:
    _atomic_save({"model": model.state_dict()}, path)


def save(path: Path, model, weighting, optimizer, scheduler, shuffle: torch.Generator, state) -> None:
    _atomic_save(
        {
            "model": model.state_dict(),
            "weighting": weighting.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": repr(random.getstate()),
                "shuffle": shuffle.get_state(),
            },
            "state": dataclasses.asdict(state),
        },
        path,
    )


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "cached": cached,
    }


def resume(source: Path, out_dir: Path, model, weighting, optimizer, scheduler, shuffle, state_cls):
    """Restore everything from ``source`` (a run folder or its checkpoint.pt) and copy that run's metrics
    rows up to the checkpoint's epoch into this run's metrics.csv, so the new folder is complete."""
    path = source / "checkpoint.pt" if source.is_dir() else source
    if not path.exists():
        raise ConfigError(
            f"resume: no checkpoint at {path}; point resume= at a run folder that has checkpoint.pt"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(saved["model"])
        weighting.load_state_dict(saved["weighting"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved["scheduler"] is not None:
            scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(
            f"resume: the checkpoint at {path} does not fit this config ({str(err).splitlines()[0]}); "
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
    shuffle.set_state(rng["shuffle"])
    state = state_cls(**saved["state"])
    old_metrics = path.parent / "metrics.csv"
    if old_metrics.exists():
        with old_metrics.open() as src, (out_dir / "metrics.csv").open("w", newline="") as dst:
            reader, writer = csv.reader(src), csv.writer(dst)
            writer.writerow(next(reader))
            writer.writerows(row for row in reader if int(row[0]) <= state.epoch)
    if (path.parent / "best_model.pt").exists() and path.parent != out_dir:
        (out_dir / "best_model.pt").write_bytes((path.parent / "best_model.pt").read_bytes())
    return state
