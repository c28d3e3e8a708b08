"""Partly labelled batches: masked and weighted task losses (hand-computed), an all-missing batch (loss 0, no
gradient), metrics over labelled rows only, and the gradient-based engine on masked losses."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_objects, small_cfg

from mtlrun.data.base import Split, TensorData
from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.evaluate import evaluate
from mtlrun.trainer.step import task_losses, train_step

LOG2 = math.log(2.0)


def regression() -> Task:
    return Task(name="t", kind="regression", target="y")


def test_masked_loss_is_the_mean_over_labelled_rows():
    prediction = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([0.0, float("nan"), 5.0, 4.0])  # row 1 unlabelled (even a NaN placeholder)
    mask = torch.tensor([True, False, True, True])
    assert regression().loss_mean(prediction, target, mask).item() == pytest.approx((1 + 4 + 0) / 3)
    weight = torch.tensor([1.0, 9.0, 2.0, 1.0])
    assert regression().loss_mean(prediction, target, mask, weight).item() == pytest.approx((1 + 8 + 0) / 4)
    full = torch.tensor([0.0, 2.0, 5.0, 4.0])
    assert regression().loss_mean(prediction, full, None, weight).item() == pytest.approx(
        (1 + 0 + 8 + 0) / 13
    )


@pytest.mark.parametrize(
    ("task", "prediction", "target", "expected"),
    [
        (Task(name="b", kind="binary", target="y"), torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), LOG2),
        (
            Task(name="p", kind="binary", target="y", pos_weight=3.0),
            torch.zeros(3),
            torch.tensor([1.0, 0.0, 1.0]),
            4 * LOG2,
        ),
        (
            Task(name="m", kind="multiclass", target="y", num_classes=4),
            torch.zeros(3, 4),
            torch.tensor([3, 0, 2]),
            math.log(4),
        ),
        (
            Task(name="l", kind="multilabel", target="y", num_classes=2),
            torch.zeros(3, 2),
            torch.ones(3, 2),
            LOG2,
        ),
    ],
    ids=["binary", "binary-pos-weight", "multiclass", "multilabel"],
)
def test_masked_loss_of_each_kind(task, prediction, target, expected):
    mask = torch.tensor([True, False, True])  # rows 0 and 2 count
    # pos_weight 3 weighs the positive rows: (3 log 2 + 3 log 2) / 2 over the labelled rows 0 and 2 ...
    value = task.loss_mean(prediction, target, mask).item()
    if task.pos_weight:
        expected = 3 * LOG2
        full = task.loss_mean(prediction, target).item()  # ... and (3 + 1 + 3) log 2 / 3 over all rows
        assert full == pytest.approx(7 * LOG2 / 3)
    assert value == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["regression", "binary", "multiclass", "multilabel"])
def test_a_batch_with_no_labelled_row_gives_zero_loss_and_zero_gradient(kind):
    task = Task(
        name="t", kind=kind, target="y", num_classes=3 if kind in ("multiclass", "multilabel") else None
    )
    shape = (4, 3) if kind in ("multiclass", "multilabel") else (4,)
    prediction = torch.randn(shape, requires_grad=True)
    target = torch.full((4, 3) if kind == "multilabel" else (4,), float("nan"))
    target = target.long().clamp(0, 2) if kind == "multiclass" else target
    loss = task.loss_mean(prediction, target, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(prediction.grad, torch.zeros(shape))


def test_task_losses_read_masks_and_weights_from_the_batch():
    tasks = {
        "a": Task(name="a", kind="regression", target="ya"),
        "b": Task(name="b", kind="regression", target="yb"),
    }
    predictions = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([2.0, 4.0])}
    batch = {
        "x": torch.zeros(2, 1),
        "y": {"ya": torch.tensor([0.0, 3.0]), "yb": torch.tensor([0.0, 0.0])},
        "mask": {"ya": torch.tensor([False, True])},  # yb: fully labelled, no mask
        "weight": torch.tensor([1.0, 3.0]),
    }
    losses = task_losses(predictions, batch, tasks)
    assert losses.tolist() == pytest.approx([4.0, (4 + 3 * 16) / 4])


def test_evaluation_counts_labelled_rows_only():
    x = torch.tensor([[0.9], [0.1], [0.8], [0.2], [0.7]])  # the model predicts logit = 10 * (x - 0.5)
    y = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([True, False, True, True, False])  # labelled: right, wrong, right
    split = Split(x=x, y={"y": y}, mask={"y": mask})
    data = TensorData({"train": split, "val": split, "test": split})
    task = Task(name="t", kind="binary", target="y", metrics=["accuracy"])

    class Logit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(10.0))

        def forward(self, batch):
            return {"t": self.scale * (batch["x"][:, 0] - 0.5)}

        def diagnostics(self):
            return {}

    results = evaluate(Logit(), data, "val", {"t": task}, batch_size=2)
    assert results["t"]["accuracy"] == pytest.approx(2 / 3)  # rows 0, 2, 3: right, wrong, right
    logits = 10 * (x[:, 0] - 0.5)
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    assert results["t"]["loss"] == pytest.approx(per_row[mask].mean().item(), rel=1e-6)
    nobody = Split(x=x, y={"y": y}, mask={"y": torch.zeros(5, dtype=torch.bool)})
    empty = evaluate(
        Logit(), TensorData({"train": split, "val": nobody, "test": split}), "val", {"t": task}, 2
    )
    assert math.isnan(empty["t"]["loss"]) and math.isnan(empty["t"]["accuracy"])


@pytest.mark.parametrize("weighting", ["mgda", "pcgrad", "equal"])
def test_a_training_step_with_an_unlabelled_task_updates_only_what_it_should(weighting):
    built = build_objects(small_cfg(["data=tabular", f"weighting={weighting}"]))
    batch = next(built.data.batches("train", 16))
    batch["mask"] = dict(batch.get("mask", {})) | {"purchase": torch.zeros(16, dtype=torch.bool)}
    model, tasks = built.model, built.tasks
    built.weighting.attach(model)
    engine = BackwardEngine(model, built.weighting)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, objective = train_step(model, batch, tasks, engine, optimizer, None)
    assert losses[list(tasks).index("purchase")].item() == 0.0 and torch.isfinite(losses).all()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not any(n.startswith("heads.heads.purchase.") for n in moved)  # zero gradient: untouched
    assert any(n.startswith("heads.heads.click.") for n in moved)  # heads get their ordinary gradients
    # the trunk moves, except under MGDA: purchase's zero gradient row lies in the convex hull of the task
    # gradients, so the min-norm direction is 0 for this batch (docs/own-data.md, "Two caveats")
    assert any(n.startswith("trunk.") for n in moved) == (weighting != "mgda")
