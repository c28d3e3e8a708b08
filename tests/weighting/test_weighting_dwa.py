"""Dynamic Weight Average: weights from the last two epochs' mean losses, 1 before that, checkpointed."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg
from gradient_families import fake_tasks

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.weighting.dwa import DWA

HISTORY = [  # epoch-mean training losses of three tasks over four epochs
    [2.0, 1.0, 4.0],
    [1.0, 0.9, 4.0],  # task 0 halves, task 1 slows down, task 2 stalls
    [0.8, 0.9, 2.0],
    [0.4, 0.3, 1.0],
]


def by_hand(previous: list[float], last: list[float], tau: float = 2.0) -> list[float]:
    """T * exp(r_t / tau) / sum_j exp(r_j / tau) with r_t = last_t / previous_t, in plain Python."""
    e = [math.exp(b / a / tau) for a, b in zip(previous, last, strict=True)]
    return [len(e) * x / sum(e) for x in e]


def test_weights_are_one_for_the_first_two_epochs_then_follow_the_formula() -> None:
    dwa = DWA(fake_tasks(3))
    losses = torch.tensor([0.5, 1.5, 3.0])
    for epoch, mean_losses in enumerate(HISTORY, 1):
        objective = dwa.combine(losses)  # during epoch `epoch`
        if epoch <= 2:
            assert dwa.last_weights.tolist() == [1.0, 1.0, 1.0]
            assert objective.item() == pytest.approx(5.0)
        else:
            expected = by_hand(HISTORY[epoch - 3], HISTORY[epoch - 2])
            assert dwa.last_weights.tolist() == pytest.approx(expected, rel=1e-6)
            assert objective.item() == pytest.approx(
                sum(w * x for w, x in zip(expected, [0.5, 1.5, 3.0], strict=True))
            )
        dwa.on_epoch_end(epoch, torch.tensor(mean_losses))
    assert sum(dwa.last_weights.tolist()) == pytest.approx(3.0)


def test_stalling_task_gets_the_largest_weight() -> None:
    dwa = DWA(fake_tasks(3))
    for epoch, mean_losses in enumerate(HISTORY[:2], 1):
        dwa.on_epoch_end(epoch, torch.tensor(mean_losses))
    w = dwa.last_weights.tolist()  # rates 0.5, 0.9, 1.0
    assert w[0] < w[1] < w[2] and w == pytest.approx(by_hand(HISTORY[0], HISTORY[1]), rel=1e-6)
    assert w == pytest.approx([0.8558, 1.0453, 1.0989], abs=1e-4)  # pinned


def test_temperature_sharpens_the_weights() -> None:
    soft, sharp = DWA(fake_tasks(3), temperature=2.0), DWA(fake_tasks(3), temperature=0.1)
    for method in (soft, sharp):
        for epoch, mean_losses in enumerate(HISTORY[:2], 1):
            method.on_epoch_end(epoch, torch.tensor(mean_losses))
    assert sharp.last_weights.max() > soft.last_weights.max()
    assert sharp.last_weights.tolist() == pytest.approx(by_hand(HISTORY[0], HISTORY[1], 0.1), rel=1e-5)
    with pytest.raises(ConfigError, match="temperature"):
        DWA(fake_tasks(2), temperature=0.0)


def test_state_dict_round_trip_continues_identically() -> None:
    dwa = DWA(fake_tasks(3))
    for epoch, mean_losses in enumerate(HISTORY[:3], 1):
        dwa.on_epoch_end(epoch, torch.tensor(mean_losses))
    restored = DWA(fake_tasks(3))
    restored.load_state_dict(dwa.state_dict())
    assert torch.equal(restored.last_weights, dwa.last_weights)
    assert restored.epochs_seen.item() == 3
    for method in (dwa, restored):  # the next epoch must use the restored history
        method.on_epoch_end(4, torch.tensor(HISTORY[3]))
    assert torch.equal(restored.last_weights, dwa.last_weights)
    assert dwa.last_weights.tolist() == pytest.approx(by_hand(HISTORY[2], HISTORY[3]), rel=1e-6)


def test_shipped_config_uses_the_paper_temperature() -> None:
    cfg = compose_cfg(["weighting=dwa"])
    method = build(cfg.weighting, "weighting", tasks=fake_tasks(2))
    assert isinstance(method, DWA) and method.temperature == 2.0
