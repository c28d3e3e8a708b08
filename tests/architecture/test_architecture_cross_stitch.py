"""Cross-stitch networks (mtlrun/architecture/cross_stitch.py): identity mixing is independent columns; units
start as convex combinations (rows sum to 1); α learns; scalar and channel units on MLP and CNN encoders;
the preset gives the mixing group its larger learning rate. The generic contract is in test_architectures.py
and test_groups.py."""

from __future__ import annotations

import pytest
import torch
from conftest import build_objects, first_batch, nonzero, small_cfg
from omegaconf import OmegaConf

from mtlrun.architecture.base import ParamRole
from mtlrun.architecture.cross_stitch import CrossStitchUnit
from mtlrun.errors import ConfigError
from mtlrun.optim.groups import build_param_groups
from mtlrun.trainer.setup import setup_optimizer
from mtlrun.trainer.step import task_losses

BATCH = 6
CASES = [(data, mode) for data in ("multidigits", "mmoe_synthetic") for mode in ("scalar", "channel")]
IDS = [f"{d}-{m}" for d, m in CASES]


def build(data: str, *overrides: str):
    return build_objects(small_cfg(["architecture=cross_stitch", f"data={data}", *overrides]))


@pytest.mark.parametrize(("data", "mode"), CASES, ids=IDS)
def test_identity_mixing_is_independent_columns(data: str, mode: str) -> None:
    stitched = build(data, f"architecture.mode={mode}", "architecture.init_self=1.0")
    single = build_objects(small_cfg(["architecture=single_task", f"data={data}"]), seed=1)
    columns = {k: v for k, v in stitched.model.state_dict().items() if not k.startswith("stitch.")}
    single.model.load_state_dict(columns)  # strict: the same columns and heads, under the same names

    batch = first_batch(stitched.data, BATCH)
    out, expected = stitched.model(batch), single.model(batch)
    for name in stitched.tasks:
        assert torch.allclose(out[name], expected[name], atol=1e-6), name

    model = stitched.model
    for index, task in enumerate(stitched.tasks):
        model.zero_grad(set_to_none=True)
        task_losses(model(batch), batch, stitched.tasks)[index].backward()
        for name, column in model.columns.items():
            assert any(nonzero(p.grad) for p in column.parameters()) is (name == task), (task, name)


@pytest.mark.parametrize(("data", "mode"), CASES, ids=IDS)
def test_units_start_as_convex_combinations_and_learn(data: str, mode: str) -> None:
    built = build(data, f"architecture.mode={mode}")
    model, num_tasks = built.model, len(built.tasks)
    stages = next(iter(model.columns.values())).stage_shapes
    assert sorted(model.stitch, key=int) == [str(i) for i in range(len(stages))]  # after every stage
    for index, unit in model.stitch.items():
        alpha = unit.alpha.detach()
        shape = (num_tasks, num_tasks) if mode == "scalar" else (num_tasks, num_tasks, stages[int(index)][0])
        assert alpha.shape == shape
        assert torch.allclose(alpha.sum(1), torch.ones(()))  # every row sums to 1
        assert torch.allclose(alpha.diagonal(0, 0, 1), torch.tensor(0.9))
        off = alpha[~torch.eye(num_tasks, dtype=torch.bool)]
        assert torch.allclose(off, torch.tensor(0.1 / (num_tasks - 1)))

    batch = first_batch(built.data, BATCH)
    for index, task in enumerate(built.tasks):
        model.zero_grad(set_to_none=True)
        task_losses(model(batch), batch, built.tasks)[index].backward()
        for unit in model.stitch.values():
            assert nonzero(unit.alpha.grad), task
        last = model.stitch[max(model.stitch, key=int)].alpha.grad
        rows = [nonzero(last[t]) for t in range(num_tasks)]
        assert rows == [t == index for t in range(num_tasks)]  # the last unit feeds task t's head by row t


def test_unit_mixes_as_the_formula_says() -> None:
    h = torch.randn(3, 4, 2, 5, 5)  # [T, N, C, H, W]
    unit = CrossStitchUnit(3, 0.6)
    expected = torch.stack([sum(unit.alpha[t, s] * h[s] for s in range(3)) for t in range(3)])
    assert torch.allclose(unit(h), expected, atol=1e-6)
    assert unit.alpha[0].tolist() == pytest.approx([0.6, 0.2, 0.2])

    unit = CrossStitchUnit(3, 0.6, channels=2)
    with torch.no_grad():
        unit.alpha.copy_(torch.randn(3, 3, 2))
    expected = torch.stack(
        [
            torch.stack([sum(unit.alpha[t, s, c] * h[s, :, c] for s in range(3)) for c in range(2)], dim=1)
            for t in range(3)
        ]
    )
    assert torch.allclose(unit(h), expected, atol=1e-6)


def test_roles_mark_columns_and_units_shared() -> None:
    built = build("mmoe_synthetic")
    roles = built.model.parameter_roles()
    assert {roles[n] for n in roles if n.startswith("stitch.")} == {ParamRole("mixing")}
    assert {roles[n] for n in roles if n.startswith("columns.")} == {ParamRole("trunk")}
    assert not built.model.has_representation
    shared = {id(p) for p in built.model.shared_parameters()}
    assert all(id(p) in shared for p in built.model.columns.parameters())
    stats = built.model.diagnostics()["model"]
    assert stats == pytest.approx({f"stitch{i}_self_weight": 0.9 for i in range(2)})


def test_after_stages_picks_the_units() -> None:
    model = build("multidigits", "architecture.after_stages=[0,-1]").model
    assert sorted(model.stitch) == ["0", "2"]
    out = model(first_batch(build("multidigits").data, BATCH))
    assert set(out) == {"left", "right", "sum"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("architecture.mode=pixel", r"architecture\.mode: 'pixel'"),
        ("architecture.init_self=1.5", r"architecture\.init_self: 1\.5"),
        ("architecture.after_stages=[3]", r"architecture\.after_stages: 3 is not a stage"),
    ],
)
def test_bad_options_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build("multidigits", override)


def test_preset_gives_the_mixing_group_a_larger_learning_rate() -> None:
    cfg = small_cfg(["experiment=cross_stitch"])
    assert cfg.architecture._target_.endswith("CrossStitch") and cfg.data._target_.endswith("MultiDigits")
    built = build_objects(cfg)
    groups = build_param_groups(built.model, built.weighting, OmegaConf.to_container(cfg.optim.groups))
    lrs = {g["name"]: g["lr"] for g in setup_optimizer(cfg, groups).param_groups}
    assert lrs["mixing"] >= 10 * lrs["shared"]
