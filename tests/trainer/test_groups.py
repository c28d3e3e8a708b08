"""Optimizer parameter groups (mtlrun.optim.groups): every trainable parameter lands in exactly one group,
the most specific entry wins, null settings fall back to the optimizer, and every config mistake is an error."""

import re

import pytest
import torch
import torch.nn as nn
from conftest import architecture_overrides, build_objects, options, small_cfg
from omegaconf import OmegaConf

from mtlrun.architecture.base import MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.optim.groups import build_param_groups
from mtlrun.tasks import Task, build_tasks
from mtlrun.trainer.setup import setup_optimizer, setup_scheduler
from mtlrun.weighting.equal import Equal

# Groups follow the model's roles and the weighting's own parameters, independently of each other: the fast
# tier pairs every architecture with equal weighting and with uncertainty (a method with parameters), and
# every weighting method with hard sharing; the slow tier runs every pair.
ALL_PAIRS = [(arch, w) for arch in options("architecture") for w in options("weighting")]
FAST_PAIRS = sorted(
    {(arch, w) for arch in options("architecture") for w in ("equal", "uncertainty")}
    | {("hard_sharing", w) for w in options("weighting")}
)
PAIRS = [
    pytest.param(arch, w, id=f"{arch}-{w}", marks=() if (arch, w) in FAST_PAIRS else pytest.mark.slow)
    for arch, w in ALL_PAIRS
]


def setup(overrides=(), data=("data=multidigits",)):
    cfg = small_cfg([*data, *overrides])
    built = build_objects(cfg)
    groups_cfg = OmegaConf.to_container(cfg.optim.groups, resolve=True)
    return cfg, built, groups_cfg


def by_name(groups):
    return {g.name: g for g in groups}


@pytest.mark.parametrize(("architecture", "weighting"), PAIRS)
def test_every_trainable_parameter_lands_in_exactly_one_group(architecture, weighting):
    cfg, built, groups_cfg = setup(
        [f"weighting={weighting}"], architecture_overrides(architecture, "multidigits")
    )
    model, weighting_obj = built.model, built.weighting
    frozen = next(iter(model.parameters()))
    frozen.requires_grad_(False)  # a frozen parameter belongs to no group
    groups = build_param_groups(model, weighting_obj, groups_cfg)

    grouped = [id(p) for g in groups for p in g.params]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    trainable = [p for p in [*model.parameters(), *weighting_obj.parameters()] if p.requires_grad]
    assert set(grouped) == {id(p) for p in trainable}
    assert id(frozen) not in grouped

    # each group holds the parameters its role says, under their own names
    named = {f"model.{n}": p for n, p in model.named_parameters()}
    named |= {f"weighting.{n}": p for n, p in weighting_obj.named_parameters()}
    roles = model.parameter_roles()
    expected_group = {"trunk": "shared", "head": "heads", "mixing": "mixing"}
    for group in groups:
        assert len(group.names) == len(group.params)
        for name, param in zip(group.names, group.params, strict=True):
            assert named[name] is param
            want = "weighting" if name.startswith("weighting.") else expected_group[roles[name[6:]].part]
            assert group.name == want, name

    optimizer = setup_optimizer(cfg, groups)
    assert [g["name"] for g in optimizer.param_groups] == [g.name for g in groups]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


def test_heads_task_entry_wins_for_that_head_and_inherits_the_rest():
    cfg, built, groups_cfg = setup(
        [
            "optim.groups.heads.lr=0.01",
            "optim.groups.heads.weight_decay=0.2",
            "+optim.groups.heads.sum.lr=0.1",
        ]
    )
    groups = by_name(build_param_groups(built.model, built.weighting, groups_cfg))
    roles = built.model.parameter_roles()

    def head_names(*tasks):
        return {f"model.{n}" for n, r in roles.items() if r.part == "head" and r.task in tasks}

    assert set(groups["heads.sum"].names) == head_names("sum")
    assert set(groups["heads"].names) == head_names("left", "right")
    assert groups["heads.sum"].settings == {"lr": 0.1, "weight_decay": 0.2}  # weight_decay from `heads`
    assert groups["heads"].settings == {"lr": 0.01, "weight_decay": 0.2}

    optimizer = setup_optimizer(cfg, list(groups.values()))
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert lrs["heads.sum"] == (0.1, 0.2) and lrs["heads"] == (0.01, 0.2)
    assert lrs["shared"] == (cfg.optim.optimizer.lr, cfg.optim.optimizer.weight_decay)


def test_task_entry_with_weight_decay_only_keeps_the_heads_lr():
    _, built, groups_cfg = setup(["optim.groups.heads.lr=0.01", "+optim.groups.heads.left.weight_decay=0.3"])
    groups = by_name(build_param_groups(built.model, built.weighting, groups_cfg))
    assert groups["heads.left"].settings == {"lr": 0.01, "weight_decay": 0.3}


@pytest.mark.parametrize("optim", options("optim"))
def test_null_settings_fall_back_to_the_optimizer(optim):
    cfg, built, groups_cfg = setup(
        [
            f"optim={optim}",
            "weighting=uncertainty",
            "optim.optimizer.weight_decay=0.05",
            "optim.groups.shared.lr=0.5",
        ]
    )
    optimizer = setup_optimizer(cfg, build_param_groups(built.model, built.weighting, groups_cfg))
    torch_groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(torch_groups) == {"shared", "heads", "weighting"}
    assert torch_groups["shared"]["lr"] == 0.5
    assert torch_groups["heads"]["lr"] == torch_groups["weighting"]["lr"] == cfg.optim.optimizer.lr
    assert torch_groups["shared"]["weight_decay"] == torch_groups["heads"]["weight_decay"] == 0.05
    assert torch_groups["weighting"]["weight_decay"] == 0.0  # log-variances are never decayed


