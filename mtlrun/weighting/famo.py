"""FAMO (Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023).

FAMO balances the rate at which the task losses fall, at the cost of one backward pass per step. Learnable
task logits ξ (in the `weighting` optimizer group) give z = softmax(ξ); a task whose loss falls more slowly
than the others' gets a larger logit, hence a larger weight.

**Update rule.** With D_t = L_t + ε (ε = 1e-8 keeps the log finite at a zero loss) the model descends

```text
objective = Σ_t (z_t / S) · log D_t,      S = Σ_j z_j / D_j          (z and S held constant)
```

so task t's loss gets the weight ∂objective/∂L_t = (z_t / D_t) / S: positive, summing to 1
(`last_weights`). Dividing by D_t makes every task's log-loss fall at a rate set by z alone, whatever the
loss's scale. The logits then follow the observed decrease of each log-loss,
δ_t = log D_t(before) − log D_t(after):

```text
∇ξ = J_softmax(ξ)ᵀ δ + γ ξ = z ⊙ (δ − zᵀδ) + γ ξ
```

This gradient is written into `ξ.grad` and the `weighting` optimizer steps ξ. The γ ξ term is the paper's
weight decay on the logits, added here to the gradient because the `weighting` group's own weight decay is
shared with other methods.

**Options.**

- `gamma`: γ, the L2 pull of the logits toward 0.
- The logits' learning rate is `optim.groups.weighting.lr` (the paper uses 0.025), not a key of this file.

**Departures from the paper.** The paper recomputes the losses on the same batch right after the model
step, an extra forward pass. Here δ compares this step's losses with the previous step's, on a new batch:
no extra cost, but the logit update lags one step and carries batch-to-batch noise; over many steps it
follows the same trend. The first step has no previous losses and only the γ term moves ξ. The previous
step's losses are a buffer, so a resumed run continues exactly. The paper also clips the shared gradient
norm at 1; here that is `trainer.grad_clip=1.0`, off unless set.
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
