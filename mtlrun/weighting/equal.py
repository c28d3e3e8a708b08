"""Equal weighting: the plain sum of the task losses (every weight is 1)."""

from __future__ import annotations

from torch import Tensor

from mtlrun.weighting.base import Weighting


class Equal(Weighting):
    adaptive = False

    def combine(self, losses: Tensor) -> Tensor:
        return losses.sum()
