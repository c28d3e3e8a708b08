"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022).

The tasks bargain over the update d = Gᵀα (G: the [T, P] task gradients, M = G Gᵀ its Gram matrix). The
Nash bargaining solution maximises Σ_i log(g_iᵀd) over a ball around 0, which gives (the paper's Theorem 5.1)

```text
α > 0  with  α_i (Mα)_i = 1  for every task i,        d = Σ_i α_i g_i
```

At the solution ‖d‖² = αᵀMα = T: the update has norm √T and depends only on the gradients' directions, not
on their norms. For T equal gradients g, α_i = 1 / (√T ‖g‖) and d = √T · g / ‖g‖ (before clipping).

**Solver.** Write α_i = β_i / ‖g_i‖: the equation keeps its form on the cosine matrix C = D M D
(D = diag(1/‖g_i‖), unit diagonal), β_i (Cβ)_i = 1, which is the stationarity condition of the strictly
convex, self-concordant

```text
f(β) = ½ βᵀ(C + εI)β − Σ_i log β_i,     ∇f = (C + εI)β − 1/β,     ∇²f = C + εI + diag(1/β²)
```

Damped Newton with a backtracking (Armijo) line search that keeps β > 0 converges globally and then
quadratically. It starts at the best multiple of the ones vector, β₀ = √(T / 1ᵀC1) · 1 (exact when the
gradients are equal or orthogonal), and stops when max_i |β_i ((C + εI)β)_i − 1| ≤ `tol`, typically after
3 to 8 iterations on the T×T matrix. Only the Gram matrix goes to the CPU (float64) for the solve.

**Options.**

- `max_norm`: clip the direction's norm to this value (the clip is folded into the weights, so
  `direction == grads.T @ last_weights` still holds); 0 turns clipping off. With 1.0 every update of T ≥ 2
  tasks has norm 1.
- `ridge`: ε, added to the cosine matrix's diagonal. A solution then exists even when some non-negative
  combination of the gradients vanishes (two exactly opposite gradients, where the exact α is infinite);
  it shifts α_i (Mα)_i by ε β_i², negligible otherwise.
- `tol`: Newton stops when every |β_i ((C + εI)β)_i − 1| is at most this.
- `max_iter`: the most Newton iterations.
- `grad_source`: `shared_params` (exact) or `representation` (gradients of the shared representation,
  cheaper).
- `update_every`: solve every k steps and reuse α in between, the paper's own speed trick.

**Departures from the paper.** The paper solves a sequence of convex problems with cvxpy; here Newton's
method solves the equation itself, to `tol`. The authors' code clips the norm of the shared parameters'
gradient; here `max_norm` clips the direction, before it is written to the parameters. A task whose
gradient is exactly zero cannot bargain (α_i (Mα)_i = 0 for any α_i): it is left out and gets α_i = 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, cosine_matrix, gram_matrix


def nash_bargaining_weights(
    cosine: Tensor, ridge: float = 1e-9, tol: float = 1e-10, max_iter: int = 50
) -> tuple[Tensor, int, float]:
    """β > 0 with β_i ((C + ridge·I) β)_i = 1 for a [T, T] cosine (unit-diagonal PSD) matrix C.

    Returns (β, Newton iterations, final max residual |β ⊙ (C + ridge·I)β − 1|)."""
    n = cosine.shape[0]
    c = cosine + ridge * torch.eye(n, dtype=cosine.dtype, device=cosine.device)
    beta = torch.full((n,), math.sqrt(n / c.sum().clamp_min(1e-12).item()), dtype=c.dtype, device=c.device)
    cb = c @ beta
    residual = (beta * cb - 1).abs().max().item()
    iterations, stalled = 0, 0
    while residual > tol and iterations < max_iter and stalled < 2:
        iterations += 1
        grad = cb - 1 / beta
        step = -torch.linalg.solve(c + torch.diag(1 / beta**2), grad)
        decrement2 = -(grad @ step).item()  # squared Newton decrement λ²
        t = 1.0
        if decrement2 >= 0.0625:
            # damped phase (λ >= 1/4): backtrack from the largest t <= 1 that keeps β > 0 until f
            # decreases enough (Armijo). For λ < 1/4 the full step stays inside β > 0 (|Δ_i|/β_i <= λ)
            # and converges quadratically (self-concordance).
            shrinking = step < 0
            if shrinking.any():
                t = min(1.0, 0.99 * (beta[shrinking] / -step[shrinking]).min().item())
            f0 = 0.5 * (beta @ cb).item() - torch.log(beta).sum().item()
            while t > 1e-10:
                trial = beta + t * step
                f1 = 0.5 * (trial @ (c @ trial)).item() - torch.log(trial).sum().item()
                if f1 <= f0 - 0.25 * t * decrement2:
                    break
                t *= 0.5
        trial = beta + t * step
        trial_cb = c @ trial
        trial_residual = (trial * trial_cb - 1).abs().max().item()
        # near the solution, a full step that no longer halves the residual means rounding dominates
        # (nearly dependent gradients, huge β): stop at the best point instead of spinning to max_iter
        stalled = stalled + 1 if decrement2 < 0.0625 and trial_residual > 0.5 * residual else 0
        if stalled == 0 or trial_residual < residual:
            beta, cb, residual = trial, trial_cb, trial_residual
    return beta, iterations, residual


class NashMTL(GradientWeighting):
    direction_is_weighted_sum: ClassVar[bool] = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        max_norm: float = 1.0,
        ridge: float = 1e-9,
        tol: float = 1e-10,
        max_iter: int = 50,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        if max_norm < 0:
            raise ConfigError(f"weighting.max_norm: must be >= 0 (0 = no clipping); got {max_norm}")
        if ridge < 0:
            raise ConfigError(f"weighting.ridge: must be >= 0; got {ridge}")
        if max_iter < 1:
            raise ConfigError(f"weighting.max_iter: must be >= 1; got {max_iter}")
        self.max_norm = max_norm
        self.ridge = ridge
        self.tol = tol
        self.max_iter = max_iter
        # solver diagnostics of the last solve and the worst so far (not training state: not checkpointed)
        self.last_iterations = 0
        self.last_residual = 0.0
        self.max_iterations_seen = 0

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        alpha = torch.zeros(gram.shape[0], dtype=torch.float64)
        active, norms, cosine = cosine_matrix(gram)
        if active.any():
            beta, iterations, residual = nash_bargaining_weights(cosine, self.ridge, self.tol, self.max_iter)
            alpha[active] = beta / norms
            self.last_iterations, self.last_residual = iterations, residual
            self.max_iterations_seen = max(self.max_iterations_seen, iterations)
            if self.max_norm > 0:
                norm = (alpha @ gram @ alpha).clamp_min(0).sqrt().item()
                if norm > self.max_norm:
                    alpha = alpha * (self.max_norm / norm)
        return self.apply_weights(alpha, grads)

    def summary(self) -> dict:
        return {
            "newton_iterations_last": self.last_iterations,
            "newton_iterations_max": self.max_iterations_seen,
        }
