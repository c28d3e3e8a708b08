"""Soft parameter sharing (mtlrun/architecture/soft_sharing.py): with strength 0 it is the single-task baseline;
a strong penalty pulls the columns together; the penalty equals a hand computation for every form; the runner
logs it. The generic contract (roles, gradients, groups) is in test_architectures.py and test_groups.py."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import build_objects, compose_cfg, first_batch, nonzero, small_cfg

from mtlrun.architecture.soft_sharing import SoftSharing, l2_spread
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks
from mtlrun.trainer.runner import run
from mtlrun.trainer.step import task_losses

BATCH = 8


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("data", ["multidigits", "mmoe_synthetic"])
def test_strength_zero_is_single_task(data: str) -> None:
    soft = build_objects(small_cfg(["architecture=soft_sharing", "architecture.strength=0", f"data={data}"]))
    single = build_objects(small_cfg(["architecture=single_task", f"data={data}"]))
    soft_state, single_state = soft.model.state_dict(), single.model.state_dict()
    assert list(soft_state) == list(single_state)
    assert all(torch.equal(soft_state[k], single_state[k]) for k in soft_state)  # same seed, same weights

    batch = first_batch(soft.data, BATCH)
    for built in (soft, single):
        built.model.zero_grad(set_to_none=True)
        out = built.model(batch)
        built.out = out
        objective = task_losses(out, batch, built.tasks).sum()
        if built is soft:
            penalty = soft.model.penalty()
            assert penalty.item() == 0.0
            objective = objective + penalty
        objective.backward()
        built.grads = grads(built.model)
    for name in soft.tasks:
        assert torch.equal(soft.out[name], single.out[name])
    for name, g in soft.grads.items():
        assert (g is None) == (single.grads[name] is None) and (
            g is None or torch.equal(g, single.grads[name])
        )


def test_each_task_loss_reaches_only_its_own_column() -> None:
    built = build_objects(small_cfg(["architecture=soft_sharing", "data=mmoe_synthetic"]))
    model, batch = built.model, first_batch(built.data, BATCH)
    for task in built.tasks:
        model.zero_grad(set_to_none=True)
        losses = task_losses(model(batch), batch, built.tasks)
        losses[list(built.tasks).index(task)].backward()
        for name, column in model.columns.items():
            moved = any(nonzero(p.grad) for p in column.parameters())
            assert moved is (name == task), (task, name)
    assert model.shared_parameters() == []


@torch.no_grad()
def column_spread(model: SoftSharing) -> float:
    return float(sum(l2_spread(group) for group in model.tied_parameters()))


@pytest.mark.parametrize("penalty", ["l2", "trace_norm", "tucker"])
def test_strong_penalty_pulls_the_columns_together(penalty: str) -> None:
    cfg = small_cfg(
        [
            "architecture=soft_sharing",
            "data=kendall_toy",
            "encoder.hidden=[32,32]",
            f"architecture.penalty={penalty}",
            "architecture.strength=10",
        ]
    )
    built = build_objects(cfg)
    model, batch = built.model, first_batch(built.data, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    penalties, spreads = [], [column_spread(model)]
    for _ in range(8):
        optimizer.zero_grad()
        penalty_value = model.penalty()
        (task_losses(model(batch), batch, built.tasks).sum() + penalty_value).backward()
        optimizer.step()
        penalties.append(penalty_value.item())
        spreads.append(column_spread(model))
    assert penalties[-1] < 0.8 * penalties[0]
    assert all(b < a for a, b in zip(penalties, penalties[1:], strict=False)), penalties
    assert spreads[-1] < 0.8 * spreads[0]


# ---------------------------------------------------------------------------------- the penalty by hand


def tiny_model(**options: object) -> SoftSharing:
    """Two columns of one Linear(2, 2) stage each, with weights chosen for easy singular values:
    W_a = [[1, 0], [0, 0]], W_b = [[0, 1], [0, 0]] (orthonormal when flattened), b_a = [3, 0], b_b = [0, 4]."""
    tasks = build_tasks({"a": {"kind": "regression"}, "b": {"kind": "regression"}})
    model = SoftSharing(lambda: MLPEncoder((2,), [2]), tasks, {"hidden": []}, **options)
    values = {"a": ([[1.0, 0.0], [0.0, 0.0]], [3.0, 0.0]), "b": ([[0.0, 1.0], [0.0, 0.0]], [0.0, 4.0])}
    with torch.no_grad():
        for name, (weight, bias) in values.items():
            linear = model.columns[name].stages[0][0]
            linear.weight.copy_(torch.tensor(weight))
            linear.bias.copy_(torch.tensor(bias))
    return model


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        # sum_t ||W_t - mean||^2 = 1/2 ||W_a - W_b||^2: weights 1/2 * 2, biases 1/2 * (9 + 16)
        ({"penalty": "l2"}, 0.5 * (1.0 + 12.5)),
        ({"penalty": "l2", "pairwise": True}, 0.5 * (2.0 + 25.0)),  # ||W_a - W_b||^2, Duong's form
        # [vec W_a, vec W_b] has orthonormal columns: nuclear norm 2; [b_a, b_b] = diag(3, 4): 7
        ({"penalty": "trace_norm"}, 0.5 * (2.0 + 7.0)),
        # stacked weights S[i, j, t]: mode-0 unfolding [[1, 0, 0, 1], 0] has nuclear norm sqrt(2), modes 1
        # and 2 have two orthonormal rows (2 each); the biases' two unfoldings are diag(3, 4) and its transpose
        ({"penalty": "tucker"}, 0.5 * ((math.sqrt(2.0) + 2.0 + 2.0) / 3 + 7.0)),
    ],
    ids=["l2", "l2-pairwise", "trace_norm", "tucker"],
)
def test_penalty_matches_a_hand_computation(options: dict, expected: float) -> None:
    model = tiny_model(strength=0.5, **options)
    assert model.penalty().item() == pytest.approx(expected, rel=1e-6)


def test_trace_norm_of_proportional_columns_is_rank_one() -> None:
    model = tiny_model(penalty="trace_norm", strength=1.0)
    with torch.no_grad():
        for name, scale in (("a", 1.0), ("b", 2.0)):
            model.columns[name].stages[0][0].weight.copy_(scale * torch.tensor([[1.0, 2.0], [2.0, 4.0]]))
            model.columns[name].stages[0][0].bias.zero_()
    # [v, 2v] has one singular value, ||v|| * sqrt(1 + 4) = 5 * sqrt(5)
    assert model.penalty().item() == pytest.approx(5.0 * math.sqrt(5.0), rel=1e-6)


def test_l2_for_three_columns_is_the_distance_to_their_mean() -> None:
    weights = [torch.tensor([0.0, 0.0]), torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])]
    # mean (1, 1): squared distances 2 + 5 + 5
    assert l2_spread(weights).item() == pytest.approx(12.0)
    # pairs: 9 + 9 + 18 = 36 = 3 * 12
    assert l2_spread(weights, pairwise=True).item() == pytest.approx(36.0)


def test_tied_stages_selects_which_stages_count() -> None:
    tasks = build_tasks({"a": {"kind": "regression"}, "b": {"kind": "regression"}})

    def model(tied: str | list[int]) -> SoftSharing:
        torch.manual_seed(0)
        return SoftSharing(lambda: MLPEncoder((3,), [4, 5]), tasks, {"hidden": []}, tied_stages=tied)

    every, first, last = model("all"), model([0]), model([-1])
    assert (every.tied_stages, first.tied_stages, last.tied_stages) == ([0, 1], [0], [1])
    assert every.penalty().item() == pytest.approx(first.penalty().item() + last.penalty().item(), rel=1e-6)
    assert model([]).penalty().item() == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("architecture.penalty=l1", r"architecture\.penalty: 'l1'"),
        ("architecture.strength=-1", r"architecture\.strength"),
        ("architecture.tied_stages=[5]", r"architecture\.tied_stages: 5 is not a stage.*3 stages"),
        ("architecture.tied_stages=some", r"architecture\.tied_stages: expected 'all'"),
    ],
)
def test_bad_options_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_objects(small_cfg(["architecture=soft_sharing", "data=multidigits", override]))


def test_runner_logs_the_penalty(tmp_path: Path) -> None:
    cfg = compose_cfg(["debug=smoke", "data=kendall_toy", "architecture=soft_sharing", "encoder.hidden=[16]"])
    run(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "metrics.csv")
    penalty = table[(table.task == "model") & (table.metric == "penalty")]
    assert len(penalty) == cfg.trainer.epochs and (penalty.value > 0).all()