@pytest.mark.parametrize("scheduler", options("optim/scheduler"))
def test_scheduler_scales_every_group_from_its_own_base_lr(scheduler):
    cfg, built, groups_cfg = setup(
        [
            f"optim/scheduler={scheduler}",
            "weighting=uncertainty",
            "optim.groups.shared.lr=0.5",
            "optim.groups.heads.lr=0.02",
        ]
    )
    optimizer = setup_optimizer(cfg, build_param_groups(built.model, built.weighting, groups_cfg))
    base = [g["lr"] for g in optimizer.param_groups]
    assert len(set(base)) == 3
    schedule = setup_scheduler(cfg, optimizer, total_steps=20)
    for _ in range(20):
        optimizer.step()
        schedule.step()
        ratios = [g["lr"] / b for g, b in zip(optimizer.param_groups, base, strict=True)]
        assert ratios == pytest.approx([ratios[0]] * len(ratios))


# ------------------------------------------------------------------------------------ missing or bad groups


class GatedSharing(MTLModel):
    """A trunk, one mixing gate and task heads: the smallest model with a ``mixing`` parameter."""

    def __init__(self, tasks, heads):
        super().__init__(tasks)
        self.trunk = MLPEncoder((4,), [8])
        self.gate = nn.Parameter(torch.ones(8))
        self.heads = TaskHeads(8, self.tasks, heads)

    def forward(self, batch):
        return self.heads(self.trunk(batch["x"]) * self.gate)

    def parameter_roles(self):
        prefixes = {"trunk": ParamRole("trunk"), "gate": ParamRole("mixing")}
        prefixes |= self.heads.roles("heads")
        return self.roles_by_prefix(prefixes)


def gated_model():
    tasks = build_tasks({"a": {"kind": "regression"}, "b": {"kind": "binary"}})
    return GatedSharing(tasks, {"hidden": [4]}), Equal(tasks)


def test_mixing_parameters_go_to_the_mixing_group():
    model, weighting = gated_model()
    groups_cfg = OmegaConf.to_container(small_cfg().optim.groups)
    groups = by_name(build_param_groups(model, weighting, groups_cfg))
    assert groups["mixing"].names == ["model.gate"]


def test_mixing_parameter_without_mixing_group_is_an_error():
    model, weighting = gated_model()
    groups_cfg = OmegaConf.to_container(small_cfg(["~optim.groups.mixing"]).optim.groups)
    with pytest.raises(ConfigError, match=r"'model\.gate' belongs to group 'mixing'.*optim\.groups\.mixing"):
        build_param_groups(model, weighting, groups_cfg)


def test_absent_group_is_fine_when_no_parameter_needs_it():
    _, built, groups_cfg = setup(["~optim.groups.mixing", "~optim.groups.weighting", "weighting=equal"])
    groups = build_param_groups(built.model, built.weighting, groups_cfg)
    assert {g.name for g in groups} == {"shared", "heads"}


@pytest.mark.parametrize(
    ("overrides", "group"),
    [
        (["~optim.groups.weighting", "weighting=uncertainty"], "weighting"),
        (["~optim.groups.shared"], "shared"),
        (["~optim.groups.heads"], "heads"),
    ],
)
def test_parameter_whose_group_is_absent_is_an_error(overrides, group):
    _, built, groups_cfg = setup(overrides)
    with pytest.raises(ConfigError, match=f"belongs to group '{group}'"):
        build_param_groups(built.model, built.weighting, groups_cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+optim.groups.trunk.lr=0.1", r"optim\.groups\.trunk: unknown group"),
        ("+optim.groups.shared.momentum=0.9", r"optim\.groups\.shared\.momentum: unknown key"),
        ("+optim.groups.heads.nope.lr=0.1", r"optim\.groups\.heads\.nope: unknown key.*task name"),
        ("+optim.groups.heads.sum.momentum=0.9", r"optim\.groups\.heads\.sum: unknown setting.*momentum"),
        ("optim.groups.shared.lr=fast", r"optim\.groups\.shared\.lr: expected a number"),
    ],
    ids=["unknown-group", "unknown-setting", "unknown-task", "unknown-task-setting", "lr-not-a-number"],
)
def test_bad_group_config_is_an_error(override, message):
    _, built, groups_cfg = setup([override])
    with pytest.raises(ConfigError, match=message):
        build_param_groups(built.model, built.weighting, groups_cfg)


@pytest.mark.parametrize("name", ["lr", "weight_decay", "a.b"])
def test_task_name_that_collides_with_a_group_setting_is_rejected(name):
    with pytest.raises(
        ConfigError, match=rf"tasks\.{re.escape(name)}: '{re.escape(name)}' (is reserved|contains)"
    ):
        Task(name=name, kind="regression", target="y")
    with pytest.raises(ConfigError, match="Reserved names: .*lr.*weight_decay"):
        build_tasks({name: {"kind": "regression", "target": "y"}})
