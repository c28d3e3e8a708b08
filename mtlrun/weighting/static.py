"""Static weighting: a fixed weight per task, set in the config, and the weighted sum of the task losses.

`objective = Σ_t w_t · L_t` with every w_t fixed for the whole run, one backward pass per step. Sweeping the
weights traces the static-weight front that reports compare adaptive methods against (`adaptive` is false).

**Options.**

- `weights`: a `{task: weight}` mapping; every weight must be ≥ 0 and every name a task of the run (set one
  with e.g. `weighting=static +weighting.weights.sum=0.1`).
- `default`: the weight of every task that `weights` does not list.

**Departures from the paper.** No paper: the usual hand-tuned loss weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting, per_task_values


class Static(Weighting):
    adaptive = False

    def __init__(
        self, tasks: Mapping[str, Task], weights: Mapping[str, float] | None = None, default: float = 1.0
    ):
        super().__init__(tasks)
        values = per_task_values("weighting.weights", weights or {}, self.task_names, default)
        if any(v < 0 for v in values):
            raise ConfigError(
                f"weighting.weights: weights must be >= 0; got {dict(zip(self.task_names, values, strict=True))}"
            )
        self.last_weights = torch.tensor(values)

    def combine(self, losses: Tensor) -> Tensor:
        return (self.last_weights.to(losses.dtype) * losses).sum()
