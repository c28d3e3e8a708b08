"""Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018), in the log-variance parameterisation.

Each task t has a learnable s_t = log σ_t² (in the `weighting` optimizer group): a task with a large learned
noise σ_t gets a small weight, and the ½ s_t term keeps σ_t from growing without bound.

**Update rule.** With L_t the task loss:

```text
regression:       objective_t = ½ · exp(−s_t) · L_t + ½ · s_t          (Gaussian likelihood)
classification:   objective_t = exp(−s_t) · L_t + ½ · s_t              (scaled softmax)
objective = Σ_t objective_t,           `last_weights`_t = ∂objective / ∂L_t
```

For a regression loss that is a mean squared error the optimum is exp(s_t) = L_t, so the learned
σ_t = exp(s_t / 2) estimates the task's noise standard deviation (reported in summary.json).

**Options.**

- `init_log_var`: the initial s_t of every task (0 means σ_t = 1).
- The log-variances' learning rate is `optim.groups.weighting.lr`, not a key of this file.

**Departures from the paper.** The paper writes the classification term as log σ_t; with s_t = log σ_t²
that is ½ s_t, the same term. Binary and multilabel tasks are weighted like classification.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting


class Uncertainty(Weighting):
    def __init__(self, tasks: Mapping[str, Task], init_log_var: float = 0.0) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))
        factors = [0.5 if task.kind == "regression" else 1.0 for task in tasks.values()]
        self.register_buffer("factors", torch.tensor(factors))

    def combine(self, losses: Tensor) -> Tensor:
        s = self.log_vars.to(losses.dtype)
        weights = self.factors.to(losses.dtype) * torch.exp(-s)
        self.last_weights = weights.detach().float()
        return (weights * losses).sum() + 0.5 * s.sum()

    def sigmas(self) -> dict[str, float]:
        return dict(zip(self.task_names, torch.exp(self.log_vars.detach() / 2).tolist(), strict=True))

    def summary(self) -> dict:
        return {
            "sigma": self.sigmas(),
            "log_var": dict(zip(self.task_names, self.log_vars.detach().tolist(), strict=True)),
        }
