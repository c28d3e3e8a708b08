"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent
for Multi-task Learning", NeurIPS 2021).

Within a ball around the mean task gradient g₀, CAGrad takes the direction that most improves the task
that improves least. The radius is a multiple `c` of ‖g₀‖: `c = 0` is the mean gradient, a larger `c`
trades average progress for progress on the worst task.

**Update rule.** The primal problem and its dual over the simplex (g_w = Σ_t w_t g_t):

```text
max_d min_t g_tᵀd     subject to   ‖d − g₀‖ ≤ √φ,   φ = c² ‖g₀‖²
w* = argmin_(w ∈ simplex)  g_wᵀg₀ + √φ ‖g_w‖
d  = g₀ + λ g_w*,          λ = √φ / ‖g_w*‖
```

so d is a weighted sum of the task gradients with weights `1/T + λ w*_t` (`last_weights`), divided by
1 + c² when `rescale` is on. For T equal gradients g, d = (1 + c) g (then divided by 1 + c²).

**Solver.** For a fixed λ, the optimality conditions in w are those of the minimum-norm point of the hull
of the points g₀ + λ g_t, and λ is the root of λ ‖g_w(λ)‖ = √φ, which increases with λ. On a fixed support
S of w both have a closed form: with p = M_S⁻¹ 1 and q = M_S⁻¹ a_S (M the Gram matrix, a_t = g_tᵀg₀),
every task in S improves by the same ν, and

```text
λ = √((1ᵀq)² − 1ᵀp (a_Sᵀq − φ)),      λ w_S = ν p − q,      ν = (λ + 1ᵀq) / 1ᵀp
```

So the solver finds the min-norm point at the current λ with MGDA's Frank-Wolfe solver
(`mtlrun.weighting.mgda.min_norm_weights`), reads off its support, computes the closed form there and
accepts it when it meets every optimality condition (w_S ≥ 0, every task outside S improves by at least
ν); otherwise it moves λ within a bracket and repeats. The answer is exact up to rounding and usually costs
one or two min-norm solves on a T×T matrix.

**Options.**

- `c`: the radius of the ball as a multiple of ‖g₀‖.
- `rescale`: divide d by 1 + c², which keeps the step comparable to the mean gradient's; off, d is the
  paper's.
- `grad_source`: `shared_params` (the paper) or `representation` (gradients of the shared representation,
  cheaper).
- `update_every`: solve every k steps and reuse the weights in between.

**Departures from the paper.** The paper's d is not rescaled; the authors' code divides it by 1 + c²
(`rescale`). A zero task gradient cannot be improved by any d (g_tᵀd = 0): it is left out of the dual (its
weight is 1/T only), so d maximises the worst improvement of the tasks that can improve. Kept in, it would
cap the worst improvement at 0, make every d of the ball that conflicts with no task optimal, put the dual
optimum at its vertex (g_w = 0, λ undefined), and the reference code would return an arbitrary direction.
The dual is solved exactly (above) instead of by a generic optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, gram_matrix
from mtlrun.weighting.mgda import min_norm_weights

KKT_TOL = 1e-9  # relative tolerance of the optimality certificate of the closed form
MAX_ROUNDS = 60  # lam updates at most; usually one or two


def _closed_form(gram: Tensor, a: Tensor, radius: float, support: list[int]) -> tuple[float, Tensor] | None:
    """(λ, w) with every task of `support` improving equally and ‖d − g₀‖ = radius, or None."""
    if not support:
        return None
    g_s = gram[support][:, support]
    ones = torch.ones(len(support), dtype=gram.dtype)
    solved, info = torch.linalg.solve_ex(g_s, torch.stack([ones, a[support]], dim=1))
    if int(info) != 0 or not bool(torch.isfinite(solved).all()):
        return None
    p, q = solved[:, 0], solved[:, 1]
    sum_p, sum_q = float(p.sum()), float(q.sum())
    disc = sum_q**2 - sum_p * (float(a[support] @ q) - radius**2)
    if sum_p <= 0.0 or disc <= 0.0:
        return None
    lam = math.sqrt(disc)
    nu = (lam + sum_q) / sum_p
    w = torch.zeros_like(a)
    w[support] = (nu * p - q) / lam
    return lam, w


