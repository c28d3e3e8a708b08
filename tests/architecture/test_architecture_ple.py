"""PLE and CGC (mtlrun/architecture/ple.py): the level structure (CGC has no shared gate), gates are
softmaxes, the towers read the formula's mixtures, which task losses reach which experts (and that the roles
say exactly that), exact gradients through the representation, per-task expert usage diagnostics, and config
errors. The generic contract is in test_architectures.py and test_groups.py."""

from __future__ import annotations

import pytest
import torch
from conftest import first_batch, nonzero, tiny_experts

from mtlrun.errors import ConfigError
from mtlrun.trainer.step import task_losses

BATCH = 6


def build(architecture: str = "ple", data: str = "mmoe_synthetic", **options):
    """PLE's experts also have hidden layers of their own: tiny too (``hidden`` overrides it)."""
    return tiny_experts(architecture, data, **({"hidden": [6]} | options))


def grads_by_task(built) -> dict[str, set[str]]:
    """For each task, the names of the parameters its loss moves."""
    model = built.model
    batch = first_batch(built.data, BATCH)
    reached = {}
    for index, task in enumerate(built.tasks):
        model.zero_grad(set_to_none=True)
        task_losses(model(batch), batch, built.tasks)[index].backward()
        reached[task] = {n for n, p in model.named_parameters() if nonzero(p.grad)}
    return reached


def test_cgc_is_one_level_without_a_shared_gate() -> None:
    cgc = build("cgc").model
    assert len(cgc.levels) == 1 and cgc.levels[0].shared_gate is None
    ple = build(levels=3).model
    assert [lvl.shared_gate is not None for lvl in ple.levels] == [True, True, False]
    # upper-level experts are MLPs on the level below: hidden=[6] after the encoder's 8 features
    assert ple.levels[1].shared[0][0].in_features == 8 and ple.levels[2].shared[0][0].in_features == 6
    assert ple.levels[1].gates["y1"].in_features == 8  # gates above read the previous gate outputs


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("data", ["mmoe_synthetic", "multidigits"])
def test_gates_are_softmaxes_over_their_experts(levels: int, data: str) -> None:
    built = build(data=data, levels=levels, specific_experts=2)
    model = built.model
    model(first_batch(built.data, BATCH))
    tasks = len(built.tasks)
    expected = {(t, j): 2 + 1 for t in built.tasks for j in range(levels)}
    expected |= {(None, j): 2 * tasks + 1 for j in range(levels - 1)}
    assert {k: w.shape[1] for k, w in model.gate_weights.items()} == expected
    for weights in model.gate_weights.values():
        assert (weights >= 0).all() and torch.allclose(weights.sum(1), torch.ones(BATCH))


def test_cgc_towers_read_the_gate_weighted_sum_of_own_and_shared_experts() -> None:
    built = build("cgc", specific_experts=2, shared_experts=2)
    model, level = built.model, built.model.levels[0]
    batch = first_batch(built.data, BATCH)
    out = model(batch)
    x = batch["x"]
    for task in built.tasks:
        experts = torch.stack([e(x) for e in [*level.specific[task], *level.shared]], dim=1)
        weights = level.gates[task](x).softmax(-1)
        mixture = (weights.unsqueeze(-1) * experts).sum(1)
        expected = built.tasks[task].prepare_prediction(model.heads.heads[task](mixture))
        assert torch.allclose(out[task], expected, atol=1e-5), task


def test_cgc_task_experts_and_gates_receive_only_their_task_gradient() -> None:
    built = build("cgc")
    reached = grads_by_task(built)
    for task, names in reached.items():
        for other in built.tasks:
            own = {n for n in names if f".specific.{other}." in n or f".gates.{other}." in n}
            assert bool(own) is (other == task), (task, other)
        assert any(".shared." in n for n in names)


