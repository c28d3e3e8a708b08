"""Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR
2023).

The task gradients G ([T, P]) form a linear system whose condition number measures how much they conflict
and how unequal their norms are. Aligned-MTL replaces G by the closest matrix (in Frobenius norm) whose rows
are orthogonal and of equal norm σ, and sums those aligned gradients. The aligned system has condition
number 1: no task dominates and none is cancelled.

**Update rule.** Everything is computed from the T×T Gram matrix, by the orthogonal Procrustes solution:

```text
M = G Gᵀ = V Λ Vᵀ,      B = σ · V Λ^(-1/2) Vᵀ,      Ĝ = B G,      d = Ĝᵀ w = Gᵀ (B w)
```

With the SVD G = V Σ Uᵀ, Ĝ = σ V Uᵀ: the aligned rows are orthogonal, each of norm σ. The per-task weights
(`last_weights`) are B w, so d is a weighted sum of the task gradients. Rank deficiency (a zero or
duplicated gradient) keeps only the eigenvalues λ_k > tol · λ_max, so B projects onto the span of the
gradients; for T equal rows g, B = 11ᵀ/T and d = (Σ_i w_i) · g. B does not change when every gradient is
scaled by the same c (σ and Λ^(-1/2) cancel), so the weights stay and d scales like G; scaling a single
task's gradient changes d in general.

**Options.**

- `scale_mode`: the eigenvalue that sets σ²: `min` (the smallest kept eigenvalue, the paper's choice),
  `median`, or `rmse` (their mean).
- `reduction`: the task preference w: `sum` (w_i = 1, the plain sum of the aligned gradients, on the scale
  of `weighting=equal`) or `mean` (w_i = 1/T).
- `rank_tol`: eigenvalues at or below `rank_tol` · λ_max are dropped; 0 means T times the machine epsilon of
  the gradients' dtype.
- `grad_source`: `shared_params` aligns the gradients of the shared parameters; `representation` those of
  the shared representation (the paper's cheaper Aligned-MTL-UB).
- `update_every`: solve every k steps and reuse B w in between.

**Departures from the paper.** The paper writes the preference as an average (w = 1/T, `reduction: mean`);
the authors' code sums (w = 1, `reduction: sum`). The `median` and `rmse` scales and the eigenvalue cut-off
for rank-deficient G come from the authors' code, not the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import REDUCTIONS, GradientWeighting, gram_matrix

SCALE_MODES = ("min", "median", "rmse")


def balance_transformation(gram: Tensor, scale_mode: str = "min", rank_tol: float = 1e-6) -> Tensor:
    """B = σ · V_r Λ_r^(-1/2) V_rᵀ over the eigenpairs with λ > rank_tol·λ_max (identity if M = 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    top = eigenvalues[-1]
    if top <= 0:
        return torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    keep = eigenvalues > rank_tol * top
    lam, vec = eigenvalues[keep], eigenvectors[:, keep]
    if scale_mode == "min":
        sigma2 = lam.min()
    elif scale_mode == "median":
        sigma2 = lam.median()
    else:
        sigma2 = lam.mean()
    return (vec * (sigma2 / lam).sqrt()) @ vec.T


class AlignedMTL(GradientWeighting):
    direction_is_weighted_sum: ClassVar[bool] = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        scale_mode: str = "min",
        reduction: str = "sum",
        rank_tol: float = 0.0,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        check_choice("weighting.scale_mode", scale_mode, SCALE_MODES)
        check_choice("weighting.reduction", reduction, REDUCTIONS)
        if rank_tol < 0:
            raise ConfigError(
                f"weighting.rank_tol: must be >= 0 (0 = T·eps of the gradients' dtype); got {rank_tol}"
            )
        self.scale_mode = scale_mode
        self.reduction = reduction
        self.rank_tol = rank_tol

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        tol = self.rank_tol or len(gram) * torch.finfo(torch.promote_types(grads.dtype, torch.float32)).eps
        b = balance_transformation(gram, self.scale_mode, tol)
        preference = 1.0 if self.reduction == "sum" else 1.0 / self.num_tasks
        return self.apply_weights(b.sum(dim=1) * preference, grads)  # B w with every w_i = preference
