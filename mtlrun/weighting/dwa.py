"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

Each task's weight follows how fast its epoch-averaged training loss fell over the last two epochs. With
L_t(e) the mean training loss of task t over epoch e, T tasks and temperature tau:

    r_t(e) = L_t(e - 1) / L_t(e - 2)                    (relative descending rate; < 1 when t improved)
    w_t(e) = T * exp(r_t(e) / tau) / sum_j exp(r_j(e) / tau)
    objective = sum_t w_t(e) * L_t

so the weights sum to T, a task whose loss stalls gets more weight, and tau = 2 (the paper's) keeps them
close to 1. During the first two epochs there is no rate yet and every w_t = 1 (the plain sum, like
``equal``). The weights are fixed within an epoch: they are computed in :meth:`on_epoch_end` from the
last two epochs' mean losses, which live in buffers (checkpointed, so a resumed run continues exactly).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting


class DWA(Weighting):
    def __init__(self, tasks: Mapping[str, Task], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ConfigError(f"weighting.temperature: must be > 0; got {temperature}")
        self.temperature = float(temperature)
        # row 0: L(e - 2), row 1: L(e - 1); epochs_seen counts the on_epoch_end calls so far
        self.register_buffer("loss_history", torch.ones(2, self.num_tasks))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def combine(self, losses: Tensor) -> Tensor:
        return (self.last_weights.to(losses.dtype) * losses).sum()

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        history = self.loss_history
        history[0] = history[1]
        history[1] = mean_losses.detach().to(history)
        self.epochs_seen += 1
        if self.epochs_seen >= 2:
            rate = history[1] / history[0].clamp_min(torch.finfo(history.dtype).tiny)
            self.last_weights = self.num_tasks * torch.softmax(rate / self.temperature, dim=0)

    def summary(self) -> dict:
        """The weights of the coming epoch (summary.json is written after :meth:`on_epoch_end`)."""
        return {"next_epoch_weights": dict(zip(self.task_names, self.last_weights.tolist(), strict=True))}
