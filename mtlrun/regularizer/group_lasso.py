"""Group lasso over the task layers: a block-sparse penalty that makes the tasks select features together.

After Argyriou, Evgeniou & Pontil (2008), "Convex multi-task feature learning" (Machine Learning 73), whose
(2,1)-norm regulariser ‖A‖₂,₁ = Σᵢ ‖aⁱ‖₂ over the rows aⁱ of the matrix A = [a_1 … a_T] of the T tasks'
weight vectors makes whole rows zero: feature i is then used by every task or by none.

**The penalty.** Let W_1 … W_T ∈ ℝ^{out×in} be the tasks' weight matrices of the chosen task layer (each
head's first Linear by default; `MTLModel.task_layers`), stacked into A ∈ ℝ^{T×out×in}, and λ = `strength`.
With `over: input` a group is one input feature i, holding its weights across every output unit and task:

  λ Σᵢ ‖A[:, :, i]‖₂ = λ Σᵢ (Σ_t Σ_o W_t[o, i]²)^{1/2},

so an input feature of the layer (a unit of the shared representation, for the heads' first layer) is read
by all tasks or by none. With `over: output` a group is one output unit o, A[:, o, :]: the hidden unit o of
every head is kept or dropped together. The penalty is not squared, so its gradient λ A_g / ‖A_g‖ has the
same size λ for every group however small, which drives unused groups to zero.

**Diagnostic.** `regularizer/features_in_use` (`over: input`) or `regularizer/units_in_use`
(`over: output`): the number of groups whose norm exceeds `threshold`, at each evaluation, when
`group_norms.csv`, listing every group's norm, is rewritten.

**Config keys.**

- `strength`: λ ≥ 0.
- `layer`: which group of task layers, by depth: 0 = each head's first Linear (it reads the shared
  features), -1 = the output layer (only when every task has the same number of outputs).
- `over`: `input` (the paper's rows: features) or `output` (hidden units).
- `threshold`: a group counts as in use while its norm exceeds this.
- `proximal`: true: a proximal step after each optimizer step (exact zeros); false: a subgradient term of
  the objective.

**Minimising it.** By default (`proximal: false`) the term is part of the objective and the run's optimiser
minimises it with the rest (a subgradient step; its subgradient at a zero group is taken as 0): unused groups
then hover near zero, about the learning rate with Adam, and `threshold` decides which count as in use. With
`proximal: true` the penalty takes no part in the gradient: after each optimizer step the groups are shrunk
by the penalty's proximal operator, block soft-thresholding g ← g · max(0, 1 − ηλ/‖g‖₂), with η the learning
rate the layers' parameter groups had at that step (the mean of the T tasks' rates when they differ). A
group whose norm falls below ηλ becomes exactly zero for every task at once, which a gradient step never
reaches; `penalty()` still returns the term, detached, for the `model/regularizer` row. The two forms weigh
λ differently under Adam: Adam rescales the subgradient λ·g/‖g‖ to steps of about the learning rate, while
the proximal shrinkage is ηλ per step, so under Adam the proximal form needs a far larger λ to prune (under
SGD both take ηλ).

**Departures from the paper.** Argyriou et al. learn a shared orthogonal feature map U together with the
sparse A and solve the convex problem by alternating minimisation; here the features are the network's own
(the layer's inputs), no rotation U is learned, and the penalty is minimised with the rest of the network.
The proximal step is exact proximal gradient descent under SGD; under Adam it ignores Adam's per-coordinate
scaling (a common approximation: the shrinkage uses the plain learning rate). Biases are not penalised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mtlrun.errors import check_choice
from mtlrun.regularizer.base import TaskLayerRegularizer, check_strength
from mtlrun.tasks import Task
from mtlrun.trainer.outputs import atomic_write_text

OVER = ("input", "output")


class GroupLasso(TaskLayerRegularizer):
    """λ Σ_g ‖A_g‖₂ over the groups g (input features or output units) of the stacked task layers."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        strength: float = 1e-3,
        layer: int = 0,
        over: str = "input",
        threshold: float = 1e-2,
        proximal: bool = False,
    ) -> None:
        check_choice("regularizer.over", over, OVER)
        super().__init__(tasks, layer)
        self.strength = check_strength("regularizer.strength", strength)
        self.threshold = check_strength("regularizer.threshold", threshold)
        self.over = over
        self.proximal = bool(proximal)
        self._group_of: dict[int, int] = {}  # id of a layer's weight -> index of its optimizer param group

    def group_norms(self) -> Tensor:
        """[G]: the norm of each group, G = in (`over: input`) or out (`over: output`)."""
        dims = (0, 1) if self.over == "input" else (0, 2)
        return torch.linalg.vector_norm(self.stacked(), dim=dims)

    def penalty(self) -> Tensor:
        value = self.strength * self.group_norms().sum()
        return value.detach() if self.proximal else value  # proximal: logged here, applied in after_step

    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """`proximal`: block soft-thresholding of every group, g ← g · max(0, 1 − ηλ / ‖g‖), with η the mean
        learning rate of the T layers' parameter groups at this step."""
        if not self.proximal or self.strength == 0:
            return
        weights = [self.layers[t].weight for t in self.task_names]
        if not self._group_of:
            self._group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        rate = sum(optimizer.param_groups[self._group_of[id(w)]]["lr"] for w in weights) / len(weights)
        with torch.no_grad():
            norms = self.group_norms()
            keep = (1 - rate * self.strength / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
            for w in weights:
                w.mul_(keep if self.over == "input" else keep[:, None])

    def diagnostics(self) -> dict[str, float]:
        with torch.no_grad():
            in_use = int((self.group_norms() > self.threshold).sum())
        name = "features" if self.over == "input" else "units"
        return {f"regularizer/{name}_in_use": float(in_use)}

    def write(self, folder: Path, plots: bool) -> None:
        with torch.no_grad():
            norms = self.group_norms().tolist()
        lines = [f"{self.over},norm"] + [f"{i},{norm!r}" for i, norm in enumerate(norms)]
        atomic_write_text(folder / "group_norms.csv", "\n".join(lines) + "\n")
