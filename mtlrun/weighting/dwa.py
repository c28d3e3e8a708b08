"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

Each task's loss weight follows how fast its epoch-averaged training loss fell over the last two epochs: a
task whose loss stalls gets more weight.

**Update rule.** With L_t(e) the mean training loss of task t over epoch e, T tasks and temperature τ:

```text
r_t(e) = L_t(e − 1) / L_t(e − 2)                    (relative descending rate; < 1 when t improved)
w_t(e) = T · exp(r_t(e) / τ) / Σ_j exp(r_j(e) / τ)
objective = Σ_t w_t(e) · L_t
```

The weights sum to T. During the first two epochs there is no rate yet and every w_t = 1 (the plain sum,
like `weighting=equal`). The weights are fixed within an epoch: `on_epoch_end` computes them from the last
two epochs' mean losses, which are kept in buffers, so a resumed run continues exactly.

**Options.**

- `temperature`: τ, the softmax temperature; a large τ keeps the weights near 1, a small one sharpens them
  toward the slowest task.

**Departures from the paper.** None in the rule. The rates use the mean losses of whole training epochs,
as the paper does; a loss that is 0 over a whole epoch is clamped to the smallest positive float before it
divides, so the rate stays finite.
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
        """The weights of the coming epoch (summary.json is written after `on_epoch_end`)."""
        return {"next_epoch_weights": dict(zip(self.task_names, self.last_weights.tolist(), strict=True))}
