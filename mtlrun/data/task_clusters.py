"""Regression tasks in clusters: tasks of one cluster share a latent function of the input, clusters share
nothing but the input. A test bed for task affinity and task grouping (`trainer.affinity_every`,
`mtlrun groups`, `architecture=grouped`): the right grouping is known.

C clusters; cluster c has a unit direction u_c of R^d, the C directions orthonormal. With x ~ N(0, I_d),
z_c = u_c · x and the MMoE-style latent (Ma et al. 2018)

    h_c(x) = z_c + Σ_(m=1..M) sin(α_m z_c + β_m),     α_m, β_m ~ N(0, 1) drawn once,

task k of cluster c (named by the cluster's letter and k: a1, a2, …, b1, …) is

    y_(c,k) = h_c(x) + task_std · (v_(c,k) · x) + noise_std · ε,     ε ~ N(0, 1),

v_(c,k) a random unit direction of the task's own. Within a cluster the tasks want the same features of x,
so one task's gradient step on a shared network lowers its cluster-mates' losses (positive affinity);
across clusters they read orthogonal directions of x and only compete for the shared network's capacity
(affinity near 0 or below). Everything is drawn from ``seed``.
"""

from __future__ import annotations

import string

import torch

from mtlrun.data.base import SPLITS, Split, TensorData
from mtlrun.errors import ConfigError


def task_names(clusters: int, tasks_per_cluster: int) -> list[str]:
    """a1, a2, …, b1, …: the cluster's letter, then the task's number in it."""
    return [f"{string.ascii_lowercase[c]}{k + 1}" for c in range(clusters) for k in range(tasks_per_cluster)]


class TaskClusters(TensorData):
    name = "task_clusters"

    def __init__(
        self,
        clusters: int = 2,
        tasks_per_cluster: int = 3,
        input_dim: int = 16,
        num_sinusoids: int = 5,
        task_std: float = 0.3,
        noise_std: float = 0.1,
        n_train: int = 4000,
        n_val: int = 1000,
        n_test: int = 1000,
        seed: int = 0,
    ) -> None:
        if not 1 <= clusters <= 26:
            raise ConfigError(f"data.clusters: must lie in [1, 26] (one letter each); got {clusters}")
        if tasks_per_cluster < 1:
            raise ConfigError(f"data.tasks_per_cluster: must be >= 1; got {tasks_per_cluster}")
        if input_dim < clusters:
            raise ConfigError(
                f"data.input_dim: needs one orthogonal direction per cluster, so >= data.clusters={clusters}; "
                f"got {input_dim}"
            )
        if task_std < 0 or noise_std < 0:
            raise ConfigError(f"data.task_std, data.noise_std: must be >= 0; got {task_std}, {noise_std}")
        gen = torch.Generator().manual_seed(seed)
        directions, _ = torch.linalg.qr(
            torch.randn(input_dim, clusters, generator=gen)
        )  # orthonormal columns
        alpha = torch.randn(num_sinusoids, generator=gen)
        beta = torch.randn(num_sinusoids, generator=gen)
        offset = torch.sin(beta) * torch.exp(-(alpha**2) / 2)  # E sin(α z + β) for z ~ N(0, 1): centres h_c
        names = task_names(clusters, tasks_per_cluster)
        own = torch.randn(input_dim, len(names), generator=gen)
        own = own / own.norm(dim=0, keepdim=True)
        splits = {}
        for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
            x = torch.randn(n, input_dim, generator=gen)
            z = x @ directions  # [n, C]
            latent = z + (torch.sin(alpha * z[..., None] + beta) - offset).sum(-1)
            y = {}
            for t, name in enumerate(names):
                c = t // tasks_per_cluster
                noise = noise_std * torch.randn(n, generator=gen)
                y[name] = latent[:, c] + task_std * (x @ own[:, t]) + noise
            splits[split] = Split(x=x, y=y)
        self.directions = directions
        super().__init__(splits)
