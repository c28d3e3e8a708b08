"""MGDA, multi-task learning as multi-objective optimisation (Sener & Koltun, "Multi-Task Learning as
Multi-Objective Optimization", NeurIPS 2018).

The update is the minimum-norm point of the convex hull of the (optionally normalised) task gradients.
Either it is 0 (the shared parameters are Pareto-stationary: no direction decreases every loss) or −d
decreases every task's loss to first order.

**Update rule.**

```text
α = argmin_(α ∈ simplex) ‖Σ_t α_t ĝ_t‖²,        ĝ_t = g_t / n_t
d = Σ_t α_t g_t            (combine: original;   `last_weights` = α)
d = Σ_t α_t ĝ_t            (combine: normalised; `last_weights` = α / n)
```

The optimality conditions of the min-norm point d̂ = Σ_t α_t ĝ_t are ĝ_tᵀd̂ ≥ ‖d̂‖² for every t, with
equality where α_t > 0. Both ways of combining agree when every n_t = 1. For two tasks the solution is the
point of the segment closest to the origin, α_1 = clip((ĝ_2 − ĝ_1)ᵀĝ_2 / ‖ĝ_1 − ĝ_2‖², 0, 1). A zero
gradient puts the origin in the hull, so d = 0 on that step.

**Solver.** Everything works on the T×T Gram matrix M of the normalised gradients. With away steps (the
default) the answer comes first from one non-negative quadratic programme, solved exactly by block principal
pivoting (`mtlrun.weighting.base.nonnegative_qp_batch`, a few T×T linear solves):

```text
y = argmin_(y ≥ 0) ½ yᵀMy − 1ᵀy,        α = y / Σ_t y_t
```

whose KKT conditions (My ≥ 1, with equality where y_t > 0) are, divided by Σ_t y_t, the optimality conditions
above. It is kept when it passes them to `tol`. A zero gradient is the min-norm point itself (weight 1 on
it). The programme has no solution when the hull contains the origin otherwise (opposite gradients), and its
systems are singular for dependent gradients (equal gradients, rank below T): there M + 11ᵀ replaces M
(a bounded programme whose conditions My ≥ (1 − Σ_t y_t)·1 give the same α), solved one variable at a time
by the Lawson–Hanson method, which sets dependent columns aside. Where neither answer passes, and always with
`away_steps: false`, Frank-Wolfe over M (the paper's Algorithm 2) gives the answer. From α = 1/T, step
towards the vertex e_j with the smallest (Mα)_j, by the exact minimiser of the norm on the segment between
two points (the paper's Algorithm 1): with θ = Σ_t α_t ĝ_t,

```text
γ = clip((θᵀθ − θᵀĝ_j) / ‖θ − ĝ_j‖², 0, 1),        α ← (1 − γ) α + γ e_j
```

Plain Frank-Wolfe zig-zags (sublinear convergence) when the min-norm point lies on a face of the simplex,
the usual case; away steps (Lacoste-Julien & Jaggi, NeurIPS 2015) also move away from the worst vertex in
use, with the same exact line search, which converges linearly and sets unused weights exactly to 0. The
solver stops when both optimality gaps are below `tol` relative to ‖θ‖², or earlier when the exact minimum
on the face in use (one (k+1)×(k+1) linear system, tried every few iterations and after the last) passes
the optimality conditions: the answer is then exact to rounding. CAGrad uses the same solver (both parts).

**Options.**

- `normalisation`: the n_t that divides each task gradient: `none` (1), `l2` (‖g_t‖), `loss` (L_t) or
  `loss+` (L_t · ‖g_t‖).
- `combine`: `original` weighs the original gradients by α (the task losses are scaled by α);
  `normalised` weighs the normalised gradients.
- `max_iter`: the most Frank-Wolfe iterations.
- `tol`: the tolerance on the optimality gaps, relative to ‖θ‖² (Frank-Wolfe's stopping rule, and the test
  the exact answer must pass).
- `away_steps`: the exact programme first, and Frank-Wolfe also steps away from the worst vertex in use;
  false is the paper's plain Frank-Wolfe.
- `grad_source`: `shared_params` (MGDA) or `representation` (gradients of the shared representation: the
  paper's MGDA-UB).
- `update_every`: solve every k steps and reuse α in between.

**Losses of zero.** With `loss` or `loss+`, a task whose loss is 0 and whose gradient is 0 (a batch with no
labelled row for it: the masked loss is exactly 0 with a zero gradient) has nothing to normalise; its
normalised gradient is the zero vector, exactly as under `none` and `l2`, so that step leaves the shared
parameters where they are. A loss ≤ 0 with a non-zero gradient cannot normalise it (the division would
flip or blow up the gradient) and stops the run with a `TrainingError` naming the task.

**Departures from the paper.** The paper normalises nothing; the normalisations and the two ways of
combining come from implementations (`original` from the authors' code, which scales the task losses by α;
`normalised` from LibMTL). The exact programme, away steps, the exact face minimum and the stopping rule
are additions to the paper's Frank-Wolfe: they reach its answer faster and more exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, TrainingError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, gram_matrix, nonnegative_qp, nonnegative_qp_batch

NORMALISATIONS = ("none", "l2", "loss", "loss+")
COMBINE = ("original", "normalised")


def _face_minimum(gram: Tensor, alpha: list[float], tol: float) -> Tensor | None:
    """The exact min-norm point on the face spanned by the support of `alpha`, when it is the optimum.

    Minimising over the affine hull of the support S is a linear system, [M_S 1; 1' 0] [x; -nu] = [0; 1]
    (every point of S at the same dot product with the solution). When x > 0 and no other vertex has a
    smaller dot product, x satisfies the optimality conditions: the optimum, exactly, once Frank-Wolfe has
    found the right face, however slowly its own iterates would have converged on it.
    """
    support = [t for t, a in enumerate(alpha) if a > 0.0]
    k = len(support)
    bordered = torch.ones(k + 1, k + 1, dtype=gram.dtype)
    bordered[:k, :k] = gram[support][:, support]
    bordered[k, k] = 0.0
    rhs = torch.zeros(k + 1, dtype=gram.dtype)
    rhs[k] = 1.0
    solution, info = torch.linalg.solve_ex(bordered, rhs)
    x = torch.zeros(len(alpha), dtype=gram.dtype)
    x[support] = solution[:k]
    if int(info) != 0 or not bool(torch.isfinite(x).all()) or bool((x[support] <= 0).any()):
        return None
    return x if _is_min_norm_point(gram, x, tol) else None


def _is_min_norm_point(gram: Tensor, x: Tensor, tol: float) -> bool:
    """Whether simplex weights x meet the optimality conditions of the min-norm point to ``tol``: every
    vertex has a dot product with θ = Σ_t x_t g_t of at least ‖θ‖², those in use (x_t > 0) of exactly ‖θ‖²,
    up to tol·‖θ‖² plus the rounding of the dot products (which alone remains when θ = 0)."""
    dots = gram @ x
    sq = float(x @ dots)
    slack = tol * sq + 16 * len(gram) * torch.finfo(gram.dtype).eps * float(gram.diagonal().max())
    return float(dots.min()) >= sq - slack and float(dots[x > 0].max()) <= sq + slack


def _exact_min_norm(gram: Tensor, tol: float) -> Tensor | None:
    """The min-norm weights from a non-negative quadratic programme, or None where it gives none that passes
    `_is_min_norm_point`.

    With y = argmin_(y ≥ 0) ½ yᵀMy − 1ᵀy, the KKT conditions My ≥ 1 (= 1 where y > 0) make α = y / Σ_t y_t
    meet Mα ≥ αᵀMα (= where α > 0), the min-norm conditions; M is scaled to a unit largest diagonal first.
    Block principal pivoting solves it unless a system is singular: the hull holds the origin (the programme
    is then unbounded) or the gradients are dependent. Then M + 11ᵀ replaces M: that programme is bounded,
    and its conditions My ≥ (1 − Σy)·1 give the same α; Lawson–Hanson (`nonnegative_qp`) solves it one
    variable at a time, setting dependent columns aside. A zero gradient is the answer itself."""
    diagonal = gram.diagonal()
    zero = (diagonal <= 0).nonzero().flatten()
    if len(zero):  # a zero gradient is the origin itself: all the weight on it
        alpha = torch.zeros_like(diagonal)
        alpha[zero[0]] = 1.0
        return alpha
    c = gram / float(diagonal.max())
    y, solved, _ = nonnegative_qp_batch(c, torch.full((1, len(c)), -1.0, dtype=c.dtype))
    y = y[0]
    if not bool(solved[0]):
        y = torch.tensor(nonnegative_qp((c + 1.0).tolist(), [-1.0] * len(c))[0], dtype=c.dtype)
    total = float(y.sum())
    if not total > 0.0:
        return None
    x = y / total
    return x if _is_min_norm_point(gram, x, tol) else None


def min_norm_weights(
    gram: Tensor,
    max_iter: int = 250,
    tol: float = 1e-10,
    away_steps: bool = True,
    init: Tensor | None = None,
    polish_every: int = 10,
) -> Tensor:
    """Weights on the simplex of the minimum-norm point of the convex hull of T points, from their float64
    Gram matrix [T, T] (CPU).

    With away steps, the exact programme comes first (`_exact_min_norm`). Where it has no answer, Frank-Wolfe
    with exact line search and away steps; with `away_steps=False`, plain Frank-Wolfe only. Frank-Wolfe runs
    in plain floats (T is small, so Python arithmetic over the T×T matrix beats launching tensor operations)
    from `init` (uniform by default), and tries the exact minimum on the face in use every `polish_every`
    iterations (`_face_minimum`).
    """
    if away_steps:
        exact = _exact_min_norm(gram, tol)
        if exact is not None:
            return exact
    n = len(gram)
    rows = gram.tolist()
    alpha = init.tolist() if init is not None else [1.0 / n] * n
    m_alpha = [sum(r[k] * alpha[k] for k in range(n)) for r in rows]  # M alpha: theta . g^_t
    for iteration in range(max_iter):
        sq = sum(a * m for a, m in zip(alpha, m_alpha, strict=True))  # ||theta||^2
        if sq <= 0.0:
            break  # the origin is in the hull
        toward = min(range(n), key=m_alpha.__getitem__)
        fw_gap = sq - m_alpha[toward]
        away = max((t for t in range(n) if alpha[t] > 0.0), key=m_alpha.__getitem__)
        away_gap = m_alpha[away] - sq if away_steps else 0.0
        if max(fw_gap, away_gap) <= tol * sq:
            break
        if iteration % polish_every == polish_every - 1:
            exact = _face_minimum(gram, alpha, tol)
            if exact is not None:
                return exact
        if fw_gap >= away_gap:  # towards g^_j: min over gamma of ||(1 - gamma) theta + gamma g^_j||
            curvature = sq - 2.0 * m_alpha[toward] + rows[toward][toward]
            if curvature <= 0.0:
                break
            gamma = min(1.0, fw_gap / curvature)
            alpha = [(1.0 - gamma) * a for a in alpha]
            alpha[toward] += gamma
            column = [r[toward] for r in rows]
            m_alpha = [(1.0 - gamma) * m + gamma * c for m, c in zip(m_alpha, column, strict=True)]
        else:  # away from g^_v: theta + gamma (theta - g^_v), as far as alpha_v >= 0 allows
            curvature = sq - 2.0 * m_alpha[away] + rows[away][away]
            if curvature <= 0.0:
                break
            gamma_max = alpha[away] / (1.0 - alpha[away])
            gamma = min(gamma_max, away_gap / curvature)
            alpha = [(1.0 + gamma) * a for a in alpha]
            alpha[away] = 0.0 if gamma == gamma_max else alpha[away] - gamma  # a drop step
            column = [r[away] for r in rows]
            m_alpha = [(1.0 + gamma) * m - gamma * c for m, c in zip(m_alpha, column, strict=True)]
    else:  # out of iterations: the face in use may still give the exact optimum
        exact = _face_minimum(gram, alpha, tol)
        if exact is not None:
            return exact
    return torch.tensor(alpha, dtype=gram.dtype)


class MGDA(GradientWeighting):
    direction_is_weighted_sum = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        normalisation: str = "none",
        combine: str = "original",
        max_iter: int = 250,
        tol: float = 1e-10,
        away_steps: bool = True,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        check_choice("weighting.normalisation", normalisation, NORMALISATIONS)
        check_choice("weighting.combine", combine, COMBINE)
        if max_iter < 1:
            raise ConfigError(f"weighting.max_iter: must be >= 1; got {max_iter}")
        if tol <= 0:
            raise ConfigError(f"weighting.tol: must be > 0; got {tol}")
        self.normalisation = normalisation
        self.combine = combine
        self.max_iter = max_iter
        self.tol = tol
        self.away_steps = away_steps

    def normalisers(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """[T] n_t (float64, on the Gram matrix's device) that divide each task gradient. A zero gradient
        gets n_t = 1: any positive n_t leaves it the zero vector, and 0 / 0 would not."""
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        ones = torch.ones_like(norms)
        if self.normalisation == "none":
            return ones
        if self.normalisation == "l2":
            return torch.where(norms > 0, norms, ones)
        if losses is None:
            raise ValueError(
                f"MGDA normalisation '{self.normalisation}' divides by the task losses: "
                "pass them, aggregate(grads, losses)"
            )
        losses = losses.detach().to(gram.device, gram.dtype)
        unusable = (losses <= 0) & (norms > 0)
        if bool(unusable.any()):
            bad = {self.task_names[t]: float(losses[t]) for t in unusable.nonzero().flatten().tolist()}
            raise TrainingError(
                f"weighting=mgda with normalisation={self.normalisation} divides each task's gradient by "
                f"its loss, but task(s) {bad} have a loss <= 0 and a non-zero gradient, which that "
                "division would flip or blow up; use weighting.normalisation=l2 (or none), or a loss that "
                "stays positive"
            )
        scale = losses if self.normalisation == "loss" else losses * norms
        return torch.where(scale > 0, scale, ones)

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        scale = self.normalisers(gram, losses)
        normalised = gram / scale[:, None] / scale[None, :]  # two divisions: n_i n_j may underflow
        weights = min_norm_weights(normalised, self.max_iter, self.tol, self.away_steps)
        if self.combine == "normalised":
            weights = weights / scale
        return self.apply_weights(weights, grads)
