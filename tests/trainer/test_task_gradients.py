"""Per-task gradients: each row of the [T, P] matrix equals one autograd call on that task's loss alone, for
both gradient sources, with tasks that read other tasks' estimates (``inputs_from``) and a task with no
labelled row in the batch; each pass reaches only the heads its loss depends on; the heads' ``.grad`` is the
gradient of the summed losses; the engine and the training step hand the per-task scalars on."""

from __future__ import annotations

import pytest
import torch

from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.tasks import Task
from mtlrun.trainer.backward import BackwardEngine, per_task_gradients
from mtlrun.trainer.step import per_task_losses, train_step
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.equal import Equal
from mtlrun.weighting.gradnorm import GradNorm

ROWS, IN_DIM = 16, 6
TASKS = {
    "a": Task(name="a", kind="regression", target="a"),
    "b": Task(name="b", kind="regression", target="b", inputs_from=("a",), detach=False),  # reaches a's head
    "c": Task(name="c", kind="binary", target="c"),  # no labelled row in the batch: loss 0, zero gradient
    "d": Task(name="d", kind="regression", target="d", inputs_from=("c",)),  # detached: only its own head
}


def make_model() -> HardSharing:
    torch.manual_seed(0)
    return HardSharing(lambda: MLPEncoder((IN_DIM,), [12, 8]), TASKS, {"hidden": [5]})


def make_batch() -> dict:
    gen = torch.Generator().manual_seed(1)
    y = {t: torch.randn(ROWS, generator=gen) for t in ("a", "b", "d")}
    y["c"] = torch.randint(0, 2, (ROWS,), generator=gen).float()
    return {
        "x": torch.randn(ROWS, IN_DIM, generator=gen),
        "y": y,
        "mask": {"c": torch.zeros(ROWS, dtype=torch.bool)},
    }


def inputs_of(model: HardSharing, source: str) -> list[torch.Tensor]:
    return [model.shared_representation] if source == "representation" else model.shared_parameters()


