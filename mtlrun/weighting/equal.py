"""Equal weighting: the plain sum of the task losses, every weight 1.

The baseline every other method is compared against: `objective = Σ_t L_t`, one backward pass per step.
Its weights are fixed, so reports draw it as a point of the static-weight front (`adaptive` is false).

**Options.** None.

**Departures from the paper.** No paper: some papers' "equal weighting" averages the losses (weights 1/T);
here the weights are 1, the scale that `rlw`, `dwa` and `gradnorm` keep (their weights sum to T).
"""

from __future__ import annotations

from torch import Tensor

from mtlrun.weighting.base import Weighting


class Equal(Weighting):
    adaptive = False

    def combine(self, losses: Tensor) -> Tensor:
        return losses.sum()
