"""GradDrop, gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a
Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020).

Per coordinate, GradDrop keeps the task gradients of one sign and drops the others, choosing the sign at
random with a probability given by how consistent the signs are: the more popular sign survives more
often. Where all task gradients agree in sign nothing is dropped, so T equal gradients g give T g.

**Update rule.** Per coordinate, the positive sign purity and the kept components are

```text
P = ½ (1 + Σ_t g_t / Σ_t |g_t|)           (in [0, 1]: 1 where every g_t ≥ 0, 0 where every g_t ≤ 0)
U ~ Uniform(0, 1)                         (one draw per coordinate)
M_t = 1 where (U < P and g_t > 0) or (U ≥ P and g_t < 0), else 0
d = Σ_t (l_t + (1 − l_t) M_t) ⊙ g_t
```

with l_t the task's leak. The direction is not a weighted sum of the task gradients; `last_weights` are the
least-squares weights that come closest to it. The draw uses torch's global generator (the runner seeds
it).

**Options.**

- `leak`: l, the share of a task's gradient that bypasses the mask, in [0, 1]: one number for every task or
  a `{task: leak}` mapping (unlisted tasks get 0). 0 lets only masked gradients flow (the paper's
  multi-task setting); 1 passes a task through unmasked (its transfer-learning setting).
- `grad_source`: `representation` masks the gradients with respect to the shared representation, as the
  paper does at an activation layer; `shared_params` masks the shared parameters' gradients, one draw per
  parameter.
- `update_every`: must stay 1: there are no weights to reuse, new masks are drawn every step.

**Departures from the paper.** With `grad_source: representation` the masks act per element, batch
included: the paper's variant that first sums over the batch, weighted by the activations' signs, needs
the activations themselves, which the gradient contract does not pass. With `shared_params` (not in the
paper) the masks act on the parameters' gradients instead of the activations'.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, effective_weights, per_task_values


class GradDrop(GradientWeighting):
    def __init__(
        self,
        tasks: Mapping[str, Task],
        leak: float | Mapping[str, float] = 0.0,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        values = per_task_values("weighting.leak", leak, self.task_names, default=0.0)
        if any(not 0.0 <= v <= 1.0 for v in values):
            leaks = dict(zip(self.task_names, values, strict=True))
            raise ConfigError(f"weighting.leak: every leak must be in [0, 1]; got {leaks}")
        # from the config, not the checkpoint
        self.register_buffer("leak", torch.tensor(values), persistent=False)

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        leak = self.leak.to(grads.dtype).to(grads.device)
        purity = 0.5 * (1.0 + grads.sum(0) / grads.abs().sum(0).clamp_min(torch.finfo(grads.dtype).tiny))
        keep_positive = torch.rand_like(purity) < purity  # else keep the negative components
        masked = 1.0 - leak
        direction = torch.where(keep_positive, masked @ grads.clamp_min(0.0), masked @ grads.clamp_max(0.0))
        if bool((leak > 0).any()):
            direction = direction + leak @ grads
        self.last_weights = effective_weights(grads, direction)
        return direction
