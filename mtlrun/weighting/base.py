"""The weighting contract, for both families of methods.

* Loss-based methods (subclass `Weighting`) implement `combine(losses)`: the [T] vector of per-task
  losses in, the scalar to backpropagate out. One backward pass per step. (The runner calls
  `combine_task_losses(losses, per_task)`, which is `combine(losses)` unless a method also needs the T
  losses as separate scalars, as GradNorm does.)
* Gradient-based methods (subclass `GradientWeighting`) implement `aggregate(grads, losses)`: the [T, P]
  matrix of per-task gradients in, the [P] update direction out. The runner computes that matrix only for
  them: of the shared parameters (`grad_source=shared_params`) or of the shared representation
  (`grad_source=representation`, MGDA-UB style, then one backward through the trunk). Task-owned
  parameters get the ordinary gradient of their own task's loss.

Both record the per-task weights they used in `last_weights` (logged to metrics.csv every epoch). Methods
may hold state and learnable parameters: `parameters()` land in the `weighting` optimizer group and
`state_dict()` goes into the checkpoint. The runner never looks at a method's name, only at the class
declarations below (`needs_task_grads`, `needs_shared_parameters`, `adaptive`, `grad_source`,
`update_every`, `direction_is_weighted_sum`).

Two solvers of non-negative quadratic programmes, min_(x ≥ 0) ½ xᵀCx + qᵀx with C positive semi-definite
(KKT: x ≥ 0, Cx + q ≥ 0, x ⊙ (Cx + q) = 0), serve the methods that work on the T×T Gram matrix (UPGrad's
projections, MGDA's min-norm point): `nonnegative_qp`, the Lawson–Hanson active-set method in plain floats,
one problem and one variable at a time, which sets numerically dependent columns aside; and
`nonnegative_qp_batch`, block principal pivoting for many problems sharing C, every iteration one batched
Cholesky factorisation, which leaves problems with singular systems to the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

GRAD_SOURCES = ("shared_params", "representation")
REDUCTIONS = ("sum", "mean")  # the `reduction` option of methods that sum (or average) adjusted gradients


class Weighting(nn.Module):
    needs_task_grads: ClassVar[bool] = False
    # The method acts on the gradients of shared parameters. On a design that shares none (single_task,
    # soft_sharing) it has nothing to balance: the run warns at start-up and every task trains on its own
    # loss, as with weighting=equal.
    needs_shared_parameters: ClassVar[bool] = False
    # False where the weights are fixed by the config (equal, static): reports draw such runs as points of
    # one static-weight front, which adaptive methods are compared against.
    adaptive: ClassVar[bool] = True
    # Which per-task gradients the method reads (None: it reads only the losses) and how many steps it
    # reuses its weights for; gradient-based methods take both from the config.
    grad_source: str | None = None
    update_every: int = 1

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        self.task_names = list(tasks)
        self.register_buffer("last_weights", torch.ones(len(self.task_names)))

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def attach(self, model: nn.Module) -> None:
        """Called once with the model before training; methods that read it (GradNorm) keep a reference."""

    def combine(self, losses: Tensor) -> Tensor:
        """Loss-based methods: [T] per-task losses -> scalar loss to backpropagate."""
        raise NotImplementedError(f"{type(self).__name__} is gradient-based; the runner calls aggregate()")

    def combine_task_losses(self, losses: Tensor, per_task: Sequence[Tensor]) -> Tensor:
        """What the runner calls for a loss-based method: `combine(losses)`. ``per_task`` holds the same T
        losses as the scalars they were stacked from; a method that differentiates each task's loss on its
        own (GradNorm) overrides this to start from those, so that each pass reaches only that task's part of
        the graph."""
        return self.combine(losses)

    def on_epoch_end(self, epoch: int, mean_losses: Tensor) -> None:
        """Hook for methods that keep a history of epoch-averaged losses (DWA and the like)."""

    def summary(self) -> dict:
        """Method-specific facts for summary.json (learned noise, final weights, ...)."""
        return {}


class GradientWeighting(Weighting):
    """Base of gradient-based methods.

    `grad_source`: `shared_params` (exact) or `representation` (gradients with respect to the shared
    representation, for architectures that expose one). `update_every`: recompute the method every k steps
    and reuse the last weights in between (one backward pass on those steps) — only for methods whose
    direction is a weighted sum of the task gradients (`direction_is_weighted_sum`).
    """

    needs_task_grads: ClassVar[bool] = True
    needs_shared_parameters: ClassVar[bool] = True
    direction_is_weighted_sum: ClassVar[bool] = False

    def __init__(
        self, tasks: Mapping[str, Task], grad_source: str = "shared_params", update_every: int = 1
    ) -> None:
        super().__init__(tasks)
        check_choice("weighting.grad_source", grad_source, GRAD_SOURCES)
        if update_every < 1:
            raise ConfigError(f"weighting.update_every: must be >= 1; got {update_every}")
        if update_every > 1 and not self.direction_is_weighted_sum:
            raise ConfigError(
                f"weighting.update_every: {type(self).__name__}'s direction is not a weighted sum of task "
                "gradients, so there are no weights to reuse between updates; keep update_every=1"
            )
        self.grad_source = grad_source
        self.update_every = update_every

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        """[T, P] per-task gradients (and the [T] losses, for methods that normalise by them) -> [P]
        direction. Must set `self.last_weights`."""
        raise NotImplementedError

    def apply_weights(self, weights: Tensor, grads: Tensor) -> Tensor:
        """Record `weights` ([T], any dtype and device) as `last_weights` and return the direction
        `grads.T @ weights`, computed in the gradients' dtype on their device."""
        self.last_weights = weights.to(device=grads.device, dtype=self.last_weights.dtype)
        return weights.to(device=grads.device, dtype=grads.dtype) @ grads


