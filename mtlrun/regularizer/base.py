"""The regulariser contract: a penalty over the model's task-specific layers, added to the objective.

A regulariser (`regularizer=<option>`, conf/regularizer/) is built from its config node with the run's tasks,
then attached to the model (`attach`). It composes with every architecture: it couples the groups of
per-task layers the model declares (`MTLModel.task_layers()`: by default each head's `nn.Linear` layers by
depth), never layers picked by name.

* `penalty()` is added to the training objective next to the model's own `penalty()`: the backward engine
  adds both, gradient-based weighting methods see the sum only as its own un-balanced gradient, and the
  regulariser's term is logged as the `model/regularizer` row of metrics.csv (the model's as `model/penalty`).
* `on_step(step)` runs before each step's penalty (steps counted from 1 by the engine, whose counter is in
  the checkpoint); regularisers with a closed-form update (a task covariance, a clustering) refresh it every
  `update_every` steps there, detached from autograd.
* `after_step(optimizer)` runs after each optimizer step: a proximal update of the weights, for penalties
  whose exact zeros a gradient step cannot reach (the group lasso); such a regulariser's `penalty()` is then
  detached, logged but left out of the gradient.
* `diagnostics()` gives scalars written under task `model` at each evaluation (e.g.
  `regularizer/features_in_use`); `write(folder, plots)` rewrites its files at each evaluation (rank 0; `plots`: the last
  epoch's heatmaps, with `trainer.plots`).
* `state_dict()` / `load_state_dict()`: what changes during training, kept in the checkpoint so a resumed
  run equals an uninterrupted one.

The base class is the absent regulariser: no penalty, no rows, no files, nothing to save.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError

if TYPE_CHECKING:
    from mtlrun.architecture.base import MTLModel
    from mtlrun.tasks import Task


class Regularizer:
    """No regulariser: every hook does nothing. Subclasses override what they need."""

    update_every: int = 0  # 0: no periodic closed-form update

    def attach(self, model: MTLModel) -> None:
        """Bind to the model whose layers the penalty reads (called once, after the model is built)."""

    def penalty(self) -> Tensor | None:
        return None

    def on_step(self, step: int) -> None:
        """Before step ``step``'s penalty (counted from 1): refresh what is updated in closed form, every
        `update_every` steps from step 1."""
        if self.update_every and (step - 1) % self.update_every == 0:
            self.update()

    def update(self) -> None:
        """The closed-form update (detached); nothing by default."""

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After the optimizer's step: a proximal update of the layers (group lasso's `proximal`), with the
        learning rates the step used; nothing by default."""

    def diagnostics(self) -> dict[str, float]:
        return {}

    def write(self, folder: Path, plots: bool) -> None:
        """Files describing the regulariser's state (only rank 0 calls it)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass


class TaskLayerRegularizer(Regularizer):
    """A regulariser over one group of the model's task layers (`MTLModel.task_layers()`), chosen by the
    config key ``layer``: T `nn.Linear` layers, one per task, all of one shape."""

    def __init__(self, tasks: Mapping[str, Task], layer: int = 0) -> None:
        self.task_names = list(tasks)
        self.layer = layer
        self.layers: dict[str, nn.Linear] = {}

    def attach(self, model: MTLModel) -> None:
        self.layers = select_task_layers(model, self.layer, "regularizer.layer")

    def stacked(self) -> Tensor:
        """[T, out, in]: the tasks' weight matrices, in task order (biases are not regularised)."""
        return torch.stack([self.layers[t].weight for t in self.task_names])

    def task_vectors(self) -> Tensor:
        """[T, D]: each task's weight matrix flattened (D = out · in)."""
        return self.stacked().flatten(1)

    def zero(self) -> Tensor:
        return self.layers[self.task_names[0]].weight.new_zeros(())


def select_task_layers(model: MTLModel, index: int, key: str) -> dict[str, nn.Linear]:
    """The group ``index`` of ``model.task_layers()``, checked: one layer per task, all of one shape.
    A ConfigError naming ``key`` otherwise."""
    groups = model.task_layers()
    if not groups:
        raise ConfigError(
            f"{key}: {type(model).__name__} declares no task-specific layers to regularise "
            "(MTLModel.task_layers); pick another architecture or leave regularizer unset"
        )
    if not -len(groups) <= index < len(groups):
        raise ConfigError(
            f"{key}={index}: the heads have {len(groups)} Linear layer(s) per task (0 = the first, -1 = the "
            f"output layer); use an index in [{-len(groups)}, {len(groups) - 1}]"
        )
    layers = groups[index]
    tasks = list(model.tasks)
    missing = [t for t in tasks if t not in layers]
    if missing:
        raise ConfigError(f"{key}={index}: no layer for task(s) {missing} at this depth; pick another layer")
    shapes = {t: tuple(layers[t].weight.shape) for t in tasks}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{t} {list(s)}" for t, s in shapes.items())
        raise ConfigError(
            f"{key}={index}: the tasks' layers differ in shape ({listed}), so they cannot be stacked; pick a "
            "layer whose shapes agree (0, the first hidden layer, with non-empty heads.hidden), give every "
            "head the same heads.<task>.hidden, and drop tasks.<task>.inputs_from (it widens a head's input)"
        )
    return {t: layers[t] for t in tasks}


def check_strength(key: str, value: float) -> float:
    if not value >= 0:
        raise ConfigError(f"{key}: a penalty's weight must be >= 0, got {value}")
    return float(value)


def check_update_every(key: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{key}: must be >= 1 (steps between two closed-form updates), got {value}")
    return int(value)
