"""The model contract, for every architecture on every data set: predictions per task, parameter roles that
match what each parameter actually does, the shared representation, and inputs_from wiring."""

import pytest
import torch
from conftest import (
    SERVES,
    build_objects,
    built_or_refused,
    first_batch,
    nonzero,
    one_data_option_per_class,
    options,
    small_cfg,
)
from omegaconf import OmegaConf

from mtlrun.architecture.base import MTLModel, ParamRole
from mtlrun.data.base import TensorData
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks
from mtlrun.trainer.backward import gradients_through_views
from mtlrun.trainer.step import per_task_losses, task_losses

PAIRS = [(arch, data) for arch in options("architecture") for data in one_data_option_per_class()]
BATCH = 6


@pytest.fixture(scope="module", params=PAIRS, ids=[f"{a}-{d}" for a, d in PAIRS])
def built(request):
    architecture, data = request.param
    return built_or_refused(
        small_cfg([f"architecture={architecture}", f"data={data}", *SERVES.get((architecture, data), [])])
    )


def task_loss(built, batch, out, name):
    task = built.tasks[name]
    return task.loss_per_sample(out[name], batch["y"][task.target]).mean()


def test_data_and_model_are_built_from_the_config_on_the_shrunk_data(built):
    assert isinstance(built.data, TensorData) and isinstance(built.model, MTLModel)
    assert built.data.sizes() == {"train": 64, "val": 32, "test": 32}  # the sizes shrink() set
    assert list(built.tasks) == list(built.cfg.tasks) == list(built.model.tasks)


def test_forward_returns_one_prediction_per_task_with_its_shape(built):
    batch = first_batch(built.data, BATCH)
    out = built.model(batch)
    assert list(out) == list(built.tasks)
    for name, task in built.tasks.items():
        expected = (BATCH, task.num_classes) if task.kind in ("multiclass", "multilabel") else (BATCH,)
        assert out[name].shape == expected, name
        assert torch.isfinite(out[name]).all()
    assert torch.isfinite(task_losses(out, batch, built.tasks)).all()


def test_parameter_roles_partition_the_parameters(built):
    model, tasks = built.model, built.tasks
    names = [name for name, _ in model.named_parameters()]
    roles = model.parameter_roles()
    assert sorted(roles) == sorted(names) and len(names) == len(set(names))
    for name, role in roles.items():
        assert role.part in ("trunk", "head", "mixing"), name
        assert role.task is None or role.task in tasks, name
    shared = {n for n, r in roles.items() if r.task is None and r.part != "mixing"}
    mixing = {n for n, r in roles.items() if r.part == "mixing"}
    owned = {t: {n for n, r in roles.items() if r.task == t and r.part != "mixing"} for t in tasks}
    sets = [shared, mixing, *owned.values()]
    assert sum(len(s) for s in sets) == len(names)  # pairwise disjoint ...
    assert set().union(*sets) == set(names)  # ... and together all parameters
    for task in tasks:  # every task has its own head
        assert any(roles[n].part == "head" for n in owned[task]), task


def test_head_parameters_are_exactly_those_of_each_task_head(built):
    """Every architecture holds its TaskHeads at `heads`: each head's parameters are part `head`, owned by
    the head's task, and no other parameter is a head."""
    model = built.model
    roles = model.parameter_roles()
    expected = {
        f"heads.heads.{t}.{n}": ParamRole("head", t)
        for t, head in model.heads.heads.items()
        for n, _ in head.named_parameters()
    }
    assert {n: r for n, r in roles.items() if r.part == "head"} == expected


def test_shared_parameters_are_those_no_task_owns(built):
    model = built.model
    roles = model.parameter_roles()
    expected = [p for n, p in model.named_parameters() if roles[n].task is None]
    assert [id(p) for p in model.shared_parameters()] == [id(p) for p in expected]
    owned = [p for n, p in model.named_parameters() if roles[n].task is not None]
    assert [id(p) for p in model.task_owned_parameters()] == [id(p) for p in owned]


def test_parameter_counts_add_up(built):
    model = built.model
    roles = model.parameter_roles()
    params = dict(model.named_parameters())
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    mixing = {n for n, r in roles.items() if r.part == "mixing"}
    assert counts["mixing"] == sum(p.numel() for n, p in params.items() if n in mixing)
    assert counts["shared"] == sum(
        p.numel() for n, p in params.items() if roles[n].task is None and n not in mixing
    )
    for task in built.tasks:
        owned = (p.numel() for n, p in params.items() if roles[n].task == task and n not in mixing)
        assert counts[f"task.{task}"] == sum(owned)
    parts = counts["shared"] + counts["mixing"] + sum(counts[f"task.{t}"] for t in built.tasks)
    assert parts == counts["total"]


def test_shared_representation(built):
    model = built.model
    model(first_batch(built.data, BATCH))
    if model.has_representation:
        rep = model.shared_representation
        assert isinstance(rep, torch.Tensor) and rep.ndim == 2 and rep.shape[0] == BATCH and rep.shape[1] > 0
        assert rep.requires_grad  # gradient methods differentiate against it
    else:
        assert model.shared_representation is None


