"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), log-variance parameterisation.

Each task t has a learnable s_t = log sigma_t^2. With L_t the task loss:

    regression:      L = 0.5 * exp(-s_t) * L_t + 0.5 * s_t      (Gaussian likelihood, eq. 5)
    classification:  L = exp(-s_t) * L_t + 0.5 * s_t            (scaled softmax, eq. 10)

For a regression loss that is a mean squared error, the optimum is exp(s_t) = L_t, so the learned
sigma_t = exp(s_t / 2) estimates the task's noise standard deviation (reported in summary.json). The
log-variances are the ``weighting`` parameter group.
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
