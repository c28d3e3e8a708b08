"""GradNorm: the analytic weight gradient, positive weights summing to T, the last shared layer of a real
model, and the refusal of architectures that share nothing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from conftest import build_objects, first_batch, small_cfg
from gradient_families import fake_tasks

from mtlrun.trainer.step import task_losses
from mtlrun.weighting.gradnorm import GradNorm


class OneLayer(nn.Module):
    """A stand-in model whose last shared layer is one vector W = (1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [self.w]

    def losses(self, k: tuple[float, float]) -> torch.Tensor:
        # L0 = k0 * 3 |W|^2 (gradient norm k0 * 6 |W| = k0 * 6 sqrt 5), L1 = k1 * sum W (norm k1 * sqrt 2)
        return torch.stack([k[0] * 3 * self.w.pow(2).sum(), k[1] * self.w.sum()])


def expected_grad(w: list[float], norms: list[float], ratios: list[float], alpha: float) -> list[float]:
    """sign(G_t - mean(G) * r_t^alpha) * n_t, in plain Python."""
    g = [wt * n for wt, n in zip(w, norms, strict=True)]
    r = [x / (sum(ratios) / len(ratios)) for x in ratios]
    return [math.copysign(n, gt - sum(g) / len(g) * rt**alpha) for gt, n, rt in zip(g, norms, r, strict=True)]


def test_weight_gradient_follows_the_formula_over_two_steps() -> None:
    model, gradnorm = OneLayer(), GradNorm(fake_tasks(2)).double()
    gradnorm.attach(model)
    first = model.losses((1.0, 1.0))  # 15 and 3: L(0)
    gradnorm.combine(first)
    n = [6 * math.sqrt(5), math.sqrt(2)]
    assert gradnorm.weights.grad.tolist() == pytest.approx(expected_grad([1, 1], n, [1, 1], 1.5))
    assert gradnorm.weights.grad.tolist() == pytest.approx([n[0], -n[1]])  # r = 1: target = mean norm

    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([0.2, 1.8]))
    gradnorm.weights.grad = None
    second = model.losses((0.1, 0.9))  # task 0 fell to 10% of L(0), task 1 to 90%
    gradnorm.combine(second)
    n2 = [0.1 * n[0], 0.9 * n[1]]
    assert gradnorm.initial_losses.tolist() == pytest.approx([15.0, 3.0])  # still the first step's
    assert gradnorm.weights.grad.tolist() == pytest.approx(expected_grad([0.2, 1.8], n2, [0.1, 0.9], 1.5))


def test_objective_is_the_weighted_sum_and_does_not_move_the_weights() -> None:
    model, gradnorm = OneLayer(), GradNorm(fake_tasks(2)).double()
    gradnorm.attach(model)
    with torch.no_grad():
        gradnorm.weights.copy_(torch.tensor([1.0, 3.0]))  # renormalised to sum T = 2: (0.5, 1.5)
    losses = model.losses((1.0, 1.0))
    objective = gradnorm.combine(losses)
    assert objective.item() == pytest.approx(0.5 * 15 + 1.5 * 3)
    assert gradnorm.last_weights.tolist() == [0.5, 1.5]
    set_by_method = gradnorm.weights.grad.clone()
    objective.backward()
    assert torch.equal(gradnorm.weights.grad, set_by_method)
    assert model.w.grad.tolist() == pytest.approx([0.5 * 6 * 1 + 1.5, 0.5 * 6 * 2 + 1.5])


def test_weights_stay_positive_and_sum_to_t_even_with_a_huge_step() -> None:
    model, gradnorm = OneLayer(), GradNorm(fake_tasks(2)).double()
    gradnorm.attach(model)
    optimizer = torch.optim.SGD(gradnorm.parameters(), lr=10.0)  # overshoots below zero on purpose
    for step in range(6):
        optimizer.zero_grad(set_to_none=True)
        gradnorm.combine(model.losses((1.0, 0.8**step)))
        w = gradnorm.last_weights
        assert (w > 0).all() and w.sum().item() == pytest.approx(2.0)
        assert torch.equal(gradnorm.weights.detach().float(), w)
        optimizer.step()
    assert sum(gradnorm.summary()["weights"].values()) == pytest.approx(2.0)


def tiny_hard_sharing():
    cfg = small_cfg(["data=kendall_toy", "weighting=gradnorm", "encoder.hidden=[8]", "heads.hidden=[]"])
    return build_objects(cfg)


def test_on_a_real_model_the_task_above_its_target_loses_weight() -> None:
    built = tiny_hard_sharing()
    gradnorm, model = built.weighting, built.model
    gradnorm.attach(model)
    linear = [m for m in model.trunk.modules() if isinstance(m, nn.Linear)][-1]  # the trunk's last layer
    assert [id(p) for p in gradnorm.shared_layer] == [id(linear.weight), id(linear.bias)]
    batch = first_batch(built.data, 16)
    losses = task_losses(model(batch), batch, built.tasks) * torch.tensor([10.0, 1.0])  # task y1 loud
    norms = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, gradnorm.shared_layer, retain_graph=True)])
        .norm()
        .item()
        for loss in losses
    ]
    assert norms[0] > norms[1]  # first step: r = 1, target = mean(G), so y1 is above its target
    optimizer = torch.optim.SGD(gradnorm.parameters(), lr=0.01)
    optimizer.zero_grad()
    gradnorm.combine(losses).backward()
    assert gradnorm.weights.grad.tolist() == pytest.approx([norms[0], -norms[1]], rel=1e-5)
    optimizer.step()
    w = gradnorm.weights.detach()
    assert w[0] < 1.0 < w[1]
    gradnorm.combine(losses.detach())  # the next step renormalises: still y1 < y2, sum T
    assert gradnorm.last_weights[0] < gradnorm.last_weights[1]
    assert gradnorm.last_weights.sum().item() == pytest.approx(2.0)


def test_architecture_without_shared_layer_keeps_the_weights_equal() -> None:
    """Nothing shared, nothing to balance (the run warns: tests/weighting/test_weighting.py): the weights stay 1."""
    cfg = small_cfg(["data=kendall_toy", "weighting=gradnorm", "architecture=single_task"])
    built = build_objects(cfg)
    built.weighting.attach(built.model)
    losses = torch.tensor([3.0, 1.0], requires_grad=True)
    assert built.weighting.combine(losses).item() == pytest.approx(4.0)
    assert built.weighting.weights.grad is None


def test_without_a_model_the_weights_are_applied_but_not_learned() -> None:
    gradnorm = GradNorm(fake_tasks(3))
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    assert gradnorm.combine(losses).item() == pytest.approx(6.0)
    assert gradnorm.weights.grad is None


def test_state_dict_round_trip_keeps_the_initial_losses() -> None:
    model, gradnorm = OneLayer(), GradNorm(fake_tasks(2)).double()
    gradnorm.attach(model)
    gradnorm.combine(model.losses((1.0, 1.0)))
    restored = GradNorm(fake_tasks(2)).double()
    restored.load_state_dict(gradnorm.state_dict())
    restored.attach(model)
    nxt = model.losses((0.5, 0.9))
    assert torch.equal(restored.combine(nxt), gradnorm.combine(nxt))
    assert torch.equal(restored.weights.grad, gradnorm.weights.grad)
    assert restored.initial_losses.tolist() == [15.0, 3.0]
