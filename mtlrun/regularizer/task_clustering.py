"""Task clustering: a penalty that pulls the tasks' layers toward their cluster's mean, with the clusters
given or found by k-means on the tasks' weights.

After Jacob, Bach & Vert (2009), "Clustered Multi-Task Learning: a Convex Formulation" (NeurIPS), whose
penalty splits the spread of the tasks' weight vectors into a mean, a between-cluster and a within-cluster
part and weighs them separately, so that tasks of one cluster end with similar weights.

**The penalty.** Let w_1 … w_T ∈ ℝ^D be the tasks' weight matrices of the chosen task layer, flattened
(D = out · in; each head's first Linear by default, `MTLModel.task_layers`), w̄ their mean, c(t) the cluster
of task t, n_c the number of tasks in cluster c and w̄_c their mean. With ε_M, ε_B, ε_W = `mean_strength`,
`between_strength`, `within_strength`:

  ε_M · T ‖w̄‖²  +  ε_B Σ_c n_c ‖w̄_c − w̄‖²  +  ε_W Σ_c Σ_{t ∈ c} ‖w_t − w̄_c‖².

The three parts add up to Σ_t ‖w_t‖² (the decomposition of the second moment), so with ε_M = ε_B = ε_W = ε
the penalty is plain weight decay ε Σ_t ‖w_t‖²; the clustered prior is ε_W > ε_B: moving a task away from its
cluster costs more than moving a whole cluster away from the others. In the paper's matrix form these are
tr(W U Wᵀ), tr(W (M − U) Wᵀ) and tr(W (I − M) Wᵀ) with U = 11ᵀ/T and M = E(EᵀE)⁻¹Eᵀ, E the T × K
assignment matrix.

**The clusters.** `assignment` fixes them (a list of lists of task names). Otherwise they are found by
k-means on the task vectors w_t (detached) every `update_every` steps, from step 1: a deterministic
farthest-point start (the first task, then repeatedly the task farthest from the centres chosen so far), then
Lloyd iterations until no task moves. Clusters are numbered by their first task in task order, so the labels
do not flicker between updates that find the same partition.

**Diagnostic.** `regularizer/cluster/<task>`: each task's cluster (0 … K − 1), and `regularizer/mean`,
`regularizer/between`, `regularizer/within`: the three parts without their ε, at each evaluation, when
`task_clusters.csv`, listing each task's cluster, is rewritten.

**Config keys.**

- `mean_strength`, `between_strength`, `within_strength`: ε_M, ε_B, ε_W ≥ 0.
- `clusters`: K, the number of clusters k-means finds (1 ≤ K ≤ T); with `assignment` null or its length.
- `assignment`: null (learn the clusters) or a list of lists of task names, every task exactly once.
- `update_every`: steps between two k-means updates (learned clusters only).
- `layer`: which group of task layers, by depth (0 = each head's first Linear).

**Departures from the paper.** Jacob et al.'s contribution is a convex relaxation: M is replaced by a matrix
in the convex set {0 ⪯ M ⪯ I, tr M = K} (a spectral norm of W), optimised with W. Here the hard-assignment
form is implemented instead (the non-convex problem the relaxation starts from), minimised by alternating:
the optimiser's steps on W with the clusters fixed, and k-means on the task vectors every `update_every`
steps (k-means minimises the within-cluster term over the assignments). The tasks are layers of a deep
network trained on their own losses rather than linear predictors, and biases are not penalised.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.regularizer.base import TaskLayerRegularizer, check_strength, check_update_every
from mtlrun.tasks import Task
from mtlrun.trainer.outputs import atomic_write_text


def cluster_terms(vectors: Tensor, labels: Tensor, clusters: int) -> tuple[Tensor, Tensor, Tensor]:
    """T ‖w̄‖², Σ_c n_c ‖w̄_c − w̄‖² and Σ_t ‖w_t − w̄_{c(t)}‖² of the [T, D] ``vectors`` with cluster
    ``labels`` [T] in 0 … clusters − 1 (an empty cluster counts for nothing)."""
    onehot = torch.nn.functional.one_hot(labels, clusters).to(vectors.dtype)  # [T, K]
    counts = onehot.sum(0)  # [K]
    centres = (onehot.T @ vectors) / counts.clamp_min(1).unsqueeze(1)  # [K, D]
    mean = vectors.mean(0)
    mean_term = len(vectors) * mean.pow(2).sum()
    between = (counts * (centres - mean).pow(2).sum(1)).sum()
    within = (vectors - centres[labels]).pow(2).sum()
    return mean_term, between, within


def kmeans(points: Tensor, clusters: int, max_iter: int = 100) -> Tensor:
    """[T] labels of a k-means partition of the rows of ``points`` (deterministic: a farthest-point start
    from row 0, Lloyd iterations until no row moves), numbered by each cluster's first row."""
    points = points.double()
    chosen = [0]
    distance = (points - points[0]).pow(2).sum(1)
    for _ in range(1, clusters):
        chosen.append(int(distance.argmax()))
        distance = torch.minimum(distance, (points - points[chosen[-1]]).pow(2).sum(1))
    centres = points[chosen].clone()
    labels = torch.cdist(points, centres).argmin(1)
    for _ in range(max_iter):
        for c in range(clusters):
            members = labels == c
            if members.any():  # an emptied cluster keeps its centre
                centres[c] = points[members].mean(0)
        moved = torch.cdist(points, centres).argmin(1)
        if torch.equal(moved, labels):
            break
        labels = moved
    return canonical(labels)


