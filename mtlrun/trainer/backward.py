"""From per-task losses to gradients in ``.grad``, for both families of weighting methods.

Loss-based methods give one scalar: one backward pass. Gradient-based methods need the [T, P] matrix of
per-task gradients of the shared parameters: T backward passes through the shared part (the graph is kept
between them), then the method's direction is written into the shared parameters' ``.grad``, and one more
backward of the summed losses, restricted to task-owned parameters, gives each head its own task's
gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlrun.architecture.base import MTLModel
from mtlrun.weighting.base import Weighting


def backward_passes_per_step(weighting: Weighting, num_tasks: int) -> int:
    return num_tasks + 1 if weighting.needs_task_grads else 1


def per_task_gradients(losses: Tensor, params: list[torch.nn.Parameter]) -> Tensor:
    """[T, P]: row t is the gradient of losses[t] with respect to ``params``, flattened."""
    rows = []
    for t in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).flatten()
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def write_flat_grad(direction: Tensor, params: list[torch.nn.Parameter]) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = direction[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n


def backward(losses: Tensor, weighting: Weighting, model: MTLModel) -> Tensor:
    """Fill ``.grad`` of the model and weighting parameters; returns the scalar objective (for logging)."""
    if not weighting.needs_task_grads:
        objective = weighting.combine(losses)
        objective.backward()
        return objective.detach()
    shared = model.shared_parameters()
    if shared:  # designs that share nothing (single_task) have no per-task gradients to balance
        grads = per_task_gradients(losses, shared)
        write_flat_grad(weighting.aggregate(grads), shared)
    owned = model.task_owned_parameters()
    total = losses.sum()
    if owned:
        torch.autograd.backward(total, inputs=owned)
    return total.detach()
