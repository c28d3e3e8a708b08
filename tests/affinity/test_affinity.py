"""TAG's lookahead affinity (mtlrun/trainer/affinity.py): Z against a computation by hand, the exact restore
of everything a measurement touches, a bit-identical trajectory with it on or off, its state and outputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from conftest import small_cfg
from interruptions import interrupted_and_resumed

from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.errors import ConfigError
from mtlrun.grouping import AFFINITY_FILE, read_affinity
from mtlrun.tasks import build_tasks
from mtlrun.trainer import checkpoint
from mtlrun.trainer.affinity import TaskAffinity
from mtlrun.trainer.setup import setup
from mtlrun.trainer.step import per_task_losses

NAMES = ["a", "b", "c"]


class Encoder(nn.Module):
    """A small trunk with what a measurement must leave alone: dropout (the RNG) and batch norm (buffers)."""

    def __init__(self, dropout: float = 0.0, norm: bool = False) -> None:
        super().__init__()
        layers = [nn.Linear(4, 5)] + ([nn.BatchNorm1d(5)] if norm else []) + [nn.Tanh(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)
        self.out_dim = 5

    def forward(self, x):
        return self.net(x)


def tiny(dropout: float = 0.0, norm: bool = False):
    torch.manual_seed(0)
    tasks = build_tasks({n: {"kind": "regression"} for n in NAMES})
    model = HardSharing(lambda: Encoder(dropout, norm), tasks, {"hidden": []})
    x = torch.randn(16, 4)
    batch = {"x": x, "y": {"a": x[:, 0], "b": x[:, 0] + 0.1 * x[:, 1], "c": -x[:, 2]}}
    return model, tasks, batch


def losses_at(model, tasks, batch) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(per_task_losses(model(batch), batch, tasks))


def by_hand(model, tasks, batch, step) -> torch.Tensor:
    """Z(i→j) = 1 − L_j(θ_s − step(∇L_i)) / L_j(θ_s), on a copy of the model, heads fixed."""
    base = losses_at(model, tasks, batch)
    z = torch.empty(len(tasks), len(tasks))
    for i in range(len(tasks)):
        clone = copy.deepcopy(model)
        shared = clone.shared_parameters()
        loss = per_task_losses(clone(batch), batch, tasks)[i]
        grads = torch.autograd.grad(loss, shared)
        with torch.no_grad():
            for p, g in zip(shared, grads, strict=True):
                p -= step(g)
        z[i] = 1 - losses_at(clone, tasks, batch) / base
    return z


@pytest.mark.parametrize("update", ["optimizer", "sgd"])
def test_z_is_the_lookahead_loss_ratio_under_sgd(update):
    model, tasks, batch = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    z = TaskAffinity.build(1, update, model, optimizer, tasks).measure(batch, tasks)
    expected = by_hand(model, tasks, batch, lambda g: 0.3 * g)
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-6)
    assert z[0, 1] > 0 > z[0, 2]  # a helps b (same target up to noise); a's step moves c the wrong way


def test_adam_lookahead_is_the_optimizers_own_first_step_and_leaves_its_state_empty():
    """From an empty Adam state the update is lr · g / (|g| + eps) (m̂ = g, v̂ = g²)."""
    model, tasks, batch = tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0, eps=1e-8)
    z = TaskAffinity.build(1, "optimizer", model, optimizer, tasks).measure(batch, tasks)
    expected = by_hand(model, tasks, batch, lambda g: 0.01 * g / (g.abs() + 1e-8))
    torch.testing.assert_close(z, expected, rtol=1e-4, atol=1e-6)
    assert len(optimizer.state) == 0


def snapshot(model, optimizer):
    return (
        [t.clone() for t in model.state_dict().values()],
        copy.deepcopy(optimizer.state_dict()),
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
    )


@pytest.mark.parametrize("kind", ["adamw", "sgd_momentum"])
def test_a_measurement_restores_parameters_buffers_state_grads_and_rng_exactly(kind):
    model, tasks, batch = tiny(dropout=0.3, norm=True)
    if kind == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(2):  # a non-empty optimizer state, and a .grad left over
        optimizer.zero_grad()
        sum(per_task_losses(model(batch), batch, tasks)).backward()
        optimizer.step()
    grads = [p.grad for p in model.parameters()]
    before = snapshot(model, optimizer)
    z = TaskAffinity.build(1, "optimizer", model, optimizer, tasks).measure(batch, tasks)
    after = snapshot(model, optimizer)
    assert torch.isfinite(z).all() and z.abs().sum() > 0
    for x, y in zip(before[0], after[0], strict=True):
        assert torch.equal(x, y)  # parameters and batch-norm statistics
    for key, state in before[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after[1]["state"][key][name])), name
    assert all(g is p.grad for g, p in zip(grads, model.parameters(), strict=True))
    assert torch.equal(before[3], after[3])


def train_params(overrides, steps: int = 4):  # the small training split holds 4 batches of 16
    cfg = small_cfg(["data=task_clusters", "encoder.hidden=[16]", "encoder.dropout=0.2", *overrides])
    s = setup(cfg)
    for k, batch in enumerate(s.data.batches("train", 16, shuffle=True, generator=s.shuffle)):
        if k == steps:
            break
        s.step(batch, where=(1, k))
    return s, [p.detach().clone() for p in s.model.parameters()]


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_the_trajectory_is_bit_identical_with_affinity_on_or_off(optim):
    _, off = train_params([f"optim={optim}", "trainer.affinity_every=0"])
    s, on = train_params([f"optim={optim}", "trainer.affinity_every=2"])
    assert s.affinity.measurements == 2
    assert all(torch.equal(a, b) for a, b in zip(off, on, strict=True))


def test_state_survives_a_checkpoint_and_the_csv_holds_the_mean(tmp_path):
    s, _ = train_params(["trainer.affinity_every=1"], steps=3)
    path = tmp_path / "state.pt"
    torch.save(s.affinity.state_dict(), path)
    again = TaskAffinity(list(s.tasks), 1)
    again.load_state_dict(torch.load(path, weights_only=True))
    assert again.steps == 3 and again.measurements == 3
    torch.testing.assert_close(again.mean(), s.affinity.mean())
    again.write(tmp_path)
    table = read_affinity(tmp_path / AFFINITY_FILE)
    assert table.tasks == list(s.tasks) and table.measurements == [3] * len(s.tasks)
    torch.testing.assert_close(torch.tensor(table.values, dtype=torch.float64), s.affinity.mean())


def test_an_undefined_cell_is_left_out_of_its_mean():
    affinity = TaskAffinity(["a", "b"], 1)
    affinity.record(torch.tensor([[0.2, math.nan], [0.1, 0.4]]))
    affinity.record(torch.tensor([[0.4, math.nan], [0.3, 0.0]]))
    mean = affinity.mean()
    torch.testing.assert_close(mean[0, 0], torch.tensor(0.3, dtype=torch.float64))
    assert math.isnan(mean[0, 1]) and affinity.measurements == 2


def test_off_by_default_and_writes_nothing(tmp_path):
    affinity = TaskAffinity.build(0, "optimizer", None, None, {"a": None})
    affinity.observe({}, {})
    affinity.write(tmp_path)
    assert affinity.steps == 0 and not (tmp_path / AFFINITY_FILE).exists()


def test_a_design_that_shares_nothing_or_a_data_parallel_run_is_refused():
    model, tasks, _ = tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"trainer.affinity_every=5: .*data-parallel"):
        TaskAffinity.build(5, "optimizer", model, optimizer, tasks, world_size=2)
    with pytest.raises(ConfigError, match=r"trainer.affinity_every=1: SingleTask shares no parameter"):
        setup(small_cfg(["data=task_clusters", "architecture=single_task", "trainer.affinity_every=1"]))


@pytest.mark.slow  # three smoke runs in this process (~6 s)
def test_a_resumed_run_keeps_the_running_mean_and_measures_at_the_same_steps(tmp_path, monkeypatch):
    """Stopped by SIGTERM after step 5 (measured at 2 and 4) and resumed from its checkpoint, the run
    writes the same task_affinity.csv as an uninterrupted one (9 steps: 4 measurements)."""
    overrides = ["data=task_clusters", "debug=smoke", "trainer.epochs=3", "trainer.affinity_every=2"]

    def measured_twice(folder):
        assert checkpoint.load(folder / "checkpoint.pt")["affinity"]["measurements"] == 2

    full, resumed = interrupted_and_resumed(tmp_path, monkeypatch, overrides, 5, stopped=measured_twice)
    expected = (full / AFFINITY_FILE).read_text()
    assert (resumed / AFFINITY_FILE).read_text() == expected and expected.count(",4\n") == 6
