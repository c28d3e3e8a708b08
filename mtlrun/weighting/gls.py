"""Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

The objective is the geometric mean of the T task losses, which no task can dominate through its units:
multiplying L_t by c multiplies the objective by c^(1/T), a constant factor.

**Update rule.**

```text
objective = (Π_t L_t)^(1/T) = exp(mean_t log L_t)
∂objective / ∂L_t = objective / (T · L_t)                 (the weights, `last_weights`)
```

The objective is computed in log space, so a product of many small (or large) losses neither underflows nor
overflows. When all losses are equal the weights are 1/T each: the scale of the mean of the losses, not of
their sum (`weighting=equal`).

**Options.** None.

**Departures from the paper.** The paper multiplies the losses directly; the log-space form gives the same
objective without underflow. A loss below the smallest normal float of its dtype (e.g. exactly 0, for a
task with no labelled row in the batch) is clamped there, so its logarithm stays finite, and gets weight 0;
the geometric mean, and with it every other task's weight, is then tiny for that step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlrun.weighting.base import Weighting


class GLS(Weighting):
    def combine(self, losses: Tensor) -> Tensor:
        floor = torch.finfo(losses.dtype).tiny
        objective = torch.exp(torch.log(losses.clamp_min(floor)).mean())
        weights = objective.detach() / (self.num_tasks * losses.detach().clamp_min(floor))
        self.last_weights = torch.where(losses.detach() >= floor, weights, 0.0).float()
        return objective
