"""PCGrad: the closed form on two tasks, agreement with the textbook per-vector loop for every random
order, the reduction option, and reproducibility under torch's seed."""

import itertools

import pytest
import torch
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.weighting.pcgrad import PCGrad


def pcgrad(grads: torch.Tensor, reduction: str = "sum", seed: int = 0) -> tuple[torch.Tensor, PCGrad]:
    method = PCGrad(fake_tasks(len(grads)), reduction=reduction).double()
    torch.manual_seed(seed)
    return method.aggregate(grads.clone()), method


def textbook(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Paper, Algorithm 1, on the vectors themselves, with a given order of the other tasks per task."""
    projected = []
    for i, order in enumerate(orders):
        g = grads[i].clone()
        for j in order:
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(0)


def two_task_closed_form(g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    dot = g1 @ g2
    if dot >= 0:
        return g1 + g2
    return g1 - dot / (g2 @ g2) * g2 + g2 - dot / (g1 @ g1) * g1


@pytest.mark.parametrize("family", ["random", "conflicting", "nearly_parallel", "zero_row", "badly_scaled"])
def test_two_tasks_match_the_closed_form(family):
    for label, grads in matrices(task_counts=(2,)):
        if not label.startswith(family):
            continue
        direction, method = pcgrad(grads)
        expected = two_task_closed_form(grads[0], grads[1])
        scale = expected.abs().max().clamp_min(1e-12)
        assert torch.allclose(direction / scale, expected / scale, atol=1e-10), label
        assert torch.allclose(grads.T @ method.last_weights, direction, rtol=1e-9, atol=1e-12), label


def test_conflicting_pair_is_projected_and_agreeing_pair_is_summed():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    conflicting = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    direction, _ = pcgrad(torch.stack([g1, conflicting]))
    # g1 loses its component along g2, g2 its component along g1: (0.5, 0.5) + (0, 1)
    assert torch.allclose(direction, torch.tensor([0.5, 1.5], dtype=torch.float64))
    agreeing = torch.tensor([1.0, 1.0], dtype=torch.float64)
    direction, _ = pcgrad(torch.stack([g1, agreeing]))
    assert torch.equal(direction, g1 + agreeing)


def test_three_tasks_match_the_textbook_loop_for_one_of_the_orders():
    """With three tasks the order matters; the result must be the textbook loop for some order per task."""
    for label, grads in matrices(task_counts=(3,)):
        candidates = []
        per_task = [list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)]
        for orders in itertools.product(*per_task):
            candidates.append(textbook(grads, [list(o) for o in orders]))
        for seed in range(3):
            direction, _ = pcgrad(grads, seed=seed)
            scale = direction.abs().max().clamp_min(1e-12)
            assert any(torch.allclose(direction / scale, c / scale, atol=1e-9) for c in candidates), label


def test_the_order_is_drawn_from_torchs_seed():
    grads = torch.tensor([[1.0, 0.0, 0.0], [-0.9, 1.0, 0.2], [-0.5, -1.0, 0.4]], dtype=torch.float64)
    first, _ = pcgrad(grads, seed=3)
    again, _ = pcgrad(grads, seed=3)
    assert torch.equal(first, again)
    draws = {tuple(pcgrad(grads, seed=s)[0].tolist()) for s in range(20)}
    assert len(draws) > 1  # the order of projections changes the result here


def test_mean_reduction_divides_by_the_number_of_tasks():
    for label, grads in matrices(task_counts=(2, 5), seeds=(0,)):
        summed, by_sum = pcgrad(grads, "sum", seed=1)
        mean, by_mean = pcgrad(grads, "mean", seed=1)
        assert torch.allclose(mean * len(grads), summed, rtol=1e-12, atol=1e-12), label
        assert torch.allclose(by_mean.last_weights * len(grads), by_sum.last_weights), label


def test_float32_matches_float64():
    _, grads = next(matrices(task_counts=(5,), seeds=(0,)))
    expected, _ = pcgrad(grads, seed=2)
    method = PCGrad(fake_tasks(5))
    torch.manual_seed(2)
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32 and method.last_weights.dtype == torch.float32
    assert torch.allclose(direction.double(), expected, rtol=1e-4, atol=1e-5)


def test_unknown_reduction_is_a_config_error():
    with pytest.raises(ConfigError, match="weighting.reduction"):
        PCGrad(fake_tasks(2), reduction="max")
