"""Random Loss Weighting: fresh softmax-of-normal weights each step, summing to T, reproducible by seed."""

from __future__ import annotations

import pytest
import torch
from gradient_families import fake_tasks

from mtlrun.weighting.rlw import RLW

LOSSES = torch.tensor([0.7, 2.3, 5.0, 1.1])


def draws(seed: int, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    rlw = RLW(fake_tasks(4))
    out = []
    for _ in range(steps):
        objective = rlw.combine(LOSSES)
        assert objective.item() == pytest.approx((rlw.last_weights * LOSSES).sum().item(), rel=1e-6)
        out.append(rlw.last_weights.clone())
    return out


def test_weights_are_positive_sum_to_t_and_change_every_step() -> None:
    weights = draws(0)
    for w in weights:
        assert (w > 0).all()
        assert w.sum().item() == pytest.approx(4.0, rel=1e-6)
    assert all(not torch.allclose(a, b) for a, b in zip(weights[:-1], weights[1:], strict=True))


def test_weights_are_the_scaled_softmax_of_standard_normal_draws() -> None:
    torch.manual_seed(3)
    expected = 4 * torch.softmax(torch.randn(4, dtype=torch.float64), dim=0)
    torch.manual_seed(3)
    rlw = RLW(fake_tasks(4))
    rlw.combine(LOSSES)
    assert torch.allclose(rlw.last_weights.double(), expected, rtol=1e-6)


def test_reproducible_under_a_seed_and_different_across_seeds() -> None:
    assert all(torch.equal(a, b) for a, b in zip(draws(7), draws(7), strict=True))
    assert not torch.allclose(draws(7)[0], draws(8)[0])


def test_each_weight_has_expectation_one_like_equal_weighting() -> None:
    torch.manual_seed(0)
    rlw = RLW(fake_tasks(4))
    samples = []
    for _ in range(2000):
        rlw.combine(LOSSES)
        samples.append(rlw.last_weights)
    mean = torch.stack(samples).mean(0)
    assert mean.tolist() == pytest.approx([1.0] * 4, abs=0.06)


def test_follows_the_losses_dtype() -> None:
    objective = RLW(fake_tasks(4)).combine(LOSSES.double())
    assert objective.dtype == torch.float64
