"""Shared helpers for the fast tier: compose the real conf/, list a group's options, build a run's objects.

Test modules import these helpers directly (``from conftest import compose_cfg``): pytest puts tests/ on
sys.path, and parametrizing over the catalogue needs them at collection time, before fixtures exist.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mtlrun import cli, schema
from mtlrun.instantiate import build
from mtlrun.tasks import build_tasks
from mtlrun.trainer.setup import setup_data, setup_model

CONF = Path(cli.config_dir())

# Tensors in these tests are tiny: a second intra-op thread only adds synchronisation, and on a busy 2-core
# machine it makes a small conv layer 100x slower (measured: 1 ms vs 220 ms per forward/backward).
torch.set_num_threads(1)

# Size parameters of the shipped data sets (see each data class's __init__), shrunk so a build takes
# milliseconds. A new data set whose size parameters have other names fails
# test_configs.py::test_data_and_architecture_instantiate until its names are added here.
SMALL_SIZES = {
    "train_pairs": 64,
    "val_pairs": 32,
    "test_pairs": 32,
    "n_train": 64,
    "n_val": 32,
    "n_test": 32,
}


def options(group: str) -> list[str]:
    """The options of a config group: sorted stems of conf/<group>/*.yaml."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def groups() -> list[str]:
    """Every config group that ships options, e.g. ``data``, ``optim/scheduler``."""
    return sorted(
        {str(path.parent.relative_to(CONF)) for path in CONF.rglob("*.yaml") if path.parent != CONF}
    )


@functools.cache
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    schema.register()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose("config", overrides=list(overrides), return_hydra_config=False)


def compose_cfg(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config composed with ``overrides``, exactly as ``mtlrun`` would (a fresh copy each call)."""
    return copy.deepcopy(_compose(tuple(overrides)))


def shrink(cfg: DictConfig) -> DictConfig:
    """Make the data set small and the run CPU-only, in place; returns ``cfg``."""
    for key, value in SMALL_SIZES.items():
        if key in cfg.data:
            cfg.data[key] = value
    cfg.trainer.device = "cpu"
    return cfg


def small_cfg(overrides: Sequence[str] = ()) -> DictConfig:
    return shrink(compose_cfg(overrides))


def build_objects(cfg: DictConfig, seed: int = 0) -> SimpleNamespace:
    """Tasks, data, model and weighting from ``cfg``, through the runner's own setup functions."""
    torch.manual_seed(seed)
    device = torch.device("cpu")
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    data = setup_data(cfg, tasks, device)
    model = setup_model(cfg, tasks, data, device)
    weighting = build(cfg.weighting, "weighting", tasks=tasks)
    return SimpleNamespace(cfg=cfg, tasks=tasks, data=data, model=model, weighting=weighting)


def first_batch(data, size: int = 8, split: str = "train") -> dict:
    return next(data.batches(split, size))


def nonzero(grad: torch.Tensor | None) -> bool:
    """Whether a ``.grad`` carries any signal (None counts as zero)."""
    return grad is not None and bool(grad.abs().sum() > 0)
