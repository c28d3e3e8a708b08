"""AITM (mtlrun/architecture/aitm.py): the transfer unit wires each step to the earlier ones only, its attention
weights are a softmax, the calibrator equals its closed form and vanishes on ordered estimates, and the funnel
configuration on the feed keeps the generic contract (test_architectures.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import test_architectures as contract
import torch
from conftest import build_objects, first_batch, nonzero, small_cfg

from mtlrun.architecture.aitm import AITM, TransferUnit
from mtlrun.errors import ConfigError

BATCH = 16
# the paper's setting on the feed: click -> click-and-purchase over every impression, calibrator on
FUNNEL = [
    "data=tabular",
    "architecture=aitm",
    "architecture.sequence=[click,purchase]",
    "architecture.calibrator_strength=0.6",
    "tasks.purchase.target=conversion",
    "architecture.tower_hidden=[8]",
]


@pytest.fixture(scope="module")
def funnel():
    return build_objects(small_cfg(FUNNEL))


def test_attention_weights_sum_to_one_and_follow_the_paper_formula():
    torch.manual_seed(0)
    unit = TransferUnit(4)
    previous, own = torch.randn(5, 4), torch.randn(5, 4)
    z, w = unit(previous, own)
    assert w.shape == (5, 2) and torch.allclose(w.sum(-1), torch.ones(5)) and (w > 0).all()
    u = torch.stack([unit.info(previous), own], 1)
    scores = (unit.key(u) * unit.query(u)).sum(-1) / 2.0  # sqrt(k) = 2
    expected = (scores.softmax(-1).unsqueeze(-1) * unit.value(u)).sum(1)
    assert torch.allclose(z, expected, atol=1e-6)


def test_a_step_depends_on_the_earlier_tower_and_never_on_a_later_one(funnel):
    model = funnel.model
    batch = first_batch(funnel.data, BATCH)
    out = model(batch)
    assert torch.allclose(model.attention_weights["purchase"].sum(-1), torch.ones(BATCH))
    model.zero_grad(set_to_none=True)
    out["purchase"].sum().backward(retain_graph=True)
    assert any(nonzero(p.grad) for p in model.towers["click"].parameters())
    model.zero_grad(set_to_none=True)
    out["click"].sum().backward()
    assert not any(nonzero(p.grad) for p in model.towers["purchase"].parameters())
    assert not any(nonzero(p.grad) for p in model.transfer.parameters())
    # perturbing click's tower changes purchase's output, and never the other way round
    with torch.no_grad():
        before = model(batch)
        model.towers["purchase"][0].weight.add_(1.0)
        after_later = model(batch)
        model.towers["click"][0].weight.add_(1.0)
        after_earlier = model(batch)
    assert torch.equal(before["click"], after_later["click"])
    assert not torch.allclose(after_later["purchase"], after_earlier["purchase"])


def test_the_calibrator_is_its_closed_form_and_zero_when_ordered(funnel):
    model, tasks = funnel.model, funnel.tasks
    click, purchase = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, -1.0, 0.0, 0.5])
    p_click = tasks["click"].probabilities(click)  # pos_weight: auto is undone first
    p_purchase = tasks["purchase"].probabilities(purchase)
    expected = torch.clamp(p_purchase - p_click, min=0).mean()
    assert expected > 0
    assert model.calibrator({"click": click, "purchase": purchase}).item() == pytest.approx(expected.item())
    shift = torch.log(
        torch.tensor(tasks["click"].positive_weight)
    )  # click's probability is sigmoid(logit - shift)
    ordered = {"click": click, "purchase": click - shift - 3.0}
    assert model.calibrator(ordered).item() == 0.0
    out = model(first_batch(funnel.data, BATCH))
    assert model.penalty().item() == pytest.approx(0.6 * model.calibrator(out).item())


def test_without_the_calibrator_there_is_no_penalty_and_any_task_kind_is_a_step():
    built = build_objects(
        small_cfg(["data=multidigits", "architecture=aitm", "architecture.tower_hidden=[8]"])
    )
    assert built.model.sequence == ["left", "right", "sum"]
    built.model(first_batch(built.data, 4))
    assert built.model.penalty() is None
    roles = built.model.parameter_roles()
    assert roles["towers.left.0.weight"].task is None and roles["towers.sum.0.weight"].task == "sum"


def test_evaluation_records_the_mean_attention_weights(funnel):
    model = funnel.model
    model.eval()
    model(first_batch(funnel.data, BATCH))
    model.train()
    rows = model.diagnostics()
    assert set(rows) == {"purchase"}
    assert rows["purchase"]["transfer/previous"] + rows["purchase"]["transfer/own"] == pytest.approx(1.0)
    assert model.diagnostics() == {}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"sequence": ["click"]}, "give at least two tasks"),
        ({"sequence": ["click", "nope"]}, "'nope' is not a task of this run"),
        ({"calibrator_strength": -1}, "must be >= 0"),
        ({"tower_hidden": []}, "give one or more positive widths"),
        ({"calibrator_strength": 0.6}, "task 'dwell_seconds' of the sequence is regression"),  # sequence: all
    ],
)
def test_bad_settings_are_config_errors(funnel, keys, message):
    with pytest.raises(ConfigError, match=message):
        AITM.check_tasks(funnel.tasks, keys)


def test_the_calibrator_refuses_a_post_click_target_on_the_first_training_batch(funnel):
    batch = first_batch(funnel.data, BATCH)
    keys = {"sequence": ["click", "purchase"], "calibrator_strength": 0.6}
    tasks = dict(funnel.tasks)
    tasks["purchase"] = tasks["purchase"].__class__(name="purchase", kind="binary", target="purchase")
    y = dict(batch["y"], purchase=batch["y"]["click"].clone())
    masks = {"purchase": batch["y"]["click"] == 1}  # empty without a click, like the feed's purchase column
    with pytest.raises(ConfigError, match=r"architecture\.sequence: task 'purchase' .* has no label"):
        AITM.check_tasks(tasks, keys, {**batch, "y": y, "mask": masks})


CONTRACT = contract.CHECKS_OF_ONE_MODEL


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
def test_the_model_contract_holds_with_the_calibrator_on_the_feed(funnel, check):
    check(funnel)


@pytest.mark.slow
def test_cli_smoke_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", *FUNNEL, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["architecture"] == "AITM"
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "model,penalty" in metrics.replace('"', "") or ",model,penalty," in metrics
