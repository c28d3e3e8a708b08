"""The weighting contract, for both families of methods.

* Loss-based methods (``needs_task_grads = False``) implement ``combine(losses)``: the [T] vector of
  per-task losses in, the scalar to backpropagate out.
* Gradient-based methods (``needs_task_grads = True``) implement ``aggregate(grads)``: the [T, P] matrix of
  per-task gradients of the shared parameters in, the [P] update direction out. The runner computes that
  matrix only for them, and only for the shared parameters; task-owned parameters get the ordinary gradient
  of their own task's loss.

Both record the per-task weights they used in ``last_weights`` (logged to metrics.csv). Methods may hold
state and learnable parameters: ``parameters()`` land in the ``weighting`` optimizer group and
``state_dict()`` goes into the checkpoint. The runner never looks at a method's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.tasks import Task


class Weighting(nn.Module):
    needs_task_grads: ClassVar[bool] = False

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.register_buffer("last_weights", torch.ones(len(self.task_names)))

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def combine(self, losses: Tensor) -> Tensor:
        """Loss-based methods: [T] per-task losses -> scalar loss to backpropagate."""
        raise NotImplementedError(f"{type(self).__name__} is gradient-based; the runner calls aggregate()")

    def aggregate(self, grads: Tensor) -> Tensor:
        """Gradient-based methods: [T, P] per-task gradients -> [P] update direction."""
        raise NotImplementedError(f"{type(self).__name__} is loss-based; the runner calls combine()")

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Hook for methods that keep a history of epoch-averaged losses (DWA and the like)."""

    def summary(self) -> dict:
        """Method-specific facts for summary.json (learned noise, final weights, ...)."""
        return {}
