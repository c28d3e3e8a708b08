"""FAMO: loss weights from softmax logits (summing to 1), logits that follow the slowest-falling loss,
a logit gradient set by the method itself (never by the objective), and checkpointed state."""

from __future__ import annotations

import pytest
import torch
from conftest import build_objects, small_cfg
from gradient_families import fake_tasks
from omegaconf import OmegaConf

from mtlrun.optim.groups import build_param_groups
from mtlrun.trainer.setup import setup_optimizer
from mtlrun.weighting.famo import EPS, FAMO

RATES = torch.tensor([0.90, 0.99, 0.95], dtype=torch.float64)  # per-step loss factors: task 1 is slowest


def loss_sequence(steps: int) -> list[torch.Tensor]:
    start = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    return [start * RATES**k for k in range(steps)]


def train_logits(famo: FAMO, steps: int, lr: float = 0.025) -> list[torch.Tensor]:
    """Feed the hand-made loss sequence, stepping the logits with Adam as the runner would; returns the
    weights applied at each step."""
    optimizer = torch.optim.Adam(famo.parameters(), lr=lr)
    applied = []
    for losses in loss_sequence(steps):
        optimizer.zero_grad(set_to_none=True)
        famo.combine(losses.clone().requires_grad_(True)).backward()
        optimizer.step()
        applied.append(famo.last_weights.clone())
    return applied


def test_weights_stay_positive_and_sum_to_one() -> None:
    famo = FAMO(fake_tasks(3)).double()
    for w in train_logits(famo, 40):
        assert (w > 0).all()
        assert w.sum().item() == pytest.approx(1.0, rel=1e-6)


def test_logits_move_toward_the_task_whose_loss_falls_slowest() -> None:
    famo = FAMO(fake_tasks(3), gamma=0.0).double()
    train_logits(famo, 30)
    xi = famo.logits.detach()
    assert xi[1] > xi[2] > xi[0]  # slowest (0.99) > medium (0.95) > fastest (0.90)
    z = torch.softmax(xi, 0)
    assert z[1] > 1 / 3 > z[0]


def test_logit_gradient_is_the_softmax_vjp_of_the_log_loss_drop_plus_gamma() -> None:
    famo = FAMO(fake_tasks(3), gamma=0.1).double()
    xi = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    with torch.no_grad():
        famo.logits.copy_(xi)
    first, second = torch.tensor([1.0, 2.0, 0.5]).double(), torch.tensor([0.8, 1.9, 0.25]).double()
    famo.combine(first)
    assert torch.allclose(famo.logits.grad, 0.1 * xi)  # no previous losses yet: only the regulariser
    famo.logits.grad = None
    famo.combine(second)
    delta = torch.log(first + EPS) - torch.log(second + EPS)
    leaf = xi.clone().requires_grad_(True)
    (vjp,) = torch.autograd.grad(torch.softmax(leaf, 0), leaf, grad_outputs=delta)
    assert torch.allclose(famo.logits.grad, vjp + 0.1 * xi, rtol=1e-12)


def test_last_weights_are_the_objectives_gradient_and_the_logits_get_nothing_from_it() -> None:
    famo = FAMO(fake_tasks(3)).double()
    with torch.no_grad():
        famo.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    losses = torch.tensor([0.7, 2.3, 5.0], dtype=torch.float64, requires_grad=True)
    objective = famo.combine(losses)
    set_by_method = famo.logits.grad.clone()
    objective.backward()
    assert torch.equal(famo.logits.grad, set_by_method)  # the objective does not backpropagate into xi
    z = torch.softmax(famo.logits.detach(), 0)
    by_hand = (z / (losses.detach() + EPS)) / (z / (losses.detach() + EPS)).sum()
    assert torch.allclose(losses.grad, by_hand, rtol=1e-12)
    assert torch.allclose(famo.last_weights.double(), by_hand, rtol=1e-6)


def test_state_dict_round_trip_keeps_the_previous_losses() -> None:
    famo = FAMO(fake_tasks(3)).double()
    train_logits(famo, 3)
    restored = FAMO(fake_tasks(3)).double()
    restored.load_state_dict(famo.state_dict())
    nxt = torch.tensor([0.5, 0.9, 2.0], dtype=torch.float64)
    assert torch.equal(restored.combine(nxt), famo.combine(nxt))
    assert torch.equal(restored.logits.grad, famo.logits.grad)
    assert bool(restored.has_prev)


def test_logits_land_in_the_weighting_group_with_its_learning_rate() -> None:
    cfg = small_cfg(["data=kendall_toy", "weighting=famo", "optim.groups.weighting.lr=0.025"])
    built = build_objects(cfg)
    groups = build_param_groups(built.model, built.weighting, OmegaConf.to_container(cfg.optim.groups))
    optimizer = setup_optimizer(cfg, groups)
    (group,) = [pg for g, pg in zip(groups, optimizer.param_groups, strict=True) if g.name == "weighting"]
    assert group["lr"] == 0.025 and group["params"] == [built.weighting.logits]
    assert built.weighting.gamma == 1e-3