def naive_rows(losses, inputs) -> torch.Tensor:
    """Row t: ``torch.autograd.grad`` of task t's loss alone, flattened (zeros where it does not reach)."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(x) if g is None else g).reshape(-1)
                    for g, x in zip(grads, inputs, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def head_params(model: HardSharing, task: str) -> list[torch.nn.Parameter]:
    return list(model.heads.heads[task].parameters())


@pytest.mark.parametrize("source", ["shared_params", "representation"])
def test_rows_equal_one_autograd_call_per_task_and_heads_get_the_summed_gradient(source):
    model, batch = make_model(), make_batch()
    losses = per_task_losses(model(batch), batch, TASKS)
    inputs, owned = inputs_of(model, source), model.task_owned_parameters()
    expected = naive_rows(losses, inputs)
    expected_heads = torch.autograd.grad(sum(losses), owned, retain_graph=True)

    rows = per_task_gradients(losses, inputs, owned)

    assert rows.shape == expected.shape and torch.allclose(rows, expected, rtol=1e-6, atol=1e-8)
    assert losses[2].item() == 0.0 and torch.equal(rows[2], torch.zeros_like(rows[2]))  # no labelled row
    assert rows[0].abs().sum() > 0 and rows[3].abs().sum() > 0
    for p, g in zip(owned, expected_heads, strict=True):
        assert p.grad is not None and torch.allclose(p.grad, g, rtol=1e-6, atol=1e-8)
    # b reads a's estimate without a stop-gradient: a's head also carries b's gradient
    a_alone = torch.autograd.grad(losses[0], head_params(model, "a"), retain_graph=True)
    assert not all(torch.allclose(p.grad, g) for p, g in zip(head_params(model, "a"), a_alone, strict=True))


def test_each_pass_reaches_only_the_heads_its_loss_depends_on():
    model, batch = make_model(), make_batch()
    losses = per_task_losses(model(batch), batch, TASKS)
    calls = dict.fromkeys(TASKS, 0)
    for task in TASKS:
        head_params(model, task)[0].register_hook(
            lambda g, task=task: calls.__setitem__(task, calls[task] + 1)
        )
    per_task_gradients(losses, inputs_of(model, "representation"), model.task_owned_parameters())
    assert calls == {"a": 2, "b": 1, "c": 1, "d": 1}  # a: its own pass and b's; d's input from c is detached


def test_losses_that_reach_no_input_give_zero_rows():
    x = torch.ones(3, requires_grad=True)
    rows = per_task_gradients([x.sum(), torch.tensor(2.0), (2 * x).sum()], [x])
    assert torch.equal(rows, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]]))


class Recording(GradientWeighting):
    """The sum of the task gradients; keeps the matrix it was given."""

    direction_is_weighted_sum = True

    def aggregate(self, grads, losses=None):
        self.seen = grads.clone()
        self.last_weights = torch.ones(len(grads))
        return grads.sum(0)


def grads_of(model) -> dict[str, torch.Tensor]:
    return {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
    }


@pytest.mark.parametrize("source", ["shared_params", "representation"])
@pytest.mark.parametrize("hand_scalars", [True, False])
def test_the_engine_aggregates_the_naive_rows_and_fills_grad_as_equal_weighting(source, hand_scalars):
    batch = make_batch()
    reference_model = make_model()
    reference = per_task_losses(reference_model(batch), batch, TASKS)
    expected_rows = naive_rows(reference, inputs_of(reference_model, source))
    BackwardEngine(reference_model, Equal(TASKS)).backward(torch.stack(reference), reference)

    model = make_model()
    losses = per_task_losses(model(batch), batch, TASKS)
    engine = BackwardEngine(model, Recording(TASKS, grad_source=source))
    engine.backward(torch.stack(losses), losses if hand_scalars else None)

    assert torch.allclose(engine.weighting.seen, expected_rows, rtol=1e-6, atol=1e-8)
    actual, expected = grads_of(model), grads_of(reference_model)
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=1e-5, atol=1e-7), name
    assert engine.backward_passes == len(TASKS) + (source == "representation")


def test_train_step_hands_the_engine_the_per_task_scalars():
    model, batch = make_model(), make_batch()

    class Spy(BackwardEngine):
        def backward(self, losses, per_task=None):
            self.handed = per_task
            return super().backward(losses, per_task)

    engine = Spy(model, Recording(TASKS, grad_source="representation"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    losses, _ = train_step(model, batch, TASKS, engine, optimizer, None)
    assert len(engine.handed) == len(TASKS) and all(loss.ndim == 0 for loss in engine.handed)
    assert torch.equal(torch.stack(engine.handed).detach(), losses)


def test_gradnorm_from_the_per_task_scalars_equals_gradnorm_from_the_stacked_losses():
    model, batch = make_model(), make_batch()
    losses = per_task_losses(model(batch), batch, TASKS)
    results = []
    for scalars in (losses, None):
        gradnorm = GradNorm(TASKS)
        gradnorm.attach(model)
        stacked = torch.stack(losses)
        objective = (
            gradnorm.combine(stacked) if scalars is None else gradnorm.combine_task_losses(stacked, scalars)
        )
        results.append((objective.detach(), gradnorm.weights.grad.clone()))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-6)
    assert results[0][1][2] == 0.0  # task c: no labelled row, a zero gradient norm


# b reads a's estimate through a stop-gradient: every task's loss reaches the representation only through its
# own head's view of it, so one backward pass gives every row
SEPARABLE = TASKS | {"b": Task(name="b", kind="regression", target="b", inputs_from=("a",))}


@pytest.mark.parametrize("tasks,passes", [(SEPARABLE, 1), (TASKS, len(TASKS))], ids=["separable", "not"])
def test_one_pass_through_the_views_gives_the_naive_rows_where_the_heads_are_separable(tasks, passes):
    batch = make_batch()
    torch.manual_seed(0)
    model = HardSharing(lambda: MLPEncoder((IN_DIM,), [12, 8]), tasks, {"hidden": [5]})
    losses = per_task_losses(model(batch), batch, tasks)
    expected_rows = naive_rows(losses, [model.shared_representation])
    expected_heads = torch.autograd.grad(sum(losses), model.heads.parameters(), retain_graph=True)
    assert bool(model.representation_views()) == (passes == 1)

    engine = BackwardEngine(model, Recording(tasks, grad_source="representation"))
    engine.backward(torch.stack(losses), losses)

    assert torch.allclose(engine.weighting.seen, expected_rows, rtol=1e-6, atol=1e-8)
    assert not engine.weighting.seen[list(tasks).index("c")].any()  # the task without labels: a zero row
    for p, g in zip(model.heads.parameters(), expected_heads, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)
    assert engine.backward_passes == passes + 1  # the rows, then the direction through the trunk
