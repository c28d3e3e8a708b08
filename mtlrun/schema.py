"""Structured-config schema: the typed shape of the composed config.

Registered in Hydra's ConfigStore as the base of ``conf/config.yaml``, so a misspelled key or a value of
the wrong type in the fixed part of the config (``trainer``, ``optim``, top-level keys) fails at compose
time with a message naming it. `validate` checks the rest before a run claims its folder: each task
against `TaskConfig` (tasks are plain mappings at compose time, so ``+tasks.x={kind: regression}``
can add one from the command line), the ranges declared on the fields (``ranged``), and every learning
rate. The option groups whose content depends on the chosen class (``data``, ``encoder``, ``architecture``,
``weighting``) are checked against that class's signature just before it is built (see
`mtlrun.instantiate`).

This module must not import torch: ``mtlrun --help`` and ``mtlrun --cfg job`` only compose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def ranged(*, ge: float | None = None, gt: float | None = None, null: str | None = None) -> Any:
    """A field whose value must be ``>= ge`` (or ``> gt``); ``null`` says what null means where it is allowed.
    `validate` checks it and names the key and the range in its message. Its default is the YAML's."""
    return field(default=MISSING, metadata={"ge": ge, "gt": gt, "null": null})


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


class AffinityUpdate(str, Enum):  # the lookahead step of trainer.affinity_every (mtlrun/trainer/affinity.py)
    optimizer = "optimizer"
    sgd = "sgd"


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
    auxiliary: bool = False  # trained, but out of selection on `loss` and of reports (auxiliary.py)
    generate: Optional[Dict[str, Any]] = None  # a generated target: {from: input|feature|bins|groups, ...}
    reverse_gradient: Optional[Dict[str, Any]] = None  # adversarial head: {strength, schedule, ...}


# The schema owns the types and ranges; the YAML files own the defaults (conf/trainer/default.yaml,
# conf/config.yaml), so every key here is MISSING until a YAML or the command line gives it a value.
@dataclass
class TrainerConfig:
    epochs: int = ranged(ge=1)
    batch_size: int = ranged(ge=1)
    eval_batch_size: int = ranged(ge=1)
    device: Device = MISSING
    num_threads: Optional[int] = ranged(ge=1, null="torch's default (cores // n_jobs in a parallel sweep)")
    precision: Precision = MISSING
    compile: bool = MISSING
    deterministic: bool = MISSING
    grad_clip: Optional[float] = ranged(gt=0, null="no clipping")
    grad_cosine_every: int = ranged(ge=0)
    grad_cosine_for_loss_based: bool = MISSING
    affinity_every: int = ranged(ge=0)
    affinity_update: AffinityUpdate = MISSING
    monitor: str = MISSING
    select: Select = MISSING
    eval_every: int = ranged(ge=1)
    limit_train_batches: Optional[int] = ranged(ge=1, null="every batch")
    limit_eval_batches: Optional[int] = ranged(ge=1, null="every batch")
    progress: bool = MISSING
    checkpoint: bool = MISSING
    checkpoint_every: int = ranged(ge=1)
    checkpoint_minutes: Optional[float] = ranged(gt=0, null="no time-based checkpoints")
    plots: bool = MISSING


@dataclass
class OptimConfig:
    optimizer: Any = None
    groups: Dict[str, Any] = field(default_factory=dict)
    scheduler: Any = None


@dataclass
class ObjectiveConfig:
    metric: ObjectiveMetric = MISSING  # what a run returns to a sweeper (mtlrun/objective.py)
    baseline: Optional[str] = MISSING  # delta_m: the single-task run or sweep folder to compare with


@dataclass
class MtlrunConfig:
    seed: int = ranged(ge=0)
    name: str = MISSING
    resume: Optional[str] = MISSING
    data: Any = None
    encoder: Any = None
    architecture: Any = None
    regularizer: Any = None  # null, or a penalty over task layers (conf/regularizer/, mtlrun/regularizer/)
    weighting: Any = None
    tasks: Dict[str, Any] = field(default_factory=dict)  # each checked against TaskConfig by validate()
    heads: Dict[str, Any] = field(default_factory=dict)
    logger: Dict[str, Any] = field(
        default_factory=dict
    )  # {name: tracker node}; none unless logger= picks some
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


def task_key_overrides(overrides: List[str]) -> List[str]:
    """Let ``tasks.<name>.<key>=value`` set any key of `TaskConfig`, listed in the task's YAML or not.

    Tasks are plain mappings at compose time, so that ``+tasks.x={kind: regression, target: sum}`` can add a
    task from the command line (OmegaConf refuses a mapping as a new element of a typed dict). A key a YAML
    leaves out is then not in the composed config, and Hydra would want ``+`` to set it: such an override of
    a TaskConfig key becomes ``++`` (set or add). Other keys are left alone, so a misspelled one is still an
    error that names it.
    """
    keys = "|".join(f.name for f in fields(TaskConfig))
    pattern = re.compile(rf"^tasks\.[^.=]+\.(?:{keys})=")
    return [f"++{arg}" if pattern.match(arg) else arg for arg in overrides]