def canonical(labels: Tensor) -> Tensor:
    """The same partition, its clusters numbered 0, 1, ... in the order of their first member."""
    order: dict[int, int] = {}
    for label in labels.tolist():
        order.setdefault(label, len(order))
    return torch.tensor([order[label] for label in labels.tolist()], dtype=torch.long)


class TaskClustering(TaskLayerRegularizer):
    """ε_M T‖w̄‖² + ε_B Σ_c n_c‖w̄_c − w̄‖² + ε_W Σ_c Σ_{t∈c} ‖w_t − w̄_c‖² over the task layers (module
    docstring), the clusters given or learned by k-means."""

    def __init__(
        self,
        tasks: Mapping[str, Task],
        mean_strength: float = 1e-3,
        between_strength: float = 1e-3,
        within_strength: float = 1e-2,
        clusters: int | None = 2,
        assignment: list[list[str]] | None = None,
        update_every: int = 50,
        layer: int = 0,
    ) -> None:
        super().__init__(tasks, layer)
        self.strengths = tuple(
            check_strength(f"regularizer.{key}", value)
            for key, value in (
                ("mean_strength", mean_strength),
                ("between_strength", between_strength),
                ("within_strength", within_strength),
            )
        )
        self.fixed = assignment is not None
        if self.fixed:
            self.labels = self._given(assignment)
            self.clusters = len(assignment)
            if clusters is not None and clusters != self.clusters:
                raise ConfigError(
                    f"regularizer.clusters={clusters} but regularizer.assignment has {self.clusters} clusters; "
                    f"set regularizer.clusters={self.clusters} (or null)"
                )
        else:
            T = len(self.task_names)
            if clusters is None or not 1 <= clusters <= T:
                raise ConfigError(
                    f"regularizer.clusters={clusters}: k-means needs a number of clusters in [1, {T}] "
                    f"(the number of tasks); or give regularizer.assignment"
                )
            self.clusters = clusters
            self.labels = torch.zeros(T, dtype=torch.long)  # until the first k-means, at step 1
        # k-means runs only for learned clusters
        self.update_every = 0 if self.fixed else check_update_every("regularizer.update_every", update_every)

    def _given(self, assignment: list[list[str]]) -> Tensor:
        labels: dict[str, int] = {}
        for c, members in enumerate(assignment):
            if isinstance(members, str) or not members:
                raise ConfigError(
                    f"regularizer.assignment: cluster {c} is {members!r}; give each cluster as a non-empty "
                    "list of task names, e.g. [[left, right], [sum]]"
                )
            for name in members:
                if name not in self.task_names:
                    raise ConfigError(
                        f"regularizer.assignment: unknown task '{name}'; tasks: {', '.join(self.task_names)}"
                    )
                if name in labels:
                    raise ConfigError(
                        f"regularizer.assignment: task '{name}' is in two clusters; list it once"
                    )
                labels[name] = c
        missing = [t for t in self.task_names if t not in labels]
        if missing:
            raise ConfigError(
                f"regularizer.assignment: task(s) {missing} in no cluster; list every task once"
            )
        return canonical(torch.tensor([labels[t] for t in self.task_names]))

    def terms(self) -> tuple[Tensor, Tensor, Tensor]:
        vectors = self.task_vectors()
        return cluster_terms(vectors, self.labels.to(vectors.device), self.clusters)

    def penalty(self) -> Tensor:
        return sum((eps * term for eps, term in zip(self.strengths, self.terms(), strict=True)), self.zero())

    @torch.no_grad()
    def update(self) -> None:
        self.labels = kmeans(self.task_vectors().detach().cpu(), self.clusters)

    def assignment(self) -> dict[str, int]:
        return dict(zip(self.task_names, self.labels.tolist(), strict=True))

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        rows = {f"regularizer/cluster/{t}": float(c) for t, c in self.assignment().items()}
        names = ("mean", "between", "within")
        return rows | {f"regularizer/{n}": float(v) for n, v in zip(names, self.terms(), strict=True)}

    def write(self, folder: Path, plots: bool) -> None:
        lines = ["task,cluster"] + [f"{t},{c}" for t, c in self.assignment().items()]
        atomic_write_text(folder / "task_clusters.csv", "\n".join(lines) + "\n")

    def state_dict(self) -> dict:
        return {"labels": self.labels.clone()}

    def load_state_dict(self, state: Mapping) -> None:
        self.labels = state["labels"].clone()
