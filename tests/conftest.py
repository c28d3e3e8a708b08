"""Shared helpers for the fast tier: compose the real conf/, list a group's options, build a run's objects.

Test modules import these helpers directly (``from conftest import compose_cfg``): pytest puts tests/ on
sys.path, and parametrizing over the catalogue needs them at collection time, before fixtures exist.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import hydra
import numpy as np
import pytest
import torch
from census_files import write_census_files
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mtlrun import paths, schema
from mtlrun.data.base import TensorData
from mtlrun.data.idx import write_idx
from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.tasks import build_tasks
from mtlrun.trainer.setup import fit_tasks, setup_data, setup_model

CONF = Path(paths.config_dir())

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


def write_mnist_files(root: Path, n_train: int = 128, n_test: int = 40, seed: int = 0) -> Path:
    """The four MNIST IDX files (random 28x28 uint8 images, labels i % 10) in ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return root


@functools.cache
def tiny_mnist_keys() -> dict:
    """Data keys that point a MultiMNIST-style option at tiny files, written once per session."""
    root = Path(tempfile.mkdtemp(prefix="mtlrun-test-mnist-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return {"root": str(write_mnist_files(root)), "val_size": 48, "cache": False}


@functools.cache
def tiny_census_keys() -> dict:
    """Data keys that point data=census_income at tiny files (96 training, 80 test rows; 40/40 val/test)."""
    root = Path(tempfile.mkdtemp(prefix="mtlrun-test-census-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    write_census_files(root)
    return {"root": str(root)}


# Data sets that read files the user has (none ship with mtlrun), keyed by their _target_: a function that
# returns the data keys pointing them at tiny files of the right format, so catalogue-wide tests (every
# `data` option) build them like the generated data sets. shrink() applies it.
FILE_DATA = {
    "mtlrun.data.multimnist.MultiMNIST": tiny_mnist_keys,
    "mtlrun.data.census_income.CensusIncome": tiny_census_keys,
}


def file_data_overrides(overrides: Sequence[str]) -> list[str]:
    """Command-line overrides (``data.root=...``) that point a run composed with ``overrides`` at tiny files
    when its data set reads files (FILE_DATA); none otherwise. For tests that run the real `mtlrun`."""
    keys = FILE_DATA.get(compose_cfg(overrides).data.get("_target_"), dict)()
    return [f"data.{key}={value}" for key, value in keys.items()]


def options(group: str) -> list[str]:
    """The options of a config group: sorted stems of conf/<group>/*.yaml."""
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


def data_family(target: str) -> type:
    """The data class ``target`` specialises: the last class before TensorData in its MRO (CensusIncome ->
    TabularData; a class derived from TensorData directly is its own family)."""
    mro = [c for c in get_class(target).__mro__ if issubclass(c, TensorData) and c is not TensorData]
    return mro[-1]


def one_data_option_per_class() -> list[str]:
    """The `data` options, keeping one per data class family: the one named after the family's module, else
    the first.

    Options of one class (multimnist, multifashion) differ only in their files and names, and a subclass
    (census_income of tabular) feeds the model through its base's code, so the cross products with every
    architecture and every weighting need one of them; each still composes and is checked on its own
    (test_configs.py, the class's own test file).
    """
    picked: dict[type, str] = {}
    for option in options("data"):
        family = data_family(OmegaConf.load(CONF / "data" / f"{option}.yaml").data._target_)
        if family not in picked or family.__module__.split(".")[-1] == option:
            picked[family] = option
    return sorted(picked.values())


def groups() -> list[str]:
    """Every config group that ships options, e.g. ``data``, ``optim/scheduler``."""
    return sorted(
        {str(path.parent.relative_to(CONF)) for path in CONF.rglob("*.yaml") if path.parent != CONF}
    )


@functools.cache
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    schema.register()
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra.compose(
            "config", overrides=schema.task_key_overrides(list(overrides)), return_hydra_config=False
        )


def compose_cfg(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config composed with ``overrides``, exactly as ``mtlrun`` would (a fresh copy each call)."""
    return copy.deepcopy(_compose(tuple(overrides)))


def shrink(cfg: DictConfig) -> DictConfig:
    """Make the data set small (file-based ones read tiny files) and the run CPU-only, in place."""
    for key, value in SMALL_SIZES.items():
        if key in cfg.data:
            cfg.data[key] = value
    for key, value in FILE_DATA.get(cfg.data.get("_target_"), dict)().items():
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
    tasks = fit_tasks(tasks, data)
    model = setup_model(cfg, tasks, data, device)
    weighting = build(cfg.weighting, "weighting", tasks=tasks)
    return SimpleNamespace(cfg=cfg, tasks=tasks, data=data, model=model, weighting=weighting)


def tiny_experts(architecture: str, data: str, encoder: dict | None = None, **options) -> SimpleNamespace:
    """A mixture-of-experts model (mmoe, omoe, ple, cgc) on ``data`` with tiny experts, heads and encoder,
    ``options`` set on the architecture node and ``encoder`` on the encoder's (one compose per architecture
    and data set: composing costs more than building)."""
    cfg = small_cfg([f"architecture={architecture}", f"data={data}"])
    if data == "multidigits":
        cfg.encoder.channels, cfg.encoder.out_dim = [4], 8
    else:
        cfg.encoder.hidden = [8]
    cfg.heads.hidden = [4]
    for key, value in (encoder or {}).items():
        cfg.encoder[key] = value
    for key, value in options.items():
        cfg.architecture[key] = value
    return build_objects(cfg)


def first_batch(data, size: int = 8, split: str = "train") -> dict:
    return next(data.batches(split, size))


# Overrides that let an architecture serve a data set's tasks where its `check_tasks` refuses them as shipped:
# ESMM trains purchase over every impression, against the feed's conversion column (experiment=esmm_feed).
SERVES = {("esmm", "tabular"): ["tasks.purchase.target=conversion"]}


def architecture_overrides(architecture: str, data: str) -> list[str]:
    """[data=..., architecture=..., what it needs to serve the data set's tasks (`SERVES`)]; for an architecture
    that serves only some data sets, one of those when ``data`` is not (tests over every architecture on one
    data set)."""
    served = {d: extra for (a, d), extra in SERVES.items() if a == architecture}
    if served and data not in served:
        data = next(iter(served))
    return [f"data={data}", f"architecture={architecture}", *served.get(data, [])]


REFUSAL_BATCH = 6  # rows of the training batch an architecture checks its labels on


def refusal(cfg):
    """The ConfigError the architecture declares for the config's tasks, keys and first training batch
    (`MTLModel.check_tasks`; e.g. ESMM on tasks that are not a binary click -> conversion chain), or None."""
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    data = setup_data(cfg, tasks, torch.device("cpu"))
    keys = {
        k: v for k, v in OmegaConf.to_container(cfg.architecture, resolve=True).items() if k != "_target_"
    }
    try:
        get_class(cfg.architecture._target_).check_tasks(
            fit_tasks(tasks, data), keys, first_batch(data, REFUSAL_BATCH)
        )
    except ConfigError as err:
        return err
    return None


def built_or_refused(cfg):
    """build_objects(cfg); where the architecture declares it cannot serve the config (`refusal`), a check that
    building it and a training forward fail with exactly that ConfigError, naming an architecture key, and a
    skip of the contract for the pair."""
    expected = refusal(cfg)
    if expected is None:
        return build_objects(cfg)
    with pytest.raises(ConfigError) as err:
        built = build_objects(cfg)
        built.model(first_batch(built.data, REFUSAL_BATCH))
    assert str(err.value) == str(expected) and str(expected).startswith("architecture.")
    pytest.skip(f"the architecture declares it cannot serve this config: {expected}")


def nonzero(grad: torch.Tensor | None) -> bool:
    """Whether a ``.grad`` carries any signal (None counts as zero)."""
    return grad is not None and bool(grad.abs().sum() > 0)


@pytest.fixture(autouse=True)
def no_hydra_run_left_over():
    """A test that runs a Hydra job in this process (a sweep through a launcher) leaves Hydra's global run
    config behind; code that asks whether a Hydra run is active (relative paths) must not see it later."""
    yield
    HydraConfig.instance().cfg = None