def gram_matrix(grads: Tensor) -> Tensor:
    """G Gᵀ as a float64 CPU tensor: solvers work on this small [T, T] matrix (half-precision gradients are
    multiplied in float32 first, so the product keeps its accuracy)."""
    work = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()
    return (work @ work.T).detach().to("cpu", torch.float64)


def cosine_matrix(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(active, norms, cosine) of a float64 Gram matrix: the mask of the non-zero rows, their norms, and the
    cosine matrix between them (unit diagonal, entries clamped to [-1, 1]). Zero gradients have no
    direction, so methods that work on cosines leave them out."""
    active = gram.diagonal() > 0
    norms = gram.diagonal()[active].sqrt()
    cosine = (gram[active][:, active] / norms[:, None] / norms[None, :]).clamp(-1.0, 1.0)
    cosine.fill_diagonal_(1.0)
    return active, norms, cosine


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


# a Cholesky pivot below this fraction of its diagonal entry marks a (numerically) dependent column
PIVOT_FLOOR = 1e-13


def nonnegative_qp_batch(c: Tensor, q: Tensor, tol: float = 1e-12, max_iter: int | None = None):
    """x_b = argmin_(x ≥ 0) ½ xᵀ c x + q_bᵀ x for every row q_b of ``q`` [B, n], all with the same symmetric
    positive semi-definite ``c`` [n, n] (float64, CPU), solved together by block principal pivoting.

    Each problem keeps a passive set F (the variables free to be positive, the others held at 0) and solves
    c_FF x_F = −q_F; its infeasible variables are those of F with x < 0 and those outside F whose gradient
    y = c x + q is below −tol. While their number keeps falling (or for up to three more tries) all of them
    change sides at once; otherwise only the last one does (the backup rule that makes the method finite).
    The B systems of an iteration are one batched Cholesky factorisation of n×n matrices (c on F × F, the
    identity elsewhere); a few iterations usually suffice, against one per active constraint for one-at-a-time
    active-set methods.

    Returns (x [B, n], solved [B] bool, solves). Where ``solved``, x meets the KKT conditions: x ≥ 0,
    y ≥ −tol, and y = 0 (to rounding) where x > 0. A problem is left unsolved, with x = 0, when a system on
    its passive set is numerically singular (a pivot below PIVOT_FLOOR of its diagonal entry: dependent
    columns of c) or after ``max_iter`` iterations (default 5n + 10); the caller solves those another way.
    ``solves`` counts the linear systems solved, summed over the problems.
    """
    batch, n = q.shape
    max_iter = 5 * n + 10 if max_iter is None else max_iter
    eye = torch.eye(n, dtype=c.dtype)
    floor = PIVOT_FLOOR * c.diagonal()  # outside F the system's diagonal is 1, far above it
    minus_q = -q
    passive = q < -tol  # the first exchange: at x = 0 the gradient is q
    fewest = passive.sum(1)  # the smallest number of infeasible variables seen so far
    chances = torch.full((batch,), 3)  # full exchanges left without a new smallest number
    failed = torch.zeros(batch, dtype=torch.bool)  # a singular system: left to the caller
    running = passive.any(1)  # a problem whose gradient at 0 is nowhere negative is solved by x = 0
    solves = torch.zeros(batch, dtype=torch.long)
    for _ in range(max_iter):
        # a problem that has stopped keeps its passive set: its solution and gradient are recomputed unchanged
        system = torch.where(passive[:, :, None] & passive[:, None, :], c, eye)
        factor, info = torch.linalg.cholesky_ex(system)
        failed |= (info != 0) | (factor.diagonal(dim1=-2, dim2=-1).square() <= floor).any(1)
        x = torch.cholesky_solve(torch.where(passive, minus_q, 0.0).unsqueeze(-1), factor).squeeze(-1)
        y = x @ c + q
        solves += running
        wrong = torch.where(passive, x < 0, y < -tol) & ~failed[:, None]
        count = wrong.sum(1)
        running = count > 0
        if not bool(running.any()):
            break
        fewer = count < fewest
        fewest = torch.minimum(count, fewest)
        chances = torch.where(fewer, 3, chances - 1)
        exchange = wrong
        if bool((chances < 0).any()):  # the backup rule: only the last infeasible variable
            position = torch.arange(n)
            last = torch.where(wrong, position, -1).argmax(1)
            exchange = torch.where((chances >= 0)[:, None], wrong, wrong & (position == last[:, None]))
        passive = passive ^ exchange
    solved = ~failed & ~running
    return torch.where(solved[:, None], x, 0.0), solved, int(solves.sum())


def per_task_values(where: str, value: float | Mapping[str, float], task_names: list[str], default: float):
    """One float per task from a config value: a number (every task) or a {task: value} mapping (tasks not
    listed get `default`); a ConfigError naming `where` for a task name that does not exist."""
    if isinstance(value, int | float):
        return [float(value)] * len(task_names)
    values = {str(k): float(v) for k, v in dict(value or {}).items()}
    unknown = set(values) - set(task_names)
    if unknown:
        raise ConfigError(f"{where}: unknown task(s) {sorted(unknown)}; tasks are {', '.join(task_names)}")
    return [values.get(t, float(default)) for t in task_names]


def effective_weights(grads: Tensor, direction: Tensor, ridge: float = 1e-12) -> Tensor:
    """Weights w with `grads.T @ w` closest to `direction` (least squares through the Gram matrix).

    Exact when the direction lies in the span of the task gradients, as it does for projection methods
    (PCGrad, GradVac); used to log per-task weights for methods that do not produce weights themselves.
    """
    gram = grads @ grads.T
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = gram.diagonal().mean().clamp_min(1e-30)
    return torch.linalg.solve(gram + ridge * scale * eye, grads @ direction)
