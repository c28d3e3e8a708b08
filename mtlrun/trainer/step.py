"""One optimisation step: forward, per-task losses, weighting, backward, clip, step."""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext

import torch

from mtlrun.errors import TrainingError
from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine


def task_losses(
    predictions: Mapping[str, torch.Tensor], batch: dict, tasks: Mapping[str, Task]
) -> torch.Tensor:
    """[T] mean loss of each task on the batch, in float32: over labelled rows only and weighted by the
    rows' sample weights when the batch carries ``mask`` / ``weight`` (0 for a task with no labelled row)."""
    weight = batch.get("weight")
    return torch.stack(
        [
            task.loss_mean(predictions[name].float(), batch["y"][task.target], task.labelled(batch), weight)
            for name, task in tasks.items()
        ]
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
