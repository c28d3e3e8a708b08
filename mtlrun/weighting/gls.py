"""Geometric Loss Strategy (Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature
Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019).

The objective is the geometric mean of the T task losses, computed in log space so that a product of many
small (or large) losses neither underflows nor overflows:

    objective = (prod_t L_t)^(1/T) = exp(mean_t log L_t)

It is invariant to each loss's scale up to a constant factor (multiplying L_t by c multiplies the
objective by c^(1/T)), so no task dominates through its units. Its gradient is a loss-dependent weighting:

    d objective / d L_t = objective / (T * L_t)

which is what ``last_weights`` reports (1/T each when all losses are equal: the scale of the mean, not of
the sum). A loss below the smallest normal float of its dtype is clamped there and gets weight 0.
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
