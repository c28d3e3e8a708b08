"""Geometric Loss Strategy: the geometric mean of the losses, and its gradient as the logged weights."""

from __future__ import annotations

import math

import pytest
import torch
from gradient_families import fake_losses, fake_tasks

from mtlrun.weighting.gls import GLS


@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_objective_is_the_geometric_mean(num_tasks: int) -> None:
    losses = fake_losses(num_tasks, seed=num_tasks)
    objective = GLS(fake_tasks(num_tasks)).combine(losses)
    assert objective.item() == pytest.approx(math.prod(losses.tolist()) ** (1 / num_tasks), rel=1e-12)


def test_values_pinned() -> None:
    gls = GLS(fake_tasks(3))
    assert gls.combine(torch.tensor([1.0, 8.0, 27.0])).item() == pytest.approx(6.0, rel=1e-6)
    assert gls.last_weights.tolist() == pytest.approx([2.0, 0.25, 2 / 27], rel=1e-6)  # 6 / (3 L_t)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_last_weights_match_autograd(seed: int) -> None:
    losses = fake_losses(4, seed).requires_grad_(True)
    gls = GLS(fake_tasks(4))
    objective = gls.combine(losses)
    (grad,) = torch.autograd.grad(objective, losses)
    assert torch.allclose(gls.last_weights.double(), grad, rtol=1e-6)
    assert torch.allclose(grad, objective.detach() / (4 * losses.detach()), rtol=1e-12)


def test_scale_invariance_and_extreme_losses_stay_finite() -> None:
    gls = GLS(fake_tasks(3))
    losses = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    scaled = losses * torch.tensor([1000.0, 1.0, 1.0], dtype=torch.float64)
    ratio = gls.combine(scaled) / gls.combine(losses)
    assert ratio.item() == pytest.approx(1000 ** (1 / 3), rel=1e-12)  # a task's units scale it by c^(1/T)
    tiny = GLS(fake_tasks(40)).combine(torch.full((40,), 1e-30))  # a plain product would underflow
    assert tiny.item() == pytest.approx(1e-30, rel=1e-4)


def test_a_zero_loss_gives_a_finite_objective_and_zero_weight() -> None:
    gls = GLS(fake_tasks(2))
    objective = gls.combine(torch.tensor([0.0, 4.0]))
    assert torch.isfinite(objective) and torch.isfinite(gls.last_weights).all()
    assert gls.last_weights[0].item() == 0.0
