"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman & Finn, NeurIPS 2020).

Each task gradient g_i is, in turn, projected onto the normal plane of every other task's original
gradient g_j it conflicts with, the other tasks taken in a random order (paper, Algorithm 1):

    g_i^PC <- g_i;   for j in shuffle(tasks other than i):   if g_i^PC . g_j < 0:
                                                              g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j

and the update is the sum of the projected gradients (the paper and the authors' code; ``reduction=mean``
divides by T, as the popular Pytorch-PCGrad port does by default). On two conflicting tasks:
d = g_1 - (g_1.g_2/||g_2||^2) g_2 + g_2 - (g_2.g_1/||g_1||^2) g_1.

Every g_i^PC is a combination sum_j C_ij g_j of the original gradients, and every dot product it needs is
(C G)_ij with G the T x T Gram matrix, so the projections run on T x T matrices (all tasks at once, one
position of their random orders per round) and the direction is sum_j w_j g_j with w = 1' C: a weighted
sum of the task gradients, with exact weights. The random orders come from torch's global generator.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import check_choice
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting

REDUCTIONS = ("sum", "mean")


class PCGrad(GradientWeighting):
    direction_is_weighted_sum = True
    randomized = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        reduction: str = "sum",
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        check_choice("weighting.reduction", reduction, REDUCTIONS)
        self.reduction = reduction

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        num = len(grads)
        gram = grads @ grads.T
        sq_norms = gram.diagonal().clamp_min(torch.finfo(grads.dtype).tiny)
        keys = torch.rand(num, num, device=grads.device)
        keys.fill_diagonal_(2.0)  # a task never projects against itself: last in its order, never reached
        order = keys.argsort(dim=1)[:, : num - 1]  # row i: the other tasks, shuffled
        coef = torch.eye(num, dtype=grads.dtype, device=grads.device)  # g_i^PC = sum_j coef[i, j] g_j
        dots = gram.clone()  # dots[i, j] = g_i^PC . g_j
        rows = torch.arange(num, device=grads.device)
        for k in range(num - 1):
            other = order[:, k]
            dot = dots[rows, other]
            step = torch.where(dot < 0, dot / sq_norms[other], torch.zeros_like(dot))
            coef[rows, other] -= step
            dots -= step[:, None] * gram[other]
        weights = coef.sum(dim=0)
        if self.reduction == "mean":
            weights = weights / num
        self.last_weights = weights
        return weights @ grads

    def expected_direction_when_equal(self, g: Tensor) -> Tensor:
        """Equal gradients never conflict: the sum T g (``reduction=sum``) or g (``mean``)."""
        return g * len(self.task_names) if self.reduction == "sum" else g
