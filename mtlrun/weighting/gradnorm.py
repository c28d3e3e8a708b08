"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018).

Learnable loss weights w (in the `weighting` optimizer group, starting at 1) are tuned so that each task's
gradient norm on the last shared layer W follows its relative training rate: a task that trains more
slowly gets a larger target norm, hence a larger weight.

**Update rule.** Per step, with L_t(0) the losses of the first step (a buffer) and α the asymmetry:

```text
n_t = ‖∂L_t / ∂W‖,        G_t = w_t · n_t                           (weighted gradient norms)
r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))                        (inverse training rate)
target_t = mean_j(G_j) · r_t^α                                      (held constant)
L_grad = Σ_t |G_t − target_t|,      ∂L_grad / ∂w_t = sign(G_t − target_t) · n_t
```

That gradient is written into `w.grad` and the optimizer steps w; the model descends Σ_t w_t · L_t with w
held constant, so the objective does not also move w. At the start of each step the weights are clamped to
be positive and rescaled to sum to T, so the weights applied (`last_weights`) always sum to T.

W is the model's `last_shared_parameters()`, kept by `attach`; the T extra gradients pass only through the
heads and that layer, each from its own task's scalar loss (`combine_task_losses`), so through its own head
only. Architectures that share nothing (single_task) have no W: the run warns and every task trains on its
own loss. Without an attached model (a unit test calling `combine` alone) the weights
are applied but not learned.

**Options.**

- `alpha`: α, the asymmetry: 0 pulls every task toward the same gradient norm, a larger α favours the tasks
  that train slowly.
- The weights' learning rate is `optim.groups.weighting.lr`, not a key of this file.

**Departures from the paper.** The paper renormalises the weights after each optimizer step; here they are
clamped at a small positive floor and renormalised at the start of the next step, so a weight can never
reach 0 or turn negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import Weighting

MIN_WEIGHT = 1e-4  # weights are clamped here before renormalising, so none reaches 0 or goes negative


class GradNorm(Weighting):
    needs_shared_parameters = True  # the gradient norms are taken on the last shared layer

    def __init__(self, tasks: Mapping[str, Task], alpha: float = 1.5) -> None:
        super().__init__(tasks)
        if alpha < 0:
            raise ConfigError(f"weighting.alpha: must be >= 0; got {alpha}")
        self.alpha = float(alpha)
        self.weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.ones(self.num_tasks))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))
        self.shared_layer: list[nn.Parameter] = []  # a plain list: not registered, not in state_dict

    def attach(self, model: nn.Module) -> None:
        """Keep the last shared layer; a design that shares none leaves the weights at 1 (equal)."""
        self.shared_layer = list(model.last_shared_parameters())

    def combine(self, losses: Tensor) -> Tensor:
        return self.combine_task_losses(losses, list(losses.unbind()))

    def combine_task_losses(self, losses: Tensor, per_task: Sequence[Tensor]) -> Tensor:
        """`combine`, with each n_t taken from task t's own scalar loss ``per_task[t]``: its pass runs through
        task t's head and W only, not back through the stacked vector into every head."""
        with torch.no_grad():
            self.weights.clamp_(min=MIN_WEIGHT)
            self.weights.mul_(self.num_tasks / self.weights.sum())
        w = self.weights.detach().to(losses.dtype)
        if self.shared_layer and losses.requires_grad:
            self.weights.grad = self._weight_grad(losses, per_task, w).to(self.weights.dtype)
        self.last_weights = w.float()
        return (w * losses).sum()

    def _weight_grad(self, losses: Tensor, per_task: Sequence[Tensor], w: Tensor) -> Tensor:
        """sign(G_t - target_t) * n_t, the gradient of sum_t |G_t - target_t| with respect to w_t."""
        norms = torch.stack([self._grad_norm(loss) for loss in per_task]).to(losses)
        first = torch.where(self.has_initial, self.initial_losses.to(losses), losses.detach())
        self.initial_losses.copy_(first)  # L(0): the first step's losses, kept from then on
        self.has_initial.fill_(True)
        ratio = losses.detach() / first.clamp_min(torch.finfo(losses.dtype).tiny)
        inverse_rate = ratio / ratio.mean()
        g = w * norms
        target = g.mean() * inverse_rate**self.alpha
        return torch.sign(g - target) * norms

    def _grad_norm(self, loss: Tensor) -> Tensor:
        if not loss.requires_grad:
            return loss.new_zeros(())
        grads = torch.autograd.grad(loss, self.shared_layer, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(())

    def summary(self) -> dict:
        """The weights the next step would apply (clamped and renormalised as in `combine`)."""
        w = self.weights.detach().clamp(min=MIN_WEIGHT)
        w = w * (self.num_tasks / w.sum())
        return {"weights": dict(zip(self.task_names, w.tolist(), strict=True))}