def test_representation_views_give_each_task_its_own_gradient(built):
    """Where a design hands out per-task views of its shared representation (one backward pass for the T rows
    of grad_source=representation), row t equals task t's own gradient with respect to the representation."""
    model, tasks = built.model, built.tasks
    batch = first_batch(built.data, BATCH)
    losses = per_task_losses(model(batch), batch, tasks)
    views = model.representation_views()
    if not model.has_representation:
        assert views == {}  # no representation, nothing to view
        return
    if views:
        rep = model.shared_representation
        own = [_gradient_or_zero(loss, rep).flatten() for loss in losses]
        rows = gradients_through_views(losses, [views[t] for t in tasks])
        assert torch.allclose(rows, torch.stack(own), rtol=1e-5, atol=1e-7)


def _gradient_or_zero(loss: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    grad = (
        torch.autograd.grad(loss, rep, retain_graph=True, allow_unused=True)[0]
        if loss.requires_grad
        else None
    )
    return torch.zeros_like(rep) if grad is None else grad


def test_each_task_loss_moves_only_its_own_and_shared_parameters(built):
    """The roles say who owns what; gradients must agree: task t's loss gives zero gradient to every parameter
    another task owns, non-zero gradient to its own, and (when there are any) to the shared ones."""
    model, tasks = built.model, built.tasks
    roles = model.parameter_roles()
    params = dict(model.named_parameters())
    batch = first_batch(built.data, BATCH)
    for name in tasks:
        model.zero_grad(set_to_none=True)
        task_loss(built, batch, model(batch), name).backward()
        others = [n for n, r in roles.items() if r.task not in (None, name)]
        leaked = [n for n in others if nonzero(params[n].grad)]
        assert leaked == [], f"the loss of {name} moves parameters of other tasks: {leaked}"
        assert any(nonzero(params[n].grad) for n, r in roles.items() if r.task == name), name
        shared = [n for n, r in roles.items() if r.task is None]
        if shared:
            assert any(nonzero(params[n].grad) for n in shared), name


def test_single_task_shares_nothing():
    built = build_objects(small_cfg(["architecture=single_task"]))
    assert built.model.shared_parameters() == []
    assert built.model.parameter_counts()["shared"] == 0
    assert not built.model.has_representation


# ------------------------------------------------------------------------------------------- inputs_from


@pytest.mark.parametrize("architecture", options("architecture"))
@pytest.mark.parametrize("detach", [True, False])
def test_inputs_from_detach_stops_the_gradient(architecture, detach):
    cfg = small_cfg(
        [
            f"architecture={architecture}",
            "data=multidigits",
            "tasks.sum.inputs_from=[left]",
            f"tasks.sum.detach={detach}",
        ]
    )
    built = built_or_refused(cfg)
    model, roles = built.model, built.model.parameter_roles()
    assert built.tasks["sum"].inputs_from == ("left",) and built.tasks["sum"].detach is detach

    # the sum head reads the features plus left's 10 class probabilities
    def head_params(task):
        return [p for n, p in model.named_parameters() if roles[n] == ParamRole("head", task)]

    # the sum head's first layer reads the features plus left's 10 class probabilities
    assert head_params("sum")[0].shape[1] == head_params("left")[0].shape[1] + 10
    batch = first_batch(built.data, BATCH)
    model.zero_grad(set_to_none=True)
    task_loss(built, batch, model(batch), "sum").backward()
    assert any(nonzero(p.grad) for p in head_params("left")) is not detach
    assert not any(nonzero(p.grad) for p in head_params("right"))


def test_inputs_from_prediction_depends_on_the_source_estimate():
    built = build_objects(small_cfg(["data=multidigits", "tasks.sum.inputs_from=[left]"]))
    model = built.model
    model.eval()
    batch = first_batch(built.data, BATCH)
    features = model.trunk(batch["x"])
    left_logits = model.heads.heads["left"](features)
    manual = model.heads.heads["sum"](torch.cat([features, left_logits.softmax(-1)], dim=-1)).squeeze(-1)
    assert torch.allclose(model(batch)["sum"], manual, atol=1e-6)


def tasks_with(overrides):
    cfg = small_cfg(["data=multidigits", *overrides])
    return lambda: build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))


@pytest.mark.parametrize(
    "overrides",
    [
        ["tasks.left.inputs_from=[sum]", "tasks.sum.inputs_from=[left]"],
        ["tasks.sum.inputs_from=[sum]"],
        ["tasks.left.inputs_from=[right]", "tasks.right.inputs_from=[sum]", "tasks.sum.inputs_from=[left]"],
    ],
)
def test_inputs_from_cycle_is_a_config_error(overrides):
    with pytest.raises(ConfigError, match="cycle") as err:
        tasks_with(overrides)()
    assert "sum" in str(err.value)


def test_inputs_from_unknown_source_is_a_config_error():
    with pytest.raises(ConfigError, match=r"tasks\.sum\.inputs_from: unknown task 'nope'"):
        tasks_with(["tasks.sum.inputs_from=[nope]"])()


# The checks above that take one built model, for a design's own test file to run on the configuration it is
# built for (ESMM and AITM's calibrator need a click -> conversion funnel)
CHECKS_OF_ONE_MODEL = [
    test_data_and_model_are_built_from_the_config_on_the_shrunk_data,
    test_forward_returns_one_prediction_per_task_with_its_shape,
    test_parameter_roles_partition_the_parameters,
    test_head_parameters_are_exactly_those_of_each_task_head,
    test_shared_parameters_are_those_no_task_owns,
    test_parameter_counts_add_up,
    test_shared_representation,
    test_representation_views_give_each_task_its_own_gradient,
    test_each_task_loss_moves_only_its_own_and_shared_parameters,
]