def _certified(gram: Tensor, a: Tensor, lam: float, w: Tensor) -> bool:
    """Whether (λ, w) satisfies the optimality conditions: w on the simplex and every task improving by at
    least the improvement of the tasks in w's support."""
    pull = gram @ w
    improvement = a + lam * pull  # g_t . d for d = g_0 + lam g_w
    scale = float(a.abs().max() + lam * pull.abs().max())
    inside = improvement[w > 0]
    nu = float(inside.min())
    return (
        bool(w.min() >= -KKT_TOL)
        and float(inside.max()) - nu <= KKT_TOL * scale  # the tasks in the support improve equally
        and float(improvement.min()) >= nu - KKT_TOL * scale  # and the others at least as much
    )


def conflict_averse_dual(gram: Tensor, c: float, zero_tol: float = 1e-12) -> tuple[float, Tensor]:
    """(λ, w*) of CAGrad for the float64 CPU Gram matrix `gram` [T, T]: d = g₀ + λ g_w*.

    Rows whose norm is below `zero_tol` times the largest get w* = 0 (see the module docstring); λ = 0
    where there is nothing to solve (c = 0, g₀ = 0, or every row zero).
    """
    num = gram.shape[0]
    w_all = torch.zeros(num, dtype=gram.dtype)
    a_all = gram.mean(dim=1)
    g0_sq = float(a_all.mean())
    radius = c * math.sqrt(max(g0_sq, 0.0))
    norms_sq = gram.diagonal()
    keep = (norms_sq > zero_tol**2 * norms_sq.max()).nonzero().flatten()
    if radius <= 0.0 or len(keep) == 0:
        return 0.0, w_all
    gram, a = gram[keep][:, keep], a_all[keep]
    lam, lo, hi = c, 0.0, math.inf  # lam = c is exact when all task gradients are equal
    w = None
    for _ in range(MAX_ROUNDS):
        shifted = g0_sq + lam * (a[:, None] + a[None, :]) + lam * lam * gram  # Gram of g_0 + lam g_t
        w = min_norm_weights(shifted, init=w)
        reach = lam * math.sqrt(max(float(w @ gram @ w), 0.0))  # ||d - g_0||
        if abs(reach - radius) <= 1e-12 * radius:
            break
        lo, hi = (lam, hi) if reach < radius else (lo, lam)
        support = (w > 0).nonzero().flatten().tolist()
        exact = _closed_form(gram, a, radius, support)
        if exact is not None and bool((exact[1] < 0).any()):  # a stray vertex: try without it
            exact = _closed_form(gram, a, radius, (exact[1] > 0).nonzero().flatten().tolist())
        if exact is not None and _certified(gram, a, *exact):
            lam, w = exact[0], exact[1].clamp_min(0.0)
            w = w / w.sum()
            break
        if exact is not None and lo < exact[0] < hi:
            lam = exact[0]
        else:
            lam = 2.0 * lam if math.isinf(hi) else 0.5 * (lo + hi)
    w_all[keep] = w
    return lam, w_all


class CAGrad(GradientWeighting):
    direction_is_weighted_sum = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        c: float = 0.4,
        rescale: bool = True,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        if c < 0:
            raise ConfigError(f"weighting.c: must be >= 0; got {c}")
        self.c = float(c)
        self.rescale = rescale

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        lam, w = conflict_averse_dual(gram, self.c, zero_tol=torch.finfo(grads.dtype).eps)
        weights = 1.0 / len(grads) + lam * w
        if self.rescale:
            weights = weights / (1.0 + self.c**2)
        return self.apply_weights(weights, grads)
