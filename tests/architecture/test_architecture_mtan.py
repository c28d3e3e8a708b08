"""MTAN (mtlrun/architecture/mtan.py): masks in (0, 1) with the stages' shapes, masks of 1 reduce the design to
hard sharing, each task's loss reaches only its own attention modules, the backbone learns from every task.
Tiny models built directly, with the CNN and the MLP encoder; the generic contract is checked by
test_architectures.py and test_groups.py."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn as nn
from conftest import nonzero

from mtlrun.architecture.mtan import MTAN
from mtlrun.encoder.cnn import CNNEncoder
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks

TASKS = {
    "a": {"kind": "regression"},
    "b": {"kind": "multiclass", "num_classes": 3},
    "c": {"kind": "multilabel", "num_classes": 2},
}
N = 5
ENCODERS = ["cnn", "mlp"]


def make(encoder: str) -> MTAN:
    torch.manual_seed(0)
    if encoder == "mlp":
        factory = functools.partial(MLPEncoder, (1, 6, 6), [8, 6])  # image inputs, flattened by the MLP
    else:
        factory = functools.partial(CNNEncoder, (1, 6, 6), [4, 8], out_dim=8)
    return MTAN(factory, build_tasks(TASKS), {"hidden": [4]})


def make_batch() -> dict:
    torch.manual_seed(1)
    y = {"a": torch.randn(N), "b": torch.tensor([0, 1, 2, 1, 0]), "c": torch.randint(0, 2, (N, 2))}
    return {"x": torch.randn(N, 1, 6, 6), "y": y}


def loss_of(model: MTAN, out: dict, batch: dict, name: str) -> torch.Tensor:
    return model.tasks[name].loss_per_sample(out[name], batch["y"][name]).mean()


def capture_masks(model: MTAN, batch: dict) -> dict[str, list[torch.Tensor]]:
    """Every attention module's output (its sigmoid mask) in one forward pass."""
    masks: dict[str, list[torch.Tensor]] = {name: [] for name in model.tasks}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: masks[name].append(out.detach()))
        for name, modules in model.attention.items()
        for module in modules
    ]
    model(batch)
    for handle in handles:
        handle.remove()
    return masks


def force_masks_to_one(model: MTAN) -> None:
    """A large bias just before each sigmoid (the last BatchNorm, or the last Linear for vectors)."""
    with torch.no_grad():
        for modules in model.attention.values():
            for module in modules:
                module[-2].bias.fill_(100.0)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_masks_lie_strictly_between_zero_and_one_with_the_stage_shapes(encoder):
    model = make(encoder)
    masks = capture_masks(model, make_batch())
    for name in model.tasks:
        assert [tuple(m.shape[1:]) for m in masks[name]] == model.stage_shapes
        for mask in masks[name]:
            assert (mask > 0).all() and (mask < 1).all()
            assert 0.05 < float(mask.mean()) < 0.95  # initialised near 0.5, not saturated


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("training", [True, False])
def test_masks_of_one_give_each_task_the_backbone_features_through_its_own_head(encoder, training):
    model = make(encoder)
    force_masks_to_one(model)
    model.train(training)
    batch = make_batch()
    assert all((m == 1).all() for ms in capture_masks(model, batch).values() for m in ms)
    out = model(batch)
    features = model.backbone(batch["x"])  # the encoder's own forward
    for name, task in model.tasks.items():
        expected = task.prepare_prediction(model.heads.heads[name](features))
        assert torch.allclose(out[name], expected, atol=1e-6), name


@pytest.mark.parametrize("encoder", ENCODERS)
def test_each_task_loss_reaches_only_its_own_attention(encoder):
    model = make(encoder)
    batch = make_batch()
    for name in model.tasks:
        model.zero_grad(set_to_none=True)
        loss_of(model, model(batch), batch, name).backward()
        for other, modules in model.attention.items():
            moved = [nonzero(p.grad) for p in modules.parameters()]
            if other == name:
                assert all(moved), name  # every layer of its own attention, at every stage
            else:
                assert not any(moved), (name, other)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_backbone_and_shared_extractors_learn_from_every_task(encoder):
    model = make(encoder)
    batch = make_batch()
    for name in model.tasks:
        model.zero_grad(set_to_none=True)
        loss_of(model, model(batch), batch, name).backward()
        assert all(nonzero(p.grad) for p in model.backbone.parameters()), name
        assert all(nonzero(p.grad) for p in model.adapters.parameters()), name


@pytest.mark.parametrize("encoder", ENCODERS)
def test_shared_extractors_map_each_stage_to_the_next(encoder):
    model = make(encoder)
    assert len(model.adapters) == len(model.stage_shapes) - 1
    masks = capture_masks(model, make_batch())  # the forward pass concatenates u_k with f_k(previous)
    first_layers = [module[0] for module in model.attention["a"]]
    widths = [
        layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features for layer in first_layers
    ]
    assert widths == [model.stage_shapes[0][0]] + [2 * s[0] for s in model.stage_shapes[1:]]
    assert len(masks["a"]) == len(model.stage_shapes)


def test_roles():
    model = make("cnn")
    roles = model.parameter_roles()
    for name, role in roles.items():
        if name.startswith(("backbone.", "adapters.")):
            assert (role.part, role.task) == ("trunk", None), name
        elif name.startswith("attention."):
            assert (role.part, role.task) == ("mixing", name.split(".")[1]), name
        else:
            assert role.part == "head" and role.task == name.split(".")[2], name
    last = model.backbone.stages[-1][1]  # the flattening stage's Linear
    assert model.last_shared_parameters() == [last.weight, last.bias]
    assert not model.has_representation


def test_diagnostics_average_the_masks_over_evaluation_batches_only():
    model = make("cnn")
    batch = make_batch()
    model.train()
    model(batch)
    assert model.diagnostics() == {}
    model.eval()
    with torch.no_grad():
        full = capture_masks(model, batch)
        part = capture_masks(model, {"x": batch["x"][:2]})
    stats = model.diagnostics()
    assert set(stats) == set(model.tasks)
    assert set(stats["a"]) == {"mask_stage0", "mask_stage1", "mask_stage2"}
    for name in model.tasks:
        for k in range(3):
            expected = (float(full[name][k].mean()) * N + float(part[name][k].mean()) * 2) / (N + 2)
            assert stats[name][f"mask_stage{k}"] == pytest.approx(expected, rel=1e-5)
    assert model.diagnostics() == {}  # reset after reading


def test_unsupported_stage_shape_is_a_config_error():
    class Sequences(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.ModuleList([nn.Identity()])
            self.stage_shapes = [(4, 7)]
            self.out_dim = 4

    with pytest.raises(ConfigError, match=r"architecture=mtan: .*\[4, 7\]"):
        MTAN(Sequences, build_tasks(TASKS), {})
