"""Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021).

PCGrad only acts when two task gradients conflict (cosine < 0), and then makes them orthogonal. GradVac
keeps, for every ordered pair of tasks (i, j), a target cosine φ̂_ij, an exponential moving average of the
cosines observed so far (starting at 0), and moves g_i towards g_j whenever their cosine falls below it.

**Update rule.** For each task i, and each other task j in a random order:

```text
φ_ij = cos(g_i′, g_j)                    (g_i′: g_i as adjusted so far; g_j: the original)
if φ_ij < φ̂_ij:   g_i′ ← g_i′ + g_j · ‖g_i′‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²)) / (‖g_j‖ √(1 − φ̂_ij²))
φ̂_ij ← (1 − β) φ̂_ij + β φ_ij
d = Σ_i g_i′                             (divided by T with `reduction: mean`)
```

After an adjustment cos(g_i′, g_j) = φ̂_ij exactly; with φ̂ = 0 the rule is PCGrad's projection. Equal
gradients never conflict (cosine 1), so T equal gradients g give T g (g with `mean`).

Every g_i′ is a combination of the original gradients, so the procedure runs entirely on the T×T Gram
matrix (dot products and norms of the combinations), in float64 on the CPU; the direction is Gᵀw with exact
per-task weights w (`last_weights`). A pair with a zero gradient has no cosine: it is neither adjusted nor
used to update the EMA. The task order is drawn from torch's global generator (the runner seeds it); the
targets φ̂ are a buffer, so they are checkpointed.

**Options.**

- `beta`: β, the EMA rate of the target cosines, in [0, 1].
- `reduction`: combine the adjusted gradients by `sum` (on the scale of `weighting=equal`) or `mean`.
- `ema_on_conflict_only`: false updates φ̂_ij for every pair at every step; true only when the pair was
  adjusted.
- `grad_source`: `shared_params` (exact) or `representation` (gradients of the shared representation,
  cheaper).
- `update_every`: recompute every k steps and reuse the weights in between; φ̂ then moves only on the
  steps that recompute.

**Departures from the paper.** The paper applies the rule per layer; here the whole
shared vector, or the shared representation, is one block. The paper updates the EMA for every pair at every
step (`ema_on_conflict_only: false`); LibMTL's implementation only when the pair was adjusted (`true`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import REDUCTIONS, GradientWeighting, gram_matrix


def vaccinate(
    gram: list[list[float]], target: list[list[float]], order: list[list[int]], beta: float, ema_always: bool
) -> list[list[float]]:
    """Run GradVac on a Gram matrix; updates `target` in place.

    `order[i]` lists the other tasks j in the order task i visits them. Returns the [T][T] coefficients:
    row i expresses the adjusted g_i' = Σ_k row_i[k] g_k in the original gradients."""
    n = len(gram)
    rows = []
    for i in range(n):
        coef = [0.0] * n  # g_i' = Σ_k coef_k g_k
        coef[i] = 1.0
        dots = list(gram[i])  # dots[k] = g_i' · g_k
        for j in order[i]:
            norm2_i = max(sum(c * d for c, d in zip(coef, dots, strict=True)), 0.0)
            if norm2_i <= 0.0 or gram[j][j] <= 0.0:
                continue
            norm_i, norm_j = math.sqrt(norm2_i), math.sqrt(gram[j][j])
            phi = min(1.0, max(-1.0, dots[j] / (norm_i * norm_j)))
            phi_hat = target[i][j]
            conflict = phi < phi_hat
            if conflict:
                sin_hat = math.sqrt(max(1.0 - phi_hat * phi_hat, 1e-24))
                scale = norm_i * (phi_hat * math.sqrt(1.0 - phi * phi) - phi * sin_hat) / (norm_j * sin_hat)
                coef[j] += scale
                dots = [d + scale * m for d, m in zip(dots, gram[j], strict=True)]
            if ema_always or conflict:
                target[i][j] = (1.0 - beta) * phi_hat + beta * phi
        rows.append(coef)
    return rows


class GradVac(GradientWeighting):
    direction_is_weighted_sum: ClassVar[bool] = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        beta: float = 0.01,
        reduction: str = "sum",
        ema_on_conflict_only: bool = False,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"weighting.beta: the EMA rate must be in [0, 1]; got {beta}")
        check_choice("weighting.reduction", reduction, REDUCTIONS)
        self.beta = beta
        self.reduction = reduction
        self.ema_on_conflict_only = ema_on_conflict_only
        # φ̂_ij, the EMA target cosine of the ordered pair (i, j); checkpointed with the run
        self.register_buffer("target_cosine", torch.zeros(self.num_tasks, self.num_tasks))

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        n = gram.shape[0]
        draws = [torch.randperm(n - 1).tolist() for _ in range(n)]
        order = [[j if j < i else j + 1 for j in row] for i, row in enumerate(draws)]  # skip i itself
        target = self.target_cosine.detach().to("cpu", torch.float64).tolist()
        rows = vaccinate(gram.tolist(), target, order, self.beta, not self.ema_on_conflict_only)
        weights = torch.tensor(rows, dtype=torch.float64).sum(dim=0)
        if self.reduction == "mean":
            weights = weights / n
        self.target_cosine.copy_(torch.tensor(target, dtype=torch.float64))
        return self.apply_weights(weights, grads)

    def summary(self) -> dict:
        names = self.task_names
        return {
            "target_cosine": {
                f"{names[i]}->{names[j]}": float(self.target_cosine[i, j])
                for i in range(len(names))
                for j in range(len(names))
                if i != j
            }
        }
