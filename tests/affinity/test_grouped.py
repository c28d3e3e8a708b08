"""architecture=grouped: its groups, its parameter roles, its two ends (hard sharing, single-task), and the one
sweep that compares a suggestion with both."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import build_objects, first_batch, small_cfg
from hydra.core.override_parser.overrides_parser import OverridesParser

from mtlrun.architecture.base import ParamRole
from mtlrun.architecture.grouped import Grouped, check_groups
from mtlrun.errors import ConfigError

TASKS = ["a1", "a2", "a3", "b1", "b2", "b3"]
# the sweep docs/affinity.md gives: one group (hard sharing), the clusters, one group per task (single-task)
SWEEP = "architecture.groups=null,[[a1,a2,a3],[b1,b2,b3]],[[a1],[a2],[a3],[b1],[b2],[b3]]"


def grouped(groups: str):
    """The model of ``architecture.groups=<groups>`` on a small data=task_clusters (one compose for all)."""
    cfg = small_cfg(["data=task_clusters", "architecture=grouped"])
    cfg.architecture.groups = yaml.safe_load(groups)  # what Hydra makes of the override's value
    return build_objects(cfg)


def test_a_group_of_one_owns_its_trunk_and_larger_groups_share_theirs():
    built = grouped("[[a1,a2],[a3],[b1,b2,b3]]")
    model, roles = built.model, built.model.parameter_roles()
    assert model.groups == [["a1", "a2"], ["a3"], ["b1", "b2", "b3"]]
    for name, role in roles.items():
        if name.startswith("trunks.1."):
            assert role == ParamRole("trunk", "a3")
        elif name.startswith("trunks."):
            assert role == ParamRole("trunk", None)
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for n, p in model.named_parameters() if n.startswith(("trunks.0.", "trunks.2."))}
    assert not model.has_representation and not model.independent_tasks
    # a task's loss reaches its own group's trunk only
    batch = first_batch(built.data, 6)
    task = built.tasks["b2"]
    task.loss_per_sample(model(batch)["b2"], batch["y"]["b2"]).mean().backward()
    touched = {
        n.split(".")[1] for n, p in model.named_parameters() if n.startswith("trunks.") and p.grad is not None
    }
    assert touched == {"2"}


def test_one_group_is_hard_sharing_and_one_group_per_task_is_single_task():
    batch = None
    for groups, other in (("null", "hard_sharing"), ("[[a1],[a2],[a3],[b1],[b2],[b3]]", "single_task")):
        built = grouped(groups)
        reference = build_objects(small_cfg(["data=task_clusters", f"architecture={other}"]))
        batch = batch or first_batch(built.data, 6)
        ours, theirs = built.model(batch), reference.model(batch)  # built in the same order from one seed
        assert all(torch.equal(ours[t], theirs[t]) for t in TASKS)
        assert built.model.has_representation == reference.model.has_representation
        assert built.model.independent_tasks == reference.model.independent_tasks
        assert len(built.model.shared_parameters()) == len(reference.model.shared_parameters())


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([["a1", "zz"]], r"unknown task\(s\) \['zz'\]"),
        ([["a1", "a2"], ["a2", "b1"]], r"task\(s\) \['a2'\] in more than one group"),
        ([["a1", "a2"]], r"task\(s\) \['b1'\] in no group; put every task in exactly one group"),
        ([["a1", "a2"], [], ["b1"]], "every group needs at least one task"),
        (["a1", "a2", "b1"], "must be a list of lists of task names"),
    ],
)
def test_groups_that_are_not_a_partition_of_the_tasks_are_config_errors(groups, message):
    with pytest.raises(ConfigError, match=r"^architecture\.groups: " + message):
        check_groups(groups, ["a1", "a2", "b1"])


def test_the_documented_sweep_gives_three_runs_that_build():
    [override] = OverridesParser.create().parse_overrides([SWEEP])
    values = list(override.sweep_string_iterator())
    assert len(values) == 3
    models = [grouped(value).model for value in values]
    assert [len(m.groups) for m in models] == [1, 2, 6]
    assert [m.independent_tasks for m in models] == [False, False, True]
    assert all(isinstance(m, Grouped) for m in models)
