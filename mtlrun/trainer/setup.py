"""Setup steps of a run: each builds one piece from the config; `setup` builds them all."""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mtlrun import auxiliary
from mtlrun.architecture.base import MTLModel
from mtlrun.data.base import TensorData
from mtlrun.errors import ConfigError
from mtlrun.instantiate import build, resolve_target
from mtlrun.optim.groups import ParamGroup, build_param_groups, optimizer_param_groups
from mtlrun.regularizer.base import Regularizer
from mtlrun.tasks import Task, build_tasks
from mtlrun.threads import use_threads
from mtlrun.trainer.affinity import TaskAffinity
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.diagnostics import StepDiagnostics
from mtlrun.trainer.distributed import World
from mtlrun.trainer.finite import FiniteLosses
from mtlrun.trainer.state import Monitor
from mtlrun.trainer.step import train_step
from mtlrun.weighting.base import Weighting

log = logging.getLogger("mtlrun")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` -> CUDA when visible, else the CPU; ``cuda`` without a visible device is an error naming ``key``."""
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}=cuda but no CUDA device is visible; use {key}=auto or {key}=cpu")
    return torch.device(name)


def accepts(node: DictConfig, where: str, name: str) -> bool:
    """Whether the ``_target_`` of ``node`` takes a keyword argument ``name``."""
    target = resolve_target(node, where)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def setup_data(cfg: DictConfig, tasks: Mapping[str, Task], device: torch.device) -> TensorData:
    # data sets that read their targets from the task declarations (data=tabular) take the tasks
    given = auxiliary.data_tasks(tasks)  # all but the tasks whose targets are generated (mtlrun/auxiliary.py)
    data = build(cfg.data, "data", **({"tasks": given} if accepts(cfg.data, "data", "tasks") else {}))
    auxiliary.add_targets(data, tasks)
    for task in tasks.values():
        if task.target not in data.targets:
            raise ConfigError(
                f"tasks.{task.name}.target: '{task.target}' is not a target of data set {data.name}; "
                f"available: {', '.join(data.targets)}"
            )
    log.info("data %s: %s, input shape %s", data.name, data.sizes(), list(data.input_shape))
    return data.to(device)


def fit_tasks(tasks: Mapping[str, Task], data: TensorData) -> dict[str, Task]:
    """The tasks with what the data set fitted for them (classes, target scales) and ``pos_weight: auto``
    resolved on the training split, after checking every split's labels against them."""
    settings = data.task_settings()
    tasks = auxiliary.output_widths(tasks, data.input_shape, list(auxiliary.input_columns(data)))
    fitted = {}
    for name, task in tasks.items():
        task = task.with_data_settings(data.name, settings.get(task.target, {}))
        for split, values in data.splits.items():
            mask = values.mask.get(task.target)
            labels = values.y[task.target]
            task.check_targets(labels if mask is None else labels[mask], split)
        train = data.splits["train"]
        fitted[name] = task.with_pos_weight_fitted(train.y[task.target], train.mask.get(task.target))
    return fitted


def setup_model(
    cfg: DictConfig, tasks: Mapping[str, Task], data: TensorData, device: torch.device
) -> MTLModel:
    extra = data.encoder_inputs()  # e.g. a table's categorical columns, which the encoder embeds
    unknown = [name for name in extra if not accepts(cfg.encoder, "encoder", name)]
    if unknown:
        raise ConfigError(
            f"encoder: {cfg.encoder._target_} cannot take {unknown} from data set {data.name} "
            f"(its inputs need them); pick an encoder whose constructor takes them (for tables: encoder=tabular)"
        )

    def encoder_factory() -> torch.nn.Module:
        return build(cfg.encoder, "encoder", in_shape=data.input_shape, **extra)

    heads = OmegaConf.to_container(cfg.heads, resolve=True)
    model = build(cfg.architecture, "architecture", encoder=encoder_factory, tasks=tasks, heads=heads)
    model.to(device).fit_structure(data, cfg.seed)  # designs that grow themselves (adaptive_branching)
    return model


def setup_optimizer(cfg: DictConfig, groups: list[ParamGroup]) -> torch.optim.Optimizer:
    make_optimizer = build(cfg.optim.optimizer, "optim.optimizer")
    optimizer = make_optimizer(optimizer_param_groups(groups))
    for group, torch_group in zip(groups, optimizer.param_groups, strict=True):
        log.info(
            "param group %-14s %3d tensors %9d params  lr %.3g  weight_decay %.3g",
            group.name,
            len(group.params),
            group.numel,
            torch_group["lr"],
            torch_group.get("weight_decay", 0.0),
        )
    return optimizer


def setup_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if cfg.optim.scheduler is None:
        return None
    return build(cfg.optim.scheduler, "optim.scheduler", optimizer=optimizer, total_steps=total_steps)


def setup_weighting(
    cfg: DictConfig, tasks: Mapping[str, Task], model: MTLModel, device: torch.device
) -> tuple[Weighting, list[str]]:
    """The weighting method, attached to the model; and the warnings about the pair (in summary.json)."""
    weighting: Weighting = build(cfg.weighting, "weighting", tasks=tasks).to(device)
    weighting.attach(model)
    warnings = []
    if weighting.needs_shared_parameters and not model.shared_parameters():
        warnings.append(
            f"{type(weighting).__name__} weighting balances the gradients of shared parameters, but "
            f"{type(model).__name__} shares none: every task trains on its own loss, as with weighting=equal"
        )
    for warning in warnings:
        log.warning("warning: %s", warning)
    return weighting, warnings


def setup_regularizer(cfg: DictConfig, tasks: Mapping[str, Task], model: MTLModel) -> Regularizer:
    """The run's regulariser (`regularizer=`), attached to the model; the base class (none) when unset."""
    node = cfg.get("regularizer")
    regularizer = Regularizer() if node is None else build(node, "regularizer", tasks=tasks)
    regularizer.attach(model)
    return regularizer


def compiled(model: MTLModel, weighting: Weighting) -> Callable:
    """``trainer.compile``: the model's forward, compiled by torch.compile. One compiled forward makes the
    shared representation and the heads' outputs siblings in the autograd graph, so gradients with respect to
    the representation cannot be taken through it: that pairing is refused, never silently wrong."""
    if weighting.needs_task_grads and weighting.grad_source == "representation":
        raise ConfigError(
            "trainer.compile=true with weighting.grad_source=representation: a compiled forward hides the "
            "shared representation from autograd; use weighting.grad_source=shared_params, or trainer.compile=false"
        )
    # Gradient methods and gradient cosines take several backward passes through one graph (retain_graph),
    # which a compiled backward allows only without donated buffers (a memory saving of one-pass training).
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False
    return torch.compile(model)


@dataclass
class Setup:
    """Everything the loop works with, built by `setup` from the config."""

    device: torch.device
    tasks: dict[str, Task]
    data: TensorData
    model: MTLModel
    weighting: Weighting
    engine: BackwardEngine  # per-task losses -> gradients, for both families of weighting methods
    diagnostics: StepDiagnostics  # gradient cosines and the model's penalty, averaged per epoch
    groups: list[ParamGroup]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    monitor: Monitor
    steps_per_epoch: int
    batch_size: int  # trainer.batch_size: the global batch (a data-parallel run splits it across the ranks)
    shuffle: torch.Generator  # draws the order of training batches
    autocast: torch.autocast | None
    forward: Callable  # the model, or its torch.compile'd version
    finite: FiniteLosses  # the record of non-finite losses (read at once on the CPU, every N steps on a GPU)
    warnings: list[str]  # what the run should know about its settings (logged, and kept in summary.json)
    grad_clip: float | None = None  # the maximum norm of all gradients together (trainer.grad_clip)
    world: World = field(default_factory=World)  # the ranks of a data-parallel run (torchrun); one by default
    regularizer: Regularizer = field(default_factory=Regularizer)  # its penalty is added by the engine
    affinity: TaskAffinity = field(default_factory=TaskAffinity)  # trainer.affinity_every; off by default

    def learning_rates(self) -> dict[str, float]:
        """{"lr/<group>": the learning rate each parameter group has now} (schedules move them)."""
        return {
            f"lr/{g.name}": pg["lr"] for g, pg in zip(self.groups, self.optimizer.param_groups, strict=True)
        }

    def write_measurements(self, folder: Path, plots: bool) -> None:
        """At an evaluation, on rank 0: the matrices the run measures, rewritten (task_affinity.csv with
        `trainer.affinity_every`, a regulariser's task_relationship.csv ...), and with ``plots`` (the last
        epoch, `trainer.plots`) their heatmaps."""
        if self.world.is_main:
            self.affinity.write(folder, heatmap=plots)
            self.regularizer.write(folder, plots)

    def step(self, batch: dict, where: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on ``batch`` (``where``: epoch and step, for error messages); returns the [T]
        task losses and the scalar objective, detached."""
        try:
            return self._step(batch, where)
        except Exception:
            self.finite.check()  # a NaN loss steps earlier is the cause to name, not what it broke later
            raise

    def _step(self, batch: dict, where: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.affinity.observe(batch, self.tasks, self.autocast)  # TAG's lookahead, when due; changes nothing
        return train_step(
            self.forward,
            self.world.shard(batch),
            self.tasks,
            self.engine,
            self.optimizer,
            self.scheduler,
            self.grad_clip,
            self.autocast,
            where=where,
            world=self.world,
            finite=self.finite,
        )


def setup(cfg: DictConfig) -> Setup:
    use_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    trainer = cfg.trainer
    device = resolve_device(trainer.device)
    world = World.for_device(device)
    device = world.device(device)
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    data = setup_data(cfg, tasks, device)
    tasks = fit_tasks(tasks, data)
    model = setup_model(cfg, tasks, data, device)
    weighting, warnings = setup_weighting(cfg, tasks, model, device)
    regularizer = setup_regularizer(cfg, tasks, model)
    diagnostics = StepDiagnostics(list(tasks), trainer.grad_cosine_every)
    engine = BackwardEngine(
        model, weighting, diagnostics, trainer.grad_cosine_for_loss_based, world, regularizer
    )
    groups = build_param_groups(model, weighting, OmegaConf.to_container(cfg.optim.groups, resolve=True))
    optimizer = setup_optimizer(cfg, groups)
    steps_per_epoch = min(
        data.num_batches("train", trainer.batch_size), trainer.limit_train_batches or math.inf
    )
    return Setup(
        device=device,
        tasks=tasks,
        data=data,
        model=model,
        weighting=weighting,
        engine=engine,
        diagnostics=diagnostics,
        groups=groups,
        optimizer=optimizer,
        scheduler=setup_scheduler(cfg, optimizer, steps_per_epoch * trainer.epochs),
        monitor=Monitor.from_config(trainer.monitor, tasks),
        steps_per_epoch=steps_per_epoch,
        batch_size=trainer.batch_size,
        shuffle=torch.Generator().manual_seed(cfg.seed),
        autocast=torch.autocast(device.type, dtype=torch.bfloat16)
        if trainer.precision.value == "bf16"
        else None,
        forward=compiled(model, weighting) if trainer.compile else model,
        warnings=warnings,
        grad_clip=trainer.grad_clip,
        world=world,
        finite=FiniteLosses(tasks, device),
        affinity=TaskAffinity.build(
            trainer.affinity_every, trainer.affinity_update, model, optimizer, tasks, world.size
        ),
        regularizer=regularizer,
    )


def describe(s: Setup) -> dict:
    """The static part of summary.json: what was trained, on what, with which groups."""
    return {
        "device": str(s.device),
        "world_size": s.world.size,
        "batch_size": {"global": s.batch_size, "per_rank": -(-s.batch_size // s.world.size)},
        "data": {"name": s.data.name, "sizes": s.data.sizes()},
        "tasks": {
            name: {"kind": t.kind, "metrics": t.metrics}
            | ({"auxiliary": True} if t.auxiliary else {})
            | {
                k: v
                for k, v in (
                    ("pos_weight", t.positive_weight),
                    ("target_scale", t.target_scale),
                    ("outputs", t.fitted.outputs),  # a reconstruction's head width (mtlrun predict reads it)
                )
                if v is not None
            }
            for name, t in s.tasks.items()
        },
        "architecture": type(s.model).__name__,
        "independent_tasks": s.model.independent_tasks,
        "weighting": {
            "method": type(s.weighting).__name__,
            "adaptive": s.weighting.adaptive,
            "needs_task_grads": s.weighting.needs_task_grads,
            "grad_source": s.weighting.grad_source,
            "update_every": s.weighting.update_every,
        },
        "parameters": s.model.parameter_counts()
        | {"weighting": sum(p.numel() for p in s.weighting.parameters())},
        "param_groups": [
            {
                "name": g.name,
                "tensors": len(g.params),
                "params": g.numel,
                "lr": pg["lr"],
                "weight_decay": pg.get("weight_decay", 0.0),
            }
            for g, pg in zip(s.groups, s.optimizer.param_groups, strict=True)
        ],
        "monitor": {"name": s.monitor.name, "higher_is_better": s.monitor.higher_is_better},
        "warnings": s.warnings,
    }
