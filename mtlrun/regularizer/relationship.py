"""Task relationship learning: a matrix-variate normal prior on the stacked task layers, whose task
covariance Ω is re-estimated in closed form during training and tells which tasks the model finds related.

After Long, Cao, Wang & Yu (2017), "Learning Multiple Tasks with Multilinear Relationship Networks"
(NeurIPS; its first version: Long & Wang (2015), "Learning Multiple Tasks with Deep Relationship Networks",
arXiv:1506.02117), which put a tensor-normal prior on the task-specific layers of a deep network and learn
the covariances of its modes with the network; the closed-form task covariance used here is that of Zhang &
Yeung (2010), "A Convex Formulation for Learning Task Relationships in Multi-Task Learning" (UAI, MTRL).

**The penalty.** Let w_1 … w_T ∈ ℝ^D be the tasks' weight matrices of the chosen task layer, flattened
(D = out · in; each head's first Linear by default, `MTLModel.task_layers`), W = [w_1 … w_T] ∈ ℝ^{D×T} and
λ = `strength`. The prior W ~ MN(0, I_D ⊗ Ω) gives the negative log-likelihood term

  λ tr(W Ω⁻¹ Wᵀ) = λ Σ_{s,t} (Ω⁻¹)_{st} w_sᵀ w_t,

with Ω held fixed (detached) between updates: its gradient 2λ W Ω⁻¹ pulls each task's weights toward those
of the tasks Ω correlates it with. Every `update_every` steps from step 1, Ω is re-estimated from the
current weights (detached) as MTRL's minimiser of tr(W Ω⁻¹ Wᵀ) over {Ω ≻ 0, tr Ω = 1}:

  Ω = (WᵀW + εI)^{1/2} / tr((WᵀW + εI)^{1/2}),

computed from the eigendecomposition of the T × T matrix WᵀW + εI (ε = `epsilon` keeps Ω invertible when
tasks coincide). At that Ω the penalty is λ (tr (WᵀW + εI)^{1/2})², the squared trace norm of W: it favours
task layers that span few directions, i.e. related tasks. Ω starts as I/T (unrelated tasks).

**Diagnostic.** Ω as task correlations ρ_st = Ω_st / (Ω_ss Ω_tt)^{1/2}: rows `regularizer/corr/<s>~<t>` at
each evaluation, and `task_relationship.csv` (the T × T matrix with task names), rewritten at each
evaluation; at the last epoch, with `trainer.plots`, `task_relationship.png` (a heatmap), so a user can read which tasks the model finds related.

**Config keys.**

- `strength`: λ ≥ 0.
- `update_every`: steps between two estimates of Ω.
- `epsilon`: ε > 0 added to WᵀW before the square root.
- `layer`: which group of task layers, by depth (0 = each head's first Linear).

**Departures from the paper.** MRN places a tensor-normal prior on the D₁ × D₂ × T tensor of a layer's
weights with a covariance per mode (input features, output features, tasks) and estimates all three by the
flip-flop algorithm (maximum likelihood, re-estimated at every step of the network's optimiser). Here the
feature covariances are the identity, only the task covariance is learned, and it is MTRL's trace-normalised
square-root estimate (the minimiser of the convex problem, which stays well defined whatever the weights'
scale; the unconstrained maximum-likelihood WᵀW/D would make the penalty a constant D·T at each update), every
`update_every` steps. MRN regularises several task-specific layers (including the classifiers); here one
group of task layers is, and biases are not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.regularizer.base import TaskLayerRegularizer, check_strength, check_update_every
from mtlrun.tasks import Task
from mtlrun.trainer.outputs import atomic_write_text

log = logging.getLogger("mtlrun")

CSV = "task_relationship.csv"
PNG = "task_relationship.png"


def task_covariance(vectors: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """MTRL's Ω = (V Vᵀ + εI)^{1/2} / tr(·) of the [T, D] task ``vectors`` (rows w_t), and Ω⁻¹, in float64."""
    v = vectors.double()
    gram = v @ v.T + epsilon * torch.eye(len(v), dtype=v.dtype, device=v.device)
    values, vectors_ = torch.linalg.eigh(gram)
    root = values.clamp_min(epsilon).sqrt()
    trace = root.sum()
    omega = (vectors_ * (root / trace)) @ vectors_.T
    inverse = (vectors_ * (trace / root)) @ vectors_.T
    return omega, inverse


def correlations(omega: Tensor) -> Tensor:
    """ρ_st = Ω_st / (Ω_ss Ω_tt)^{1/2}."""
    scale = omega.diagonal().sqrt()
    return omega / (scale.unsqueeze(0) * scale.unsqueeze(1))


class TaskRelationship(TaskLayerRegularizer):
    """λ tr(W Ω⁻¹ Wᵀ) over the stacked task layers, Ω re-estimated in closed form (module docstring)."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        strength: float = 1e-3,
        update_every: int = 50,
        epsilon: float = 1e-3,
        layer: int = 0,
    ) -> None:
        super().__init__(tasks, layer)
        self.strength = check_strength("regularizer.strength", strength)
        self.update_every = check_update_every("regularizer.update_every", update_every)
        if not epsilon > 0:
            raise ConfigError(f"regularizer.epsilon: must be > 0 (it keeps Ω invertible), got {epsilon}")
        self.epsilon = float(epsilon)
        T = len(self.task_names)
        self.omega = torch.eye(T, dtype=torch.float64) / T  # unrelated tasks until the first update
        self.omega_inv = torch.eye(T, dtype=torch.float64) * T

    def penalty(self) -> Tensor:
        vectors = self.task_vectors()
        inverse = self.omega_inv.to(vectors.device, vectors.dtype)
        return self.strength * ((vectors @ vectors.T) * inverse).sum()  # tr(Ω⁻¹ WᵀW)

    @torch.no_grad()
    def update(self) -> None:
        omega, inverse = task_covariance(self.task_vectors().detach(), self.epsilon)
        self.omega, self.omega_inv = omega.cpu(), inverse.cpu()

    def correlation_matrix(self) -> Tensor:
        return correlations(self.omega)

    def diagnostics(self) -> dict[str, float]:
        corr = self.correlation_matrix().tolist()
        names = self.task_names
        return {
            f"regularizer/corr/{names[i]}~{names[j]}": corr[i][j]
            for i in range(len(names))
            for j in range(i + 1, len(names))
        }

    def write(self, folder: Path, plots: bool) -> None:
        corr = self.correlation_matrix().tolist()
        lines = ["task," + ",".join(self.task_names)]
        lines += [
            f"{t}," + ",".join(repr(v) for v in row) for t, row in zip(self.task_names, corr, strict=True)
        ]
        atomic_write_text(folder / CSV, "\n".join(lines) + "\n")
        if plots:
            try:
                plot_relationship(corr, self.task_names, folder / PNG)
            except Exception as err:  # a plot must never fail a finished run
                log.warning("could not draw %s (%s: %s)", folder / PNG, type(err).__name__, err)

    def state_dict(self) -> dict:
        return {"omega": self.omega.clone(), "omega_inv": self.omega_inv.clone()}

    def load_state_dict(self, state: Mapping) -> None:
        self.omega, self.omega_inv = state["omega"].clone(), state["omega_inv"].clone()


def plot_relationship(corr: list[list[float]], names: list[str], path: Path) -> None:
    """A heatmap of the task correlations, each cell labelled with its value."""
    from matplotlib.figure import Figure

    size = 1.2 + 0.6 * len(names)
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(corr):
        for j, value in enumerate(row):
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", color="white" if abs(value) > 0.6 else "black"
            )
    ax.set_title("task correlation (Ω)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=100)
