"""Static weighting: a fixed weight per task from the config, sum of weighted losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting


class Static(Weighting):
    adaptive = False

    def __init__(
        self, tasks: Mapping[str, Task], weights: Mapping[str, float] | None = None, default: float = 1.0
    ):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.task_names)
        if unknown:
            raise ConfigError(
                f"weighting.weights: unknown task(s) {sorted(unknown)}; tasks are {', '.join(self.task_names)}"
            )
        values = [float(weights.get(t, default)) for t in self.task_names]
        if any(v < 0 for v in values):
            raise ConfigError(
                f"weighting.weights: weights must be >= 0; got {dict(zip(self.task_names, values, strict=True))}"
            )
        self.last_weights = torch.tensor(values)

    def combine(self, losses: Tensor) -> Tensor:
        return (self.last_weights.to(losses.dtype) * losses).sum()
