"""MMoE and OMoE (mtlrun/architecture/mmoe.py): gates are softmaxes (sum to 1), the towers read the
gate-weighted sum of the experts, OMoE's single gate gives every task the same mixture, a task's loss never
reaches another task's gate, the representation is the stacked expert outputs (and gradients through it are
exact), and the evaluation diagnostics report each task's mean expert usage. The generic contract is in
test_architectures.py and test_groups.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
from conftest import compose_cfg, first_batch, nonzero, tiny_experts

from mtlrun.architecture.mixing import InputFeatures
from mtlrun.errors import ConfigError
from mtlrun.trainer.runner import run
from mtlrun.trainer.step import task_losses

BATCH = 6


def build(architecture: str = "mmoe", data: str = "mmoe_synthetic", **options):
    return tiny_experts(architecture, data, **options)


def shared_grads(model, loss) -> list[torch.Tensor]:
    params = model.shared_parameters()
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


CASES = [("mmoe", "input"), ("mmoe", "experts"), ("omoe", "input"), ("omoe", "experts")]
IDS = [f"{a}-{g}" for a, g in CASES]


@pytest.mark.parametrize("data", ["mmoe_synthetic", "multidigits"])
@pytest.mark.parametrize(("architecture", "gate_input"), CASES, ids=IDS)
def test_gates_are_softmaxes_and_towers_read_the_weighted_sum(architecture, gate_input, data) -> None:
    built = build(architecture, data, gate_input=gate_input, num_experts=3)
    model = built.model
    batch = first_batch(built.data, BATCH)
    out = model(batch)
    experts = torch.stack([e(batch["x"]) for e in model.experts], dim=1)  # [N, E, D]
    assert set(model.gate_weights) == set(built.tasks)
    for name, weights in model.gate_weights.items():
        assert weights.shape == (BATCH, 3)
        assert (weights >= 0).all() and torch.allclose(weights.sum(1), torch.ones(BATCH))
        mixture = (weights.unsqueeze(-1) * experts).sum(1)
        expected = built.tasks[name].prepare_prediction(model.heads.heads[name](mixture))
        assert torch.allclose(out[name], expected, atol=1e-5), name


def test_one_shared_gate_gives_every_task_the_same_mixture() -> None:
    built = build("omoe")
    model = built.model
    assert isinstance(model.gate, nn.Linear) and not hasattr(model, "gates")
    assert model.parameter_counts()["mixing"] == model.gate.weight.numel()
    model(first_batch(built.data, BATCH))
    first, *rest = model.gate_weights.values()
    assert rest and all(w is first for w in rest)
    # the mixture every tower reads is the representation
    mixture = first.unsqueeze(-1) * torch.stack(
        [e(first_batch(built.data, BATCH)["x"]) for e in model.experts], 1
    )
    assert torch.allclose(model.shared_representation, mixture.sum(1), atol=1e-6)


@pytest.mark.parametrize("gate_input", ["input", "experts"])
def test_a_task_loss_never_reaches_another_task_gate(gate_input: str) -> None:
    built = build("mmoe", gate_input=gate_input)
    model = built.model
    batch = first_batch(built.data, BATCH)
    for index, task in enumerate(built.tasks):
        model.zero_grad(set_to_none=True)
        task_losses(model(batch), batch, built.tasks)[index].backward()
        for name, gate in model.gates.items():
            assert nonzero(gate.weight.grad) is (name == task), (task, name)
        assert all(nonzero(e[0].weight.grad) for e in (x.stages[0] for x in model.experts)), task


def test_representation_is_the_stacked_expert_outputs() -> None:
    built = build("mmoe", num_experts=5)
    model = built.model
    batch = first_batch(built.data, BATCH)
    model(batch)
    rep = model.shared_representation
    dim = model.experts[0].out_dim
    assert rep.shape == (BATCH, 5 * dim) and rep.requires_grad  # [N, E, D] flattened, expert-major
    experts = torch.stack([e(batch["x"]) for e in model.experts], dim=1)
    assert torch.equal(rep.unflatten(1, (5, dim)), experts)


@pytest.mark.parametrize(("architecture", "gate_input"), CASES, ids=IDS)
def test_gradients_through_the_representation_are_exact(architecture: str, gate_input: str) -> None:
    """MGDA-UB's premise: every shared parameter reaches the losses only through the representation."""
    built = build(architecture, gate_input=gate_input)
    model = built.model
    batch = first_batch(built.data, BATCH)
    loss = (task_losses(model(batch), batch, built.tasks) * torch.tensor([0.3, 1.7])).sum()
    direct = shared_grads(model, loss)
    rep = model.shared_representation
    (g,) = torch.autograd.grad(loss, rep, retain_graph=True)
    through = torch.autograd.grad(rep, model.shared_parameters(), grad_outputs=g, allow_unused=True)
    for a, b in zip(direct, through, strict=True):
        assert a is not None and b is not None
        assert torch.allclose(a, b, atol=1e-6)


def test_diagnostics_report_mean_expert_usage_per_task_and_reset() -> None:
    built = build("mmoe", num_experts=4)
    model = built.model
    batches = list(built.data.batches("val", 8))[:2]
    model.train()
    model(batches[0])  # training forwards are not counted
    assert model.diagnostics() == {}
    model.eval()
    seen = {t: [] for t in built.tasks}
    with torch.no_grad():
        for batch in batches:
            model(batch)
            for t, w in model.gate_weights.items():
                seen[t].append(w)
    stats = model.diagnostics()
    assert set(stats) == set(built.tasks)
    for task, usage in stats.items():
        assert list(usage) == [f"expert_usage/{e}" for e in range(4)]
        assert sum(usage.values()) == pytest.approx(1.0, abs=1e-6)
        expected = torch.cat(seen[task]).mean(0).tolist()
        assert list(usage.values()) == pytest.approx(expected, abs=1e-6)
    assert model.diagnostics() == {}  # reset after being read


def test_expert_usage_rows_are_written_for_val_and_test(tmp_path: Path) -> None:
    cfg = compose_cfg(["debug=smoke", "data=kendall_toy", "architecture=omoe"])
    cfg.architecture.num_experts, cfg.encoder.hidden, cfg.trainer.checkpoint = 2, [8], False
    run(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "metrics.csv")
    usage = table[table.metric.str.startswith("expert_usage/")]
    assert set(usage.split) == {"val", "test"} and set(usage.task) == {"y1", "y2"}
    sums = usage.groupby(["epoch", "split", "task"]).value.sum()
    assert len(sums) == 2 * 2 * 2 and sums.to_numpy() == pytest.approx(1.0, abs=1e-6)


def test_input_features_read_the_encoders_input_shape() -> None:
    class Shaped(nn.Module):
        in_shape = (3, 7, 7)

    features = InputFeatures(Shaped())
    assert features.shape == (3, 7, 7) and features.out_dim == 147
    assert features(torch.rand(2, 3, 7, 7)).shape == (2, 147)
    with pytest.raises(ConfigError, match="gate_input=experts"):
        InputFeatures(nn.ReLU())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_experts": 0}, r"architecture\.num_experts"),
        ({"gate_input": "hidden"}, r"architecture\.gate_input: 'hidden'"),
    ],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build("mmoe", "kendall_toy", **options)