def test_ple_lower_task_experts_reach_every_task_through_the_shared_gate() -> None:
    """Two levels: task s's level-2 experts and gates get no gradient from task t, but its level-1 experts do
    (level-1 experts feed the shared gate, hence the level-2 shared experts that every task reads) while its
    level-1 gate does not (it feeds only s's level-2 experts and gate). The roles say the same."""
    built = build(levels=2)
    roles = built.model.parameter_roles()
    reached = grads_by_task(built)
    t, s = list(built.tasks)
    assert any(n.startswith(f"levels.0.specific.{s}.") for n in reached[t])
    assert not any(
        n.startswith((f"levels.1.specific.{s}.", f"levels.1.gates.{s}.", f"levels.0.gates.{s}."))
        for n in reached[t]
    )
    assert roles[f"levels.0.specific.{s}.0.stages.0.0.weight"].task is None
    assert roles[f"levels.0.gates.{s}.weight"].task == s
    assert roles[f"levels.1.specific.{s}.0.0.weight"].task == s


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_roles_are_tight(levels: int) -> None:
    """A parameter a task owns gets gradient from that task alone; a shared one from every task. (Tanh:
    tiny ReLU experts can be dead on a batch, which would cut paths the structure has.)"""
    built = build(levels=levels, activation="Tanh", encoder={"activation": "Tanh"})
    roles = built.model.parameter_roles()
    reached = grads_by_task(built)
    for name, role in roles.items():
        by = {t for t, names in reached.items() if name in names}
        assert by == ({role.task} if role.task else set(built.tasks)), (name, role)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_gradients_through_the_representation_are_exact(levels: int) -> None:
    """MGDA-UB's premise: every shared parameter reaches the losses only through the representation."""
    built = build(levels=levels, specific_experts=2)
    model = built.model
    batch = first_batch(built.data, BATCH)
    loss = (task_losses(model(batch), batch, built.tasks) * torch.tensor([0.3, 1.7])).sum()
    shared = model.shared_parameters()
    direct = torch.autograd.grad(loss, shared, retain_graph=True)
    rep = model.shared_representation
    assert rep.ndim == 2 and rep.requires_grad
    (g,) = torch.autograd.grad(loss, rep, retain_graph=True)
    through = torch.autograd.grad(rep, shared, grad_outputs=g, allow_unused=True)
    for name, a, b in zip(
        [n for n, r in model.parameter_roles().items() if r.task is None], direct, through, strict=True
    ):
        assert b is not None and torch.allclose(a, b, atol=1e-6), name


def test_diagnostics_report_usage_per_task_and_level_and_reset() -> None:
    built = build(levels=2, specific_experts={"y1": 2, "y2": 1})
    model = built.model
    model.eval()
    with torch.no_grad():
        for batch in list(built.data.batches("val", 8))[:2]:
            model(batch)
    stats = model.diagnostics()
    assert list(stats["y1"]) == [f"expert_usage/{j}/{e}" for j in (1, 2) for e in ("own0", "own1", "shared0")]
    assert list(stats["y2"]) == [f"expert_usage/{j}/{e}" for j in (1, 2) for e in ("own0", "shared0")]
    assert list(stats["model"]) == [
        f"shared_gate_usage/1/{e}" for e in ("y1_own0", "y1_own1", "y2_own0", "shared0")
    ]
    for row in stats.values():
        for level in {k.rsplit("/", 1)[0] for k in row}:
            assert sum(v for k, v in row.items() if k.startswith(level + "/")) == pytest.approx(1.0, abs=1e-6)
    assert model.diagnostics() == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"levels": 0}, r"architecture\.levels"),
        ({"shared_experts": 0}, r"architecture\.shared_experts"),
        ({"specific_experts": {"nope": 1}}, r"specific_experts: unknown task"),
        ({"specific_experts": -1}, r"specific_experts: counts"),
        ({"hidden": []}, r"architecture\.hidden"),
    ],
    ids=["levels", "shared", "unknown-task", "negative", "no-hidden"],
)
def test_bad_options_are_config_errors(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**options)
