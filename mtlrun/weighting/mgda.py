"""MGDA: multi-task learning as multi-objective optimisation (Sener & Koltun, NeurIPS 2018).

The update is the minimum-norm point of the convex hull of the (optionally normalised) task gradients:

    alpha = argmin_{alpha in simplex} || sum_t alpha_t g^_t ||^2,     g^_t = g_t / n_t,
    d     = sum_t alpha_t g_t                                           (combine=original)

Either d = 0 (the parameters are Pareto-stationary) or -d decreases every task loss: the optimality
conditions of the min-norm point read g^_t . d^ >= ||d^||^2 for every t, with equality where alpha_t > 0
(d^ = sum_t alpha_t g^_t).

Normalisers n_t (``normalisation``), as in the authors' code (the paper itself uses none): ``none`` 1,
``l2`` ||g_t||, ``loss`` L_t, ``loss+`` L_t ||g_t||. The authors' code scales the *original* task losses
by alpha (``combine=original``, d = sum alpha_t g_t, last_weights = alpha); LibMTL sums the normalised
gradients (``combine=normalised``, d = sum alpha_t g_t / n_t, last_weights = alpha / n). Both are the same
for ``normalisation=none``.

Solver: Frank-Wolfe over the T x T Gram matrix M of the normalised gradients (paper, Algorithm 2). From
alpha = 1/T, step towards the vertex e_j with the smallest (M alpha)_j, by the exact minimiser of the norm
on the segment between two points (paper, Algorithm 1): for theta = sum alpha_t g^_t,

    gamma = clip((theta.theta - theta.g^_j) / ||theta - g^_j||^2, 0, 1),   alpha <- (1 - gamma) alpha + gamma e_j.

Plain Frank-Wolfe zig-zags (sublinear convergence) when the min-norm point lies on a face of the
simplex, which is the usual case; ``away_steps`` (Lacoste-Julien & Jaggi, NeurIPS 2015) also move away
from the worst vertex in use, with the same exact line search, which converges linearly and sets unused
weights exactly to zero. It stops when both optimality gaps are below ``tol`` relative to ||theta||^2, or
earlier when the exact minimum on the face in use (one (k+1) x (k+1) linear system, tried every few
iterations and after the last) passes the optimality conditions: the answer is then exact to rounding.
The same solver serves CAGrad (mtlrun/weighting/cagrad.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, gram_matrix

NORMALISATIONS = ("none", "l2", "loss", "loss+")
COMBINE = ("original", "normalised")


def _face_minimum(gram: Tensor, alpha: list[float], tol: float) -> Tensor | None:
    """The exact min-norm point on the face spanned by the support of ``alpha``, when it is the optimum.

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
    dots = gram @ x
    sq = float(x @ dots)
    inside = dots[support]
    if float(dots.min()) < sq - tol * sq or float(inside.max()) > sq + tol * sq:
        return None
    return x


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

    Frank-Wolfe with exact line search (and away steps unless ``away_steps=False``), in plain floats: T is
    small, so Python arithmetic over the T x T matrix beats launching tensor operations. Every
    ``polish_every`` iterations, the exact minimum on the face in use is tried (:func:`_face_minimum`).
    """
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
        self._last_max_normaliser = 1.0

    def normalisers(self, gram: Tensor, losses: Tensor | None) -> Tensor:
        """[T] n_t (float64, on the Gram matrix's device) that divide each task gradient."""
        tiny = torch.finfo(gram.dtype).tiny
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        if self.normalisation == "none":
            return torch.ones_like(norms)
        if self.normalisation == "l2":
            return norms.clamp_min(tiny)
        if losses is None or bool((losses <= 0).any()):
            raise ValueError(
                f"MGDA normalisation '{self.normalisation}' divides by the task losses, which must be "
                f"given and positive; got {None if losses is None else losses.tolist()}"
            )
        losses = losses.detach().to(gram.device, gram.dtype)
        return losses if self.normalisation == "loss" else (losses * norms).clamp_min(tiny)

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)
        scale = self.normalisers(gram, losses)
        normalised = gram / (scale[:, None] * scale[None, :])
        weights = min_norm_weights(normalised, self.max_iter, self.tol, self.away_steps)
        if self.combine == "normalised":
            weights = weights / scale
        self._last_max_normaliser = float(scale.max())
        self.last_weights = weights.to(grads.dtype).to(grads.device)
        return self.last_weights @ grads

    def expected_direction_when_equal(self, g: Tensor) -> Tensor:
        """``g`` with ``combine=original``; with ``combine=normalised`` the min-norm point of the
        points g / n_t, which is g / max_t n_t (n_t of the last call: the losses enter it)."""
        if self.combine == "original" or self.normalisation == "none":
            return g
        if self.normalisation == "l2":
            return g / g.norm()
        return g / self._last_max_normaliser
