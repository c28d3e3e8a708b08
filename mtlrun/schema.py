"""Structured-config schema: the typed shape of the composed config.

Registered in Hydra's ConfigStore as the base of ``conf/config.yaml``, so a misspelled key or a value of
the wrong type in the fixed part of the config (``trainer``, ``optim``, ``tasks``, top-level keys) fails at
compose time with a message naming it. The option groups whose content depends on the chosen class
(``data``, ``encoder``, ``architecture``, ``weighting``) are checked against that class's signature just
before it is built (see :mod:`mtlrun.instantiate`).

This module must not import torch: ``mtlrun --help`` and ``mtlrun --cfg job`` only compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


class TaskKind(str, Enum):
    regression = "regression"
    binary = "binary"
    multiclass = "multiclass"
    multilabel = "multilabel"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Select(str, Enum):
    best = "best"
    last = "last"


class ObjectiveMetric(str, Enum):
    monitor = "monitor"
    delta_m = "delta_m"


@dataclass
class TaskConfig:
    kind: TaskKind = TaskKind.regression
    target: Optional[str] = None  # key of the label in the data set; defaults to the task name
    num_classes: Optional[int] = None  # multiclass: classes; multilabel: labels
    loss: Optional[str] = None  # loss name; None picks the kind's default
    metrics: Optional[List[str]] = None  # metric names; None picks the kind's defaults
    inputs_from: List[str] = field(default_factory=list)  # tasks whose predictions feed this head
    detach: bool = True  # stop-gradient on those predictions
    columns: Optional[List[str]] = None  # multilabel, data=tabular: the 0/1 label columns packed into target
    classes: Optional[List[Any]] = None  # binary/multiclass, data=tabular: the labels, in index order
    pos_weight: Any = None  # binary: BCE weight of positive rows, a number or "auto" (n_neg/n_pos of train)
    standardize: bool = False  # regression, data=tabular: train standardised, metrics in original units


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 256
    eval_batch_size: int = 2048
    device: Device = Device.auto
    precision: Precision = Precision.fp32
    compile: bool = False
    deterministic: bool = False
    grad_clip: Optional[float] = None
    grad_cosine_every: int = 50
    grad_cosine_for_loss_based: bool = False
    monitor: str = "loss"
    select: Select = Select.best
    eval_every: int = 1
    limit_train_batches: Optional[int] = None
    limit_eval_batches: Optional[int] = None
    progress: bool = True
    checkpoint: bool = True
    plots: bool = True


@dataclass
class OptimConfig:
    optimizer: Any = None
    groups: Dict[str, Any] = field(default_factory=dict)
    scheduler: Any = None


@dataclass
class ObjectiveConfig:
    metric: ObjectiveMetric = ObjectiveMetric.monitor  # what a run returns to a sweeper (mtlrun/objective.py)
    baseline: Optional[str] = None  # delta_m: the single-task run or sweep folder to compare with


@dataclass
class MtlrunConfig:
    seed: int = 0
    name: str = "default"
    resume: Optional[str] = None
    data: Any = None
    encoder: Any = None
    architecture: Any = None
    weighting: Any = None
    tasks: Dict[str, TaskConfig] = field(default_factory=dict)
    heads: Dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


def register() -> None:
    """Register the schema under the name ``mtlrun_schema`` (used by ``conf/config.yaml``)."""
    ConfigStore.instance().store(name="mtlrun_schema", node=MtlrunConfig)


def validate(cfg: Any) -> None:
    """Check a composed config against the schema once more, keys added with ``+`` included.

    Hydra lets ``+trainer.epoch=3`` add a key the schema does not have; merging into a fresh structured
    config turns such a typo into an error that names it.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    from mtlrun.errors import ConfigError

    try:
        # a plain copy: merging the typed config itself would carry the added keys along with its type
        plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        OmegaConf.merge(OmegaConf.structured(MtlrunConfig), plain)
    except ConfigKeyError as err:
        raise ConfigError(
            f"{err.full_key}: unknown key (check its spelling; `mtlrun --cfg job` lists every key)"
        ) from None
    except ValidationError as err:
        raise ConfigError(f"{err.full_key}: {err.msg}") from None
