"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive Loss
Balancing in Deep Multitask Networks", ICML 2018).

Learnable task weights w (the ``weighting`` parameter group, initialised to 1) are tuned so that each
task's gradient norm on the last shared layer W follows its relative training rate. Per step, with L_t(0)
the losses of the first step (a buffer) and alpha the asymmetry:

    n_t = || d L_t / d W ||,        G_t = w_t * n_t                      (weighted gradient norms)
    r_t = (L_t / L_t(0)) / mean_j (L_j / L_j(0))                         (inverse training rate)
    target_t = mean_j(G_j) * r_t^alpha                                   (held constant)
    L_grad = sum_t | G_t - target_t |,   d L_grad / d w_t = sign(G_t - target_t) * n_t

That gradient is written into ``w.grad`` and the optimizer steps w; the model descends
sum_t w_t * L_t with w held constant (so the objective does not also move w). At the start of each step
the weights are clamped to be positive and renormalised to sum to T, so the weights applied always sum
to T. A task that trains more slowly (larger r_t) gets a larger target, hence a larger weight.

W is the model's ``last_shared_parameters()``, kept by :meth:`attach`; the T extra gradients pass only
through the heads and that layer. Architectures that share nothing (single_task) have no W and are
refused. Without an attached model (a unit test calling ``combine`` alone) the weights are applied but
not learned.
"""

from __future__ import annotations

from collections.abc import Mapping

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
        with torch.no_grad():
            self.weights.clamp_(min=MIN_WEIGHT)
            self.weights.mul_(self.num_tasks / self.weights.sum())
        w = self.weights.detach().to(losses.dtype)
        if self.shared_layer and losses.requires_grad:
            self.weights.grad = self._weight_grad(losses, w).to(self.weights.dtype)
        self.last_weights = w.float()
        return (w * losses).sum()

    def _weight_grad(self, losses: Tensor, w: Tensor) -> Tensor:
        """sign(G_t - target_t) * n_t, the gradient of sum_t |G_t - target_t| with respect to w_t."""
        norms = torch.stack([self._grad_norm(losses[t]) for t in range(self.num_tasks)]).to(losses)
        first = torch.where(self.has_initial, self.initial_losses.to(losses), losses.detach())
        self.initial_losses.copy_(first)  # L(0): the first step's losses, kept from then on
        self.has_initial.fill_(True)
        ratio = losses.detach() / first.clamp_min(torch.finfo(losses.dtype).tiny)
        inverse_rate = ratio / ratio.mean()
        g = w * norms
        target = g.mean() * inverse_rate**self.alpha
        return torch.sign(g - target) * norms

    def _grad_norm(self, loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, self.shared_layer, retain_graph=True, allow_unused=True)
        squares = [g.detach().pow(2).sum() for g in grads if g is not None]
        return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(())

    def summary(self) -> dict:
        """The weights the next step would apply (clamped and renormalised like in :meth:`combine`)."""
        w = self.weights.detach().clamp(min=MIN_WEIGHT)
        w = w * (self.num_tasks / w.sum())
        return {"weights": dict(zip(self.task_names, w.tolist(), strict=True))}