def register() -> None:
    """Register the schema under the name ``mtlrun_schema`` (used by ``conf/config.yaml``), and the resolver
    ``${mtlrun.example:<file>}`` that names a shipped example file (mtlrun/examples/)."""
    from omegaconf import OmegaConf

    from mtlrun import examples

    ConfigStore.instance().store(name="mtlrun_schema", node=MtlrunConfig)
    OmegaConf.register_new_resolver("mtlrun.example", examples.path, replace=True)


def validate(cfg: Any) -> None:
    """Check a composed config (without its ``hydra`` node) before anything is built or written.

    Hydra lets ``+trainer.epoch=3`` add a key the schema does not have, and tasks are untyped at compose
    time: merging into fresh structured configs turns a typo or a wrong type into an error that names the
    key. Then the declared ranges (`ranged`) and the learning rates.
    """
    from omegaconf import OmegaConf

    def plain(resolve: bool) -> dict:  # a plain copy: merging the typed config would carry its type along
        return {
            key: OmegaConf.to_container(value, resolve=resolve) if OmegaConf.is_config(value) else value
            for key, value in cfg.items_ex(resolve=False)
            if key != "hydra"
        }

    unresolved = plain(resolve=False)
    missing = sorted(OmegaConf.missing_keys(OmegaConf.create(unresolved)))
    if missing:
        from mtlrun.errors import ConfigError

        raise ConfigError(
            f"{missing[0]}: no value (its default lives in the shipped YAML of its group, e.g. "
            f"conf/trainer/default.yaml); give one on the command line ({missing[0]}=...) or in your config"
        )
    tasks = unresolved.pop("tasks", None) or {}
    _merge_into(MtlrunConfig, unresolved, "")
    for name, spec in tasks.items():
        _merge_into(TaskConfig, spec if spec is not None else {}, f"tasks.{name}.")
    resolved = plain(resolve=True)
    _check_ranges(MtlrunConfig, resolved, "")
    _check_learning_rates(resolved.get("optim") or {})


def _merge_into(schema: type, values: Any, prefix: str) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    from mtlrun.errors import ConfigError

    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of keys, got {values!r}")
    try:
        OmegaConf.merge(OmegaConf.structured(schema), values)
    except ConfigKeyError as err:
        raise ConfigError(
            f"{prefix}{err.full_key}: unknown key (check its spelling; `mtlrun --cfg job` lists every key)"
        ) from None
    except ValidationError as err:
        raise ConfigError(f"{prefix}{err.full_key}: {err.msg}") from None


def _check_ranges(schema: type, values: dict, prefix: str) -> None:
    """Every field of ``schema`` declared with `ranged`, recursively, against ``values``."""
    from mtlrun.errors import ConfigError

    hints = get_type_hints(schema)
    for f in fields(schema):
        key, value, hint = f"{prefix}{f.name}", values.get(f.name), hints[f.name]
        if is_dataclass(hint):
            _check_ranges(hint, value or {}, f"{key}.")
            continue
        ge, gt, null = (f.metadata.get(k) for k in ("ge", "gt", "null"))
        if ge is None and gt is None:
            continue
        too_small = value is not None and (value < ge if ge is not None else value <= gt)
        if too_small or (value is None and null is None):
            bound = f">= {ge}" if ge is not None else f"> {gt}"
            kind = "an integer" if hint in (int, Optional[int]) else "a number"
            allowed = f"{kind} {bound}" + (f", or null for {null}" if null else "")
            raise ConfigError(f"{key}={_show(value)} is out of range: use {allowed}")


def _check_learning_rates(optim: dict) -> None:
    """The optimizer's base ``lr`` and every group's (``optim.groups.<group>[.<task>].lr``) must be > 0."""
    from mtlrun.errors import ConfigError

    found = [("optim.optimizer.lr", (optim.get("optimizer") or {}).get("lr"))]
    for group, entry in (optim.get("groups") or {}).items():
        for key, value in (entry or {}).items():
            if key == "lr":
                found.append((f"optim.groups.{group}.lr", value))
            elif isinstance(value, dict) and "lr" in value:
                found.append((f"optim.groups.{group}.{key}.lr", value["lr"]))
    for key, value in found:
        if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(
                f"{key}={_show(value)} is out of range: a learning rate must be > 0 (e.g. 1e-3); "
                "to freeze a group's parameters, give it a tiny lr instead"
            )


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
