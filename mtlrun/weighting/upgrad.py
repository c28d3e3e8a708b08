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
Each is solved exactly by the Lawson–Hanson active-set method in its Gram form (only M is needed), in
float64 on the CPU: at most a few T×T solves per task, accurate to rounding. A zero gradient puts no
constraint on K and is left out of the programmes.

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

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import REDUCTIONS, GradientWeighting, cosine_matrix, gram_matrix


def _solve_spd(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve a x = b for a small symmetric positive definite a (Cholesky); None when a is (numerically)
    singular."""
    n = len(b)
    low = [[0.0] * n for _ in range(n)]
    for r in range(n):
        for c in range(r + 1):
            s = a[r][c] - sum(low[r][k] * low[c][k] for k in range(c))
            if r == c:
                if s <= 1e-13 * max(a[r][r], 1e-300):
                    return None
                low[r][r] = math.sqrt(s)
            else:
                low[r][c] = s / low[c][c]
    y = [0.0] * n
    for r in range(n):
        y[r] = (b[r] - sum(low[r][k] * y[k] for k in range(r))) / low[r][r]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (y[r] - sum(low[k][r] * x[k] for k in range(r + 1, n))) / low[r][r]
    return x


def nonnegative_qp(c: list[list[float]], q: list[float], tol: float = 1e-12) -> tuple[list[float], int]:
    """argmin_(x >= 0) ½ xᵀ c x + qᵀ x for a PSD c (Lawson–Hanson active set on the Gram form).

    Returns (x, number of linear solves). Exact up to rounding: on return, x >= 0, the gradient c x + q is
    >= −tol everywhere and 0 (to rounding) where x > 0."""
    n = len(q)
    x = [0.0] * n
    passive: list[int] = []
    unusable: set[int] = set()  # columns numerically dependent on the passive ones
    solves = 0
    for _ in range(4 * n + 4):
        grad = [sum(c[k][m] * x[m] for m in range(n)) + q[k] for k in range(n)]
        free = [k for k in range(n) if k not in passive and k not in unusable]
        if not free:
            break
        j = min(free, key=lambda k: grad[k])
        if grad[j] >= -tol:
            break  # KKT holds: no variable at zero can decrease f
        trial = passive + [j]
        while True:
            solves += 1
            z = _solve_spd([[c[r][s] for s in trial] for r in trial], [-q[r] for r in trial])
            if z is None or (j in trial and z[trial.index(j)] <= 0 and x[j] == 0.0):
                unusable.add(j)  # dependent (or rounding-level) column: leave x as it was
                trial = None
                break
            if all(v > 0 for v in z):
                x = [0.0] * n
                for r, v in zip(trial, z, strict=True):
                    x[r] = v
                break
            # move from x towards z until the first passive variable reaches 0, drop it, solve again
            step = min(x[r] / (x[r] - v) for r, v in zip(trial, z, strict=True) if v <= 0)
            for r, v in zip(trial, z, strict=True):
                x[r] += step * (v - x[r])
            trial = [r for r in trial if x[r] > 1e-15 * (1.0 + abs(x[r]))]
            for r in range(n):
                if r not in trial:
                    x[r] = 0.0
            if not trial:
                break
        if trial is not None:
            passive = trial
    return x, solves


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
        lam = torch.zeros(n, n, dtype=torch.float64)
        self.last_solves = 0
        mask, norms, cosine = cosine_matrix(gram)
        active = mask.nonzero().flatten().tolist()
        if len(active) < 2:
            return lam
        if (cosine >= 0).all():
            return lam  # no conflict: every g_i already lies in the cone
        c = (cosine + self.reg_eps * torch.eye(len(active), dtype=torch.float64)).tolist()
        solves = 0
        for a, i in enumerate(active):
            mu, used = nonnegative_qp(c, c[a])
            solves += used
            lam[i, active] = norms[a] * torch.tensor(mu, dtype=torch.float64) / norms
        self.last_solves = solves
        return lam

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        n = gram.shape[0]
        lam = self.dual_multipliers(gram)
        weights = (torch.eye(n, dtype=torch.float64) + lam).sum(dim=0)
        if self.reduction == "mean":
            weights = weights / n
        return self.apply_weights(weights, grads)
