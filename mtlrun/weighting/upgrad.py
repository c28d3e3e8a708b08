"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; the aggregator `UPGrad`
of their library TorchJD).

Each task gradient g_i is projected onto the dual cone of all task gradients, K = {x : G x ≥ 0} (the
updates that increase no task's loss, to first order), and the projections are averaged, so the update
conflicts with no task. When no two gradients conflict (every g_iᵀg_j ≥ 0) every g_i already lies in K and
d is the mean gradient; T equal gradients g give g (T g with `reduction: sum`).

**Update rule.**

```text
d = 1/T Σ_i π_K(g_i),        π_K(y) = argmin_(x ∈ K) ‖x − y‖²
```

Through its dual (the paper's Proposition 1), π_K(Gᵀu) = Gᵀv with v = argmin_(v ≥ u) vᵀMv (M = G Gᵀ); for
u = e_i, v = e_i + λ with λ ≥ 0 solving the non-negative quadratic programme

```text
min_(λ ≥ 0) ½ λᵀMλ + λᵀM e_i,       KKT: λ ≥ 0,  μ = M(e_i + λ) = G π_K(g_i) ≥ 0,  λ ⊙ μ = 0
```

So d = Gᵀw with w = 1/T Σ_i (e_i + λ⁽ⁱ⁾) (`last_weights`): a weighting of the task gradients. Positive row
scalings do not change K, so the programmes are solved on the cosine matrix C = D M D (D = diag(1/‖g_i‖),
unit diagonal; then λ⁽ⁱ⁾_k = ‖g_i‖ μ_k / ‖g_k‖), which makes gradients of very different norms harmless.
A zero gradient puts no constraint on K and is left out of the programmes.

**Solver.** Only the T×T matrix C is needed, in float64 on the CPU, and every answer is exact to rounding.
The T programmes share C, so beyond a few tasks they are solved together by block principal pivoting
(`mtlrun.weighting.base.nonnegative_qp_batch`): each keeps a set F of free variables and solves
C_FF λ_F = −(C e_i)_F, then moves all its infeasible variables across at once (only the last one when that
stops reducing their number); an iteration is one batched Cholesky factorisation of the T systems, and a few
iterations usually suffice. With at most `FEW_TASKS` non-zero gradients, and for a programme whose systems
are numerically singular (dependent gradients), the Lawson–Hanson active-set method in its Gram form
(`mtlrun.weighting.base.nonnegative_qp`) solves the programmes one by one in plain floats, one variable at a
time, setting dependent columns aside.

**Options.**

- `reduction`: the uniform preference: `mean` of the projections or their `sum` (T times larger, on the
  scale of `weighting=equal`).
- `reg_eps`: added to the diagonal of the cosine matrix before the programmes are solved; 0 is the exact
  projection, a positive value trades exactness for robustness on nearly dependent gradients.
- `grad_source`: `shared_params` (exact) or `representation` (gradients of the shared representation,
  cheaper).
- `update_every`: solve every k steps and reuse the weights in between.

**Departures from the paper.** TorchJD divides the Gram matrix by its trace (which does not change the
solution) and adds a small regularisation to its diagonal for its generic QP solver; here the programmes are
solved exactly on the cosine matrix and `reg_eps` is the regularisation, applied to C.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import (
    REDUCTIONS,
    GradientWeighting,
    cosine_matrix,
    gram_matrix,
    nonnegative_qp,
    nonnegative_qp_batch,
)

FEW_TASKS = 6  # up to this many non-zero gradients, the programmes are solved one by one (`nonnegative_qp`)


class UPGrad(GradientWeighting):
    direction_is_weighted_sum: ClassVar[bool] = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        reduction: str = "mean",
        reg_eps: float = 0.0,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        check_choice("weighting.reduction", reduction, REDUCTIONS)
        if reg_eps < 0:
            raise ConfigError(f"weighting.reg_eps: must be >= 0; got {reg_eps}")
        self.reduction = reduction
        self.reg_eps = reg_eps
        self.last_solves = 0  # linear solves of the last call (diagnostic)

    def dual_multipliers(self, gram: Tensor) -> Tensor:
        """[T, T] matrix whose row i is λ^(i): π_K(g_i) = Gᵀ(e_i + λ^(i)), from the Gram matrix (float64)."""
        n = gram.shape[0]
        self.last_solves = 0
        mask, norms, cosine = cosine_matrix(gram)
        active = mask.nonzero().flatten()
        if len(active) < 2 or bool((cosine >= 0).all()):
            return torch.zeros(n, n, dtype=torch.float64)  # no conflict: every g_i already lies in the cone
        c = cosine + self.reg_eps * torch.eye(len(active), dtype=torch.float64) if self.reg_eps else cosine
        # programme a has q = c e_a, row a of c: all of them at once beyond a few tasks; one by one in plain
        # floats for a few tasks (faster than launching tensor operations at that size) and for those the
        # batch leaves unsolved (dependent gradients: the one-at-a-time method sets such columns aside)
        if len(active) > FEW_TASKS:
            mu, solved, solves = nonnegative_qp_batch(c, c)
        else:
            mu, solved, solves = torch.zeros_like(c), torch.zeros(len(active), dtype=torch.bool), 0
        if not bool(solved.all()):
            rows = c.tolist()
            left = (~solved).nonzero().flatten().tolist()
            found = [nonnegative_qp(rows, rows[a]) for a in left]
            mu[left] = torch.tensor([x for x, _ in found], dtype=torch.float64)
            solves += sum(used for _, used in found)
        self.last_solves = solves
        lam = norms[:, None] * mu / norms  # back from the cosine matrix to the gradients' scale
        if len(active) == n:
            return lam
        full = torch.zeros(n, n, dtype=torch.float64)
        full[active[:, None], active] = lam
        return full

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        weights = 1.0 + self.dual_multipliers(gram).sum(dim=0)  # Σ_i (e_i + λ^(i))
        if self.reduction == "mean":
            weights = weights / len(gram)
        return self.apply_weights(weights, grads)
