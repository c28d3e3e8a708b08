"""Step diagnostics: sampled gradient cosines equal the cosines of independently computed task gradients;
the penalty row is the mean of the model's penalty over the steps; both survive a checkpoint round trip."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import build_objects, first_batch, small_cfg

from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.diagnostics import StepDiagnostics, cosine_matrix
from mtlrun.trainer.step import task_losses
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.equal import Equal


class SumOfTaskGrads(GradientWeighting):
    direction_is_weighted_sum = True

    def aggregate(self, grads, losses=None):
        self.last_weights = torch.ones(len(grads))
        return grads.sum(0)


def step(built, engine, batch) -> None:
    built.model.zero_grad(set_to_none=True)
    engine.backward(task_losses(built.model(batch), batch, built.tasks))


def expected_cosines(built, batch) -> dict[str, float]:
    """Each task's gradient over the shared parameters, by its own autograd call, then their cosines."""
    shared = built.model.shared_parameters()
    losses = task_losses(built.model(batch), batch, built.tasks)
    rows = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        for loss in losses
    ]
    names = list(built.tasks)
    cos = cosine_matrix(torch.stack(rows))
    return {
        f"{names[i]}~{names[j]}": cos[i, j].item() for i, j in itertools.combinations(range(len(names)), 2)
    }


def test_sampled_cosines_equal_those_of_independent_task_gradients():
    built = build_objects(small_cfg(["architecture=hard_sharing"]))
    batch = first_batch(built.data, 8)
    expected = expected_cosines(built, batch)  # before any step changes the weights
    diagnostics = StepDiagnostics(list(built.tasks), cosine_every=1)
    engine = BackwardEngine(built.model, SumOfTaskGrads(built.tasks), diagnostics)
    step(built, engine, batch)  # the sample is taken before the optimiser (none here) moves anything
    rows = diagnostics.pop_rows()
    assert {pair: row["grad_cosine"] for pair, row in rows.items()} == pytest.approx(expected, abs=1e-5)
    assert diagnostics.pop_rows() == {}  # popping starts the sums again


def test_cosines_are_sampled_every_k_steps_and_cost_loss_based_methods_nothing_unless_asked():
    built = build_objects(small_cfg(["architecture=hard_sharing"]))
    batch = first_batch(built.data, 8)
    diagnostics = StepDiagnostics(list(built.tasks), cosine_every=2)
    engine = BackwardEngine(built.model, SumOfTaskGrads(built.tasks), diagnostics)
    step(built, engine, batch)
    assert diagnostics.cosine_count == 0  # step 1 is not a multiple of 2
    step(built, engine, batch)
    assert diagnostics.cosine_count == 1

    quiet = StepDiagnostics(list(built.tasks), cosine_every=1)
    loss_based = BackwardEngine(built.model, Equal(built.tasks), quiet)
    step(built, loss_based, batch)
    assert quiet.pop_rows() == {} and loss_based.backward_passes == 1
    asked = StepDiagnostics(list(built.tasks), cosine_every=1)
    paying = BackwardEngine(built.model, Equal(built.tasks), asked, cosine_for_loss_based=True)
    step(built, paying, batch)
    assert set(asked.pop_rows()) == set(expected_cosines(built, batch))
    assert paying.backward_passes == len(built.tasks) + 1  # T passes for the sample, one for the step


def test_penalty_row_is_the_mean_over_steps_and_the_sums_survive_a_state_round_trip():
    diagnostics = StepDiagnostics(["a", "b"], cosine_every=0)
    for value in (1.0, 2.0, 6.0):
        diagnostics.record_penalty(torch.tensor(value))
    copy = StepDiagnostics(["a", "b"], cosine_every=0)
    copy.load_state_dict(diagnostics.state_dict())
    assert diagnostics.pop_rows() == {"model": {"penalty": pytest.approx(3.0)}}
    assert copy.pop_rows() == {"model": {"penalty": pytest.approx(3.0)}}


def test_a_checkpoint_from_before_regularisers_resumes_its_penalty_sum():
    """Checkpoints written before `penalties` held one running sum of the model's penalty; it carries on."""
    diagnostics = StepDiagnostics(["a", "b"], cosine_every=0)
    old = {"cosine_sum": None, "cosine_count": 0, "penalty_sum": torch.tensor(3.0), "penalty_count": 2}
    diagnostics.load_state_dict(old)
    diagnostics.record_penalty(torch.tensor(6.0))
    assert diagnostics.pop_rows() == {"model": {"penalty": 3.0}}
    diagnostics.load_state_dict(old | {"penalty_sum": None, "penalty_count": 0})
    assert diagnostics.pop_rows() == {}
