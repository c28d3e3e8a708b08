"""PCGrad, projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020).

Each task gradient drops its component along every other task's gradient that it conflicts with (negative
dot product), the other tasks taken in a random order, and the update sums the projected gradients.
Gradients that do not conflict are left alone, so T equal gradients g give T g (g with `reduction: mean`).

**Update rule** (the paper's Algorithm 1):

```text
g_i′ ← g_i;   for j in shuffle(tasks other than i):   if g_i′ᵀg_j < 0:   g_i′ ← g_i′ − (g_i′ᵀg_j / ‖g_j‖²) g_j
d = Σ_i g_i′                              (divided by T with `reduction: mean`)
```

On two conflicting tasks: d = g_1 − (g_1ᵀg_2 / ‖g_2‖²) g_2 + g_2 − (g_2ᵀg_1 / ‖g_1‖²) g_1.

Every g_i′ is a combination Σ_j C_ij g_j of the original gradients, and every dot product it needs is
(C M)_ij with M the T×T Gram matrix, so the projections run on T×T matrices (all tasks at once, one
position of their random orders per round) and d = Σ_j w_j g_j with w = 1ᵀC: a weighted sum of the task
gradients, with exact weights (`last_weights`). The random orders come from torch's global generator (the
runner seeds it).

**Options.**

- `reduction`: `sum` of the projected gradients (on the scale of `weighting=equal`) or their `mean`.
- `grad_source`: `shared_params` (the paper) or `representation` (gradients of the shared representation,
  cheaper).
- `update_every`: recompute every k steps and reuse the last weights in between.

**Departures from the paper.** None in the rule: the paper and the authors' code sum the projected
gradients; `reduction: mean` is the convention of a popular port. The projections are computed on the Gram
matrix instead of on P-dimensional vectors, which gives the same direction up to rounding.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import REDUCTIONS, GradientWeighting


class PCGrad(GradientWeighting):
    direction_is_weighted_sum = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        reduction: str = "sum",
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        check_choice("weighting.reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        num = len(grads)
        gram = grads @ grads.T
        sq_norms = gram.diagonal().clamp_min(torch.finfo(grads.dtype).tiny)
        keys = torch.rand(num, num, device=grads.device)
        keys.fill_diagonal_(2.0)  # a task never projects against itself: last in its order, never reached
        order = keys.argsort(dim=1)[:, : num - 1]  # row i: the other tasks, shuffled
        coef = torch.eye(num, dtype=grads.dtype, device=grads.device)  # g_i^PC = sum_j coef[i, j] g_j
        dots = gram.clone()  # dots[i, j] = g_i^PC . g_j
        rows = torch.arange(num, device=grads.device)
        for k in range(num - 1):
            other = order[:, k]
            dot = dots[rows, other]
            step = torch.where(dot < 0, dot / sq_norms[other], torch.zeros_like(dot))
            coef[rows, other] -= step
            dots -= step[:, None] * gram[other]
        weights = coef.sum(dim=0)
        if self.reduction == "mean":
            weights = weights / num
        return self.apply_weights(weights, grads)
