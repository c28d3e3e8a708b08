"""The runner: small setup steps, then one training loop that reads top to bottom.

    batch -> forward -> per-task losses -> weighting -> backward -> step -> metrics -> tables on disk

Everything a run writes lives in its output folder: config.yaml (resolved), metrics.csv (long format,
appended each epoch), summary.json (rewritten each epoch; ``status`` says running / completed / failed),
checkpoint.pt (the full training state, for resuming) and best_model.pt (the weights of the selected epoch).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mtlrun import schema
from mtlrun.architecture.base import MTLModel
from mtlrun.data.base import TensorData
from mtlrun.errors import ConfigError, TrainingError
from mtlrun.instantiate import build
from mtlrun.optim.groups import ParamGroup, build_param_groups, optimizer_param_groups
from mtlrun.tasks import Task, build_tasks
from mtlrun.trainer import checkpoint
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.evaluate import evaluate
from mtlrun.trainer.outputs import MetricsWriter, atomic_write_text, write_json
from mtlrun.trainer.report import results_table
from mtlrun.weighting.base import Weighting

log = logging.getLogger("mtlrun")


# ----------------------------------------------------------------------------------------------- setup


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(name: str) -> torch.device:
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def setup_data(cfg: DictConfig, tasks: Mapping[str, Task], device: torch.device) -> TensorData:
    data = build(cfg.data, "data")
    for task in tasks.values():
        if task.target not in data.targets:
            raise ConfigError(
                f"tasks.{task.name}.target: '{task.target}' is not a target of data set {data.name}; "
                f"available: {', '.join(data.targets)}"
            )
        for split, values in data.splits.items():
            task.check_targets(values.y[task.target], split)
    log.info("data %s: %s, input shape %s", data.name, data.sizes(), list(data.input_shape))
    return data.to(device)


def setup_model(
    cfg: DictConfig, tasks: Mapping[str, Task], data: TensorData, device: torch.device
) -> MTLModel:
    def encoder_factory() -> torch.nn.Module:
        return build(cfg.encoder, "encoder", in_shape=data.input_shape)

    heads = OmegaConf.to_container(cfg.heads, resolve=True)
    model = build(cfg.architecture, "architecture", encoder=encoder_factory, tasks=tasks, heads=heads)
    return model.to(device)


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


@dataclass
class Monitor:
    """The validation quantity that picks the best epoch: ``loss`` (sum of the per-task validation losses)
    or ``<task>/<metric>``."""

    name: str
    higher_is_better: bool
    tasks: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, name: str, tasks: Mapping[str, Task]) -> Monitor:
        if name == "loss":
            return cls(name, False, tuple(tasks))
        task, _, metric = name.partition("/")
        if task not in tasks or (metric not in tasks[task].metrics and metric != "loss"):
            choices = ["loss"] + [f"{t}/{m}" for t, spec in tasks.items() for m in ["loss", *spec.metrics]]
            raise ConfigError(
                f"trainer.monitor: '{name}' is not a validation quantity; choose one of {choices}"
            )
        return cls(name, metric != "loss" and tasks[task].higher_is_better(metric), tuple(tasks))

    def value(self, val: Mapping[str, Mapping[str, float]]) -> float:
        if self.name == "loss":
            return sum(val[task]["loss"] for task in self.tasks)
        task, _, metric = self.name.partition("/")
        return val[task][metric]

    def improved(self, value: float, best: float | None) -> bool:
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.higher_is_better else value < best


@dataclass
class TrainState:
    """What changes during training (besides module and optimizer state), saved in the checkpoint."""

    epoch: int = 0
    step: int = 0
    train_time_s: float = 0.0
    best_epoch: int | None = None
    best_value: float | None = None
    best_val: dict = field(default_factory=dict)
    best_test: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the loop


def task_losses(
    predictions: Mapping[str, torch.Tensor], batch: dict, tasks: Mapping[str, Task]
) -> torch.Tensor:
    """[T] mean loss of each task on the batch, in float32."""
    return torch.stack(
        [task.loss_mean(predictions[name].float(), batch["y"][task.target]) for name, task in tasks.items()]
    )


def check_finite(losses: torch.Tensor, tasks: Mapping[str, Task], epoch: int, step: int) -> None:
    if torch.isfinite(losses).all():
        return
    bad = [name for name, value in zip(tasks, losses.tolist(), strict=True) if not math.isfinite(value)]
    raise TrainingError(
        f"loss of task(s) {bad} is {losses[[list(tasks).index(b) for b in bad]].tolist()} at epoch {epoch}, step {step}; "
        "lower the learning rate (optim.groups.*.lr), set trainer.grad_clip, or check the targets' scale. "
        "Results up to the previous epoch are in metrics.csv."
    )


def train_step(
    forward,
    batch: dict,
    tasks: Mapping[str, Task],
    engine: BackwardEngine,
    optimizer: torch.optim.Optimizer,
    scheduler,
    grad_clip: float | None = None,
    autocast=None,
    where: tuple[int, int] = (0, 0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: forward, per-task losses, weighting, backward, clip, step.
    Returns the [T] task losses and the scalar objective (both detached)."""
    with autocast or nullcontext():
        predictions = forward(batch)
    losses = task_losses(predictions, batch, tasks)
    check_finite(losses, tasks, *where)
    optimizer.zero_grad(set_to_none=True)
    objective = engine.backward(losses)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(engine.model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return losses.detach(), objective


def make_progress(enabled: bool) -> Progress | None:
    """A transient per-epoch bar on stderr; none when disabled or when stderr is not a terminal (CI, logs)."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return None
    return Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        transient=True,
        console=console,
    )


@dataclass
class Setup:
    """Everything the loop works with, built by :func:`setup` from the config."""

    device: torch.device
    tasks: dict[str, Task]
    data: TensorData
    model: MTLModel
    weighting: Weighting
    engine: BackwardEngine  # per-task losses -> gradients, for both families of weighting methods
    groups: list[ParamGroup]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    monitor: Monitor
    steps_per_epoch: int
    shuffle: torch.Generator  # draws the order of training batches
    autocast: torch.autocast | None
    forward: Callable  # the model, or its torch.compile'd version


def setup(cfg: DictConfig) -> Setup:
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    trainer = cfg.trainer
    device = resolve_device(trainer.device)
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    data = setup_data(cfg, tasks, device)
    model = setup_model(cfg, tasks, data, device)
    weighting: Weighting = build(cfg.weighting, "weighting", tasks=tasks).to(device)
    weighting.attach(model)
    engine = BackwardEngine(model, weighting, trainer.grad_cosine_every, trainer.grad_cosine_for_loss_based)
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
        groups=groups,
        optimizer=optimizer,
        scheduler=setup_scheduler(cfg, optimizer, steps_per_epoch * trainer.epochs),
        monitor=Monitor.from_config(trainer.monitor, tasks),
        steps_per_epoch=steps_per_epoch,
        shuffle=torch.Generator().manual_seed(cfg.seed),
        autocast=torch.autocast(device.type, dtype=torch.bfloat16)
        if trainer.precision.value == "bf16"
        else None,
        forward=torch.compile(model) if trainer.compile else model,
    )


def describe(s: Setup) -> dict:
    """The static part of summary.json: what was trained, on what, with which groups."""
    return {
        "device": str(s.device),
        "data": {"name": s.data.name, "sizes": s.data.sizes()},
        "tasks": {name: {"kind": t.kind, "metrics": t.metrics} for name, t in s.tasks.items()},
        "architecture": type(s.model).__name__,
        "weighting": {
            "method": type(s.weighting).__name__,
            "needs_task_grads": s.weighting.needs_task_grads,
            "grad_source": getattr(s.weighting, "grad_source", None),
            "update_every": getattr(s.weighting, "update_every", None),
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
    }


def train_epoch(
    s: Setup, trainer: DictConfig, epoch: int, state: TrainState, progress: Progress | None
) -> dict:
    """One pass over the training split. Returns the rows for metrics.csv: {task: {"loss": mean loss,
    "weight": mean weight}}, {"a~b": {"grad_cosine": mean}} for sampled task-gradient cosines, and
    {"all": {"time_per_step_s": ...}}."""
    start = time.perf_counter()
    loss_sums = torch.zeros(len(s.tasks), device=s.device)
    weight_sums = torch.zeros(len(s.tasks), device=s.device)
    batches = islice(
        s.data.batches("train", trainer.batch_size, shuffle=True, generator=s.shuffle), s.steps_per_epoch
    )
    with progress or nullcontext():
        bar = (
            progress.add_task("", total=s.steps_per_epoch, epoch=f"{epoch}/{trainer.epochs}", loss=0.0)
            if progress
            else None
        )
        for batch in batches:
            losses, objective = train_step(
                s.forward,
                batch,
                s.tasks,
                s.engine,
                s.optimizer,
                s.scheduler,
                trainer.grad_clip,
                s.autocast,
                where=(epoch, state.step),
            )
            state.step += 1
            loss_sums += losses
            weight_sums += s.weighting.last_weights.to(s.device)
            if bar is not None:
                progress.update(bar, advance=1, loss=float(objective))
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)
    state.train_time_s += time.perf_counter() - start
    state.epoch = epoch
    mean_losses = loss_sums / s.steps_per_epoch
    s.weighting.on_epoch_end(epoch, mean_losses)
    mean_weights = (weight_sums / s.steps_per_epoch).tolist()
    rows: dict[str, dict[str, float]] = {
        name: {"loss": loss, "weight": w}
        for name, loss, w in zip(s.tasks, mean_losses.tolist(), mean_weights, strict=True)
    }
    rows |= {pair: {"grad_cosine": value} for pair, value in s.engine.pop_cosines().items()}
    if penalty := s.engine.pop_penalty():
        rows["model"] = penalty
    rows["all"] = {"time_per_step_s": (time.perf_counter() - start) / s.steps_per_epoch}
    return rows


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Train and evaluate as ``cfg`` says, writing into ``out_dir``; returns the summary."""
    started = time.time()
    summary: dict = {
        "status": "running",
        "error": None,
        "name": cfg.name,
        "seed": cfg.seed,
        "output_dir": str(out_dir),
    }
    summary_path = out_dir / "summary.json"
    writer: MetricsWriter | None = None
    try:
        if (out_dir / "metrics.csv").exists():
            raise ConfigError(
                f"output folder {out_dir} already holds a run (metrics.csv); set hydra.run.dir to a new folder"
            )
        schema.validate(cfg)
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(summary_path, summary)

        s = setup(cfg)
        trainer = cfg.trainer
        state = TrainState()
        if cfg.resume:
            state = checkpoint.resume(
                Path(cfg.resume),
                out_dir,
                s.model,
                s.weighting,
                s.optimizer,
                s.scheduler,
                s.shuffle,
                TrainState,
            )
        summary |= describe(s) | {"select": trainer.select.value}
        writer = MetricsWriter(out_dir / "metrics.csv")
        progress = make_progress(trainer.progress)
        log.info(
            "training %s with %s weighting on %s: %d epochs x %d steps",
            type(s.model).__name__,
            type(s.weighting).__name__,
            s.device,
            trainer.epochs,
            s.steps_per_epoch,
        )

        s.model.train()
        for epoch in range(state.epoch + 1, trainer.epochs + 1):
            train_rows = train_epoch(s, trainer, epoch, state, progress)
            writer.write(epoch, state.step, "train", train_rows)
            if epoch % trainer.eval_every and epoch != trainer.epochs:
                continue

            # evaluate on val and test; select on val only; save the state and the summary so far
            val, test = (
                evaluate(
                    s.model,
                    s.data,
                    split,
                    s.tasks,
                    trainer.eval_batch_size,
                    trainer.limit_eval_batches,
                    s.autocast,
                )
                for split in ("val", "test")
            )
            writer.write(epoch, state.step, "val", val)
            writer.write(epoch, state.step, "test", test)
            value = s.monitor.value(val)
            if trainer.select.value == "last" or s.monitor.improved(value, state.best_value):
                state.best_epoch, state.best_value, state.best_val, state.best_test = epoch, value, val, test
                if trainer.checkpoint:
                    checkpoint.save_model(out_dir / "best_model.pt", s.model)
            log.info(
                "epoch %d/%d  train loss %s  val %s  %s %.4g%s",
                epoch,
                trainer.epochs,
                _fmt({name: train_rows[name]["loss"] for name in s.tasks}),
                _fmt({f"{t}/{m}": v for t, row in val.items() for m, v in row.items() if m != "loss"}),
                s.monitor.name,
                value,
                " *" if state.best_epoch == epoch else "",
            )
            if trainer.checkpoint:
                checkpoint.save(
                    out_dir / "checkpoint.pt",
                    s.model,
                    s.weighting,
                    s.optimizer,
                    s.scheduler,
                    s.shuffle,
                    state,
                )
            summary |= _progress_fields(state, started, s)
            write_json(summary_path, summary)

        summary |= _progress_fields(state, started, s) | {"status": "completed"}
        write_json(summary_path, summary)
        log.info(
            "results at epoch %s (selected on validation %s):\n%s",
            state.best_epoch,
            s.monitor.name,
            results_table(state.best_val, state.best_test),
        )
        log.info("outputs in %s", out_dir)
        return summary
    except BaseException as err:
        summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary["error"] = f"{type(err).__name__}: {err}"
        summary["wall_time_s"] = time.time() - started
        write_json(summary_path, summary)
        raise
    finally:
        if writer is not None:
            writer.close()


def _progress_fields(state: TrainState, started: float, s: Setup) -> dict:
    return {
        "epochs_completed": state.epoch,
        "steps": state.step,
        "best_epoch": state.best_epoch,
        "monitor_value": state.best_value,
        "val": state.best_val,
        "test": state.best_test,
        "wall_time_s": time.time() - started,
        "train_time_s": state.train_time_s,
        "time_per_step_s": state.train_time_s / max(state.step, 1),
        "backward_passes_per_step": s.engine.passes_per_step(),
        "weighting_state": s.weighting.summary(),
    }


def _fmt(values: Mapping[str, float]) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in values.items())
