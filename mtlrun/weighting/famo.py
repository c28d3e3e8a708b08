"""Fast Adaptive Multitask Optimization (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask
Optimization", NeurIPS 2023).

FAMO balances the rate at which the task losses fall, at the cost of one backward pass. Task logits xi
(the ``weighting`` parameter group) give z = softmax(xi). With D_t = L_t + eps (eps = 1e-8; the paper's
minimum losses are 0) the model descends

    objective = sum_t (z_t / S) * log D_t,    S = sum_j z_j / D_j    (z and S held constant)

so task t's loss gets the weight d objective / d L_t = (z_t / D_t) / S: positive and summing to 1 (the
paper's scale; ``last_weights`` reports them). Dividing by D_t makes every task's log-loss fall at a rate
set by z alone, whatever the loss's scale. The logits then follow the observed decrease of each log-loss,
delta_t = log D_t(before) - log D_t(after):

    xi.grad = J_softmax(xi)^T delta + gamma * xi = z * (delta - <z, delta>) + gamma * xi

and the optimizer steps xi (the paper uses Adam with weight decay gamma, an L2 term added to the gradient
as above, written here because the ``weighting`` group's own weight_decay is shared with other methods).
A task whose loss falls more slowly than the others' gets a larger logit, hence a larger weight.

Difference from the paper: it recomputes the losses on the same batch right after the model step, which
costs an extra forward pass. Here ``delta`` compares this step's losses with the previous step's (a new
batch), so the logit update lags one step and carries batch-to-batch noise; over many steps it follows the
same trend. The first step has no previous losses and only the gamma term moves xi. The previous step's
losses are a buffer, so a resumed run continues exactly. The paper also clips the shared gradient norm
to 1 (``trainer.grad_clip``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting

EPS = 1e-8  # the reference's floor inside the log: log(L + eps) stays finite at L = 0


class FAMO(Weighting):
    def __init__(self, tasks: Mapping[str, Task], gamma: float = 1e-3) -> None:
        super().__init__(tasks)
        if gamma < 0:
            raise ConfigError(f"weighting.gamma: must be >= 0; got {gamma}")
        self.gamma = float(gamma)
        self.logits = nn.Parameter(torch.zeros(self.num_tasks))
        self.register_buffer("prev_log_losses", torch.zeros(self.num_tasks))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))
        self.last_weights = torch.full((self.num_tasks,), 1.0 / self.num_tasks)

    def combine(self, losses: Tensor) -> Tensor:
        xi = self.logits.detach().to(losses.dtype)
        z = torch.softmax(xi, dim=0)
        log_d = torch.log(losses + EPS)
        inv_d = torch.exp(-log_d.detach())
        self.last_weights = (z * inv_d / (z * inv_d).sum()).float()

        delta = (self.prev_log_losses.to(xi) - log_d.detach()) * self.has_prev
        logit_grad = z * (delta - (z * delta).sum()) + self.gamma * xi
        self.logits.grad = logit_grad.to(self.logits.dtype)
        self.prev_log_losses.copy_(log_d.detach())
        self.has_prev.fill_(True)
        return (z / (z * inv_d).sum() * log_d).sum()

    def summary(self) -> dict:
        z = torch.softmax(self.logits.detach(), dim=0)
        return {
            "logits": dict(zip(self.task_names, self.logits.detach().tolist(), strict=True)),
            "z": dict(zip(self.task_names, z.tolist(), strict=True)),
        }
