"""Non-finite losses: on the CPU the step that produced one is stopped at once; deferred (as on a GPU) the
error still names the first such step, whether found at a periodic read, at the epoch's end, or because a
later step failed."""

from __future__ import annotations

import pytest
import torch

from mtlrun.errors import TrainingError
from mtlrun.trainer.finite import FiniteLosses

TASKS = ["a", "b"]
GOOD, BAD = torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("nan")])


def test_on_the_cpu_the_step_is_stopped_at_once() -> None:
    finite = FiniteLosses(TASKS, torch.device("cpu"))
    finite.observe(GOOD, 1, 0)
    with pytest.raises(TrainingError, match=r"\['b'\] is \[nan\] at epoch 1, step 1"):
        finite.observe(BAD, 1, 1)


def test_deferred_the_first_bad_step_is_named_at_the_next_read() -> None:
    finite = FiniteLosses(TASKS, torch.device("cpu"), every=4)
    finite.observe(GOOD, 2, 10)
    finite.observe(BAD, 2, 11)  # recorded, not read yet
    finite.observe(torch.tensor([float("inf"), float("nan")]), 2, 12)  # a later one does not replace it
    with pytest.raises(TrainingError, match=r"\['b'\] is \[nan\] at epoch 2, step 11"):
        finite.observe(GOOD, 2, 13)  # the 4th observation reads the record


def test_deferred_a_read_finds_nothing_when_all_was_finite() -> None:
    finite = FiniteLosses(TASKS, torch.device("cpu"), every=3)
    for step in range(7):
        finite.observe(GOOD * step, 1, step)
    finite.check()  # what the loop calls before a checkpoint and at the epoch's end


def test_a_failing_step_is_reported_as_the_nan_that_caused_it() -> None:
    """Setup.step checks the record when a step raises: the NaN loss is the cause, not the later error."""
    from conftest import compose_cfg

    from mtlrun.trainer.setup import setup

    s = setup(compose_cfg(["data=kendall_toy", "trainer.device=cpu"]))
    s.finite = FiniteLosses(list(s.tasks), s.device, every=100)
    batch = next(s.data.batches("train", 16))
    bad = {**batch, "y": {**batch["y"], "y1": batch["y"]["y1"] * float("nan")}}
    s.step(bad, where=(1, 0))  # deferred: trains on, with NaN weights now

    def broken_step(*args, **kwargs):
        raise RuntimeError("a solver choked on NaN")

    s._step = broken_step
    with pytest.raises(TrainingError, match=r"\['y1'\].*epoch 1, step 0"):
        s.step(batch, where=(1, 1))
