"""The weighting contract, for both families of methods.

* Loss-based methods (subclass `Weighting`) implement `combine(losses)`: the [T] vector of per-task
  losses in, the scalar to backpropagate out. One backward pass per step.
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
"""

from __future__ import annotations

from collections.abc import Mapping
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
