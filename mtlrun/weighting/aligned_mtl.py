"""Aligned-MTL (Senushkin et al., CVPR 2023, "Independent Component Alignment for Multi-Task Learning").

The task gradients G ([T, P]) form a linear system whose condition number measures how much they conflict
and how unequal their magnitudes are. Aligned-MTL replaces G by the closest matrix (in Frobenius norm) with
orthogonal rows of equal norm σ, the orthogonal Procrustes solution, computed on the Gram matrix alone:

    M = G Gᵀ = V Λ Vᵀ,     B = σ · V Λ^{-1/2} Vᵀ,     Ĝ = B G,     d = Ĝᵀ w = Gᵀ (B w).

With the SVD G = V Σ Uᵀ, Ĝ = σ V Uᵀ: the aligned gradients are orthogonal, all of norm σ, and the aligned
system has condition number 1. The scale σ (``scale_mode``) is √λ_min (paper and default), √median(λ) or
√mean(λ) (the authors' code's ``min``, ``median``, ``rmse``). Rank deficiency (e.g. a zero or duplicated
gradient) is handled as in the authors' code: only eigenvalues λ_k > tol·λ_max are kept (tol =
T·eps(dtype) unless ``rank_tol`` is set) and λ_min is the smallest kept one, so B projects onto the span
of the gradients. For T equal rows g (rank 1) B = 11ᵀ/T, so the weights are B w = (Σw/T)·1 and
d = (Σ_i w_i)·g.

The weights B w are the per-task weights (``last_weights``); d is their weighted sum of the task gradients.
Task preference w: the authors' code sums the aligned gradients (w = 1, ``reduction: sum``, the default,
like the plain sum of losses of ``equal``); TorchJD and the paper's notation average them (w = 1/T,
``reduction: mean``). B is invariant to a common scaling G → cG (both σ and Λ^{-1/2} scale), so the
weights are too and d scales like G; scaling one task's gradient changes d in general.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, gram_matrix

SCALE_MODES = ("min", "median", "rmse")
REDUCTIONS = ("sum", "mean")


def balance_transformation(gram: Tensor, scale_mode: str = "min", rank_tol: float = 1e-6) -> Tensor:
    """B = σ · V_r Λ_r^{-1/2} V_rᵀ over the eigenpairs with λ > rank_tol·λ_max (identity if M = 0)."""
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

    def preference(self) -> float:
        """The task preference w_i (the same for every task)."""
        return 1.0 if self.reduction == "sum" else 1.0 / self.num_tasks

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        tol = self.rank_tol or len(gram) * torch.finfo(torch.promote_types(grads.dtype, torch.float32)).eps
        b = balance_transformation(gram, self.scale_mode, tol)
        weights = b.sum(dim=1) * self.preference()  # B w with w_i = preference
        self.last_weights = weights.to(device=grads.device, dtype=self.last_weights.dtype)
        return weights.to(device=grads.device, dtype=grads.dtype) @ grads

    def expected_direction_when_equal(self, g: Tensor) -> Tensor:
        return self.num_tasks * self.preference() * g
