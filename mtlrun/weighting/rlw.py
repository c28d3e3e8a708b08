"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022).

Every step draws fresh loss weights at random and descends the weighted sum of the losses: a baseline that
an adaptive method should beat.

**Update rule.** The paper's recommended distribution, the softmax of standard normal draws:

```text
λ ~ N(0, I_T),        w = T · softmax(λ),        objective = Σ_t w_t · L_t
```

The draws use torch's global CPU generator (the runner seeds it; checkpoints save its state), so a seed
gives the same weights on every device; only the [T] weights are then moved to the losses' device.

**Options.** None.

**Departures from the paper.** The paper's weights sum to 1 (its equal-weighting baseline uses 1/T per
task). `weighting=equal` here is the plain sum (weight 1 per task), so the draws are multiplied by T: they
sum to T and each has expectation 1, which keeps RLW against `equal` the comparison the paper makes
against its baseline. The paper's other weight distributions are not offered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlrun.weighting.base import Weighting


class RLW(Weighting):
    def combine(self, losses: Tensor) -> Tensor:
        draw = torch.randn(self.num_tasks, dtype=torch.float64)
        weights = (self.num_tasks * torch.softmax(draw, dim=0)).to(losses)
        self.last_weights = weights.float()
        return (weights * losses).sum()
