"""One optimisation step: forward, per-task losses, weighting, backward, clip, step."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext

import torch

from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.distributed import World
from mtlrun.trainer.finite import FiniteLosses


def per_task_losses(
    predictions: Mapping[str, torch.Tensor], batch: dict, tasks: Mapping[str, Task]
) -> list[torch.Tensor]:
    """The mean loss of each task on the batch, one float32 scalar per task: over labelled rows only and
    weighted by the rows' sample weights when the batch carries ``mask`` / ``weight`` (0, with a zero
    gradient, for a task with no labelled row). Each scalar's graph reaches only its own task's prediction."""
    weight = batch.get("weight")
    return [
        task.loss_mean(predictions[name].float(), batch["y"][task.target], task.labelled(batch), weight)
        for name, task in tasks.items()
    ]


def task_losses(
    predictions: Mapping[str, torch.Tensor], batch: dict, tasks: Mapping[str, Task]
) -> torch.Tensor:
    """[T]: the `per_task_losses` stacked into one vector."""
    return torch.stack(per_task_losses(predictions, batch, tasks))


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
    world: World | None = None,
    finite: FiniteLosses | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: forward, per-task losses, weighting, backward, clip, step.
    Returns the [T] task losses and the scalar objective (both detached).

    ``world``: the ranks of a data-parallel run, ``batch`` being this rank's rows: the losses become the
    whole batch's and the gradients are averaged across ranks (mtlrun/trainer/distributed.py).
    ``finite``: where non-finite losses are recorded (by default: checked at once)."""
    world = world or World()
    finite = finite or FiniteLosses(tasks, torch.device("cpu"))
    with autocast or nullcontext():
        predictions = forward(batch)
    per_task = world.global_losses(per_task_losses(predictions, batch, tasks), batch, tasks)
    losses = torch.stack(per_task)
    finite.observe(losses, *where)
    optimizer.zero_grad(set_to_none=True)
    objective = engine.backward(losses, per_task)
    world.average_gradients(engine.model, engine.weighting)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(engine.model.parameters(), grad_clip)
    optimizer.step()
    engine.regularizer.after_step(optimizer)  # a proximal regulariser's step (group lasso), else nothing
    if scheduler is not None:
        scheduler.step()
    return losses.detach(), objective
