"""Seeded families of per-task gradient matrices [T, P] for property tests of gradient-based methods.

Each family stresses one thing: random directions, strong conflict (a task pulls against another),
nearly parallel gradients, a zero row (a task with nothing to learn in the batch), and rows whose norms
differ by six orders of magnitude.
"""

from __future__ import annotations

import torch

P = 24  # parameters per matrix: enough for general position, small enough to be instant


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rows(num_tasks: int, seed: int) -> torch.Tensor:
    return torch.randn(num_tasks, P, generator=_gen(seed), dtype=torch.float64)


def conflicting(num_tasks: int, seed: int) -> torch.Tensor:
    g = random_rows(num_tasks, seed)
    g[1] = -0.8 * g[0] + 0.2 * g[1]  # task 1 points against task 0
    return g


def nearly_parallel(num_tasks: int, seed: int) -> torch.Tensor:
    base = torch.randn(1, P, generator=_gen(seed), dtype=torch.float64)
    return base + 0.01 * random_rows(num_tasks, seed + 1)


def zero_row(num_tasks: int, seed: int) -> torch.Tensor:
    g = random_rows(num_tasks, seed)
    g[-1] = 0.0
    return g


def badly_scaled(num_tasks: int, seed: int) -> torch.Tensor:
    scales = torch.logspace(-3, 3, num_tasks, dtype=torch.float64)
    return scales[:, None] * random_rows(num_tasks, seed)


FAMILIES = {
    "random": random_rows,
    "conflicting": conflicting,
    "nearly_parallel": nearly_parallel,
    "zero_row": zero_row,
    "badly_scaled": badly_scaled,
}


def matrices(task_counts=(2, 3, 5), seeds=(0, 1, 2)):
    """(label, G) for every family, task count and seed."""
    for name, family in FAMILIES.items():
        for t in task_counts:
            for seed in seeds:
                yield f"{name}-T{t}-s{seed}", family(t, seed)


def fake_tasks(num_tasks: int, kind: str = "regression") -> dict:
    """A tasks mapping for building a method outside the runner."""
    from mtlrun.tasks import Task

    return {f"t{i}": Task(name=f"t{i}", kind=kind, target=f"t{i}") for i in range(num_tasks)}


def fake_losses(num_tasks: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(num_tasks, generator=_gen(seed), dtype=torch.float64) + 0.5
