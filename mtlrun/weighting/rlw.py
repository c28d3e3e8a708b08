"""Random Loss Weighting (Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus
Test for Multi-Task Learning", TMLR 2022).

Every step draws fresh weights from a distribution and takes the weighted sum of the losses. The paper's
default (and its recommended choice) is the softmax of standard normal draws:

    lambda ~ N(0, I_T),    w = T * softmax(lambda),    objective = sum_t w_t * L_t

Scale: the paper's weights sum to 1 (its equal-weighting baseline uses 1/T per task). mtlrun's ``equal``
is the plain sum (weight 1 per task), so the draws here are multiplied by T: they sum to T and each has
expectation 1, which keeps RLW against ``equal`` the same comparison the paper makes against its baseline.

The draws use torch's global CPU generator (the runner seeds it; checkpoints save its state), so a seed
gives the same weights on every device; only the [T] weights are then moved to the losses' device.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.weighting.base import Weighting


class RLW(Weighting):
    randomized: ClassVar[bool] = True

    def combine(self, losses: Tensor) -> Tensor:
        draw = torch.randn(self.num_tasks, dtype=torch.float64)
        weights = (self.num_tasks * torch.softmax(draw, dim=0)).to(losses)
        self.last_weights = weights.float()
        return (weights * losses).sum()
