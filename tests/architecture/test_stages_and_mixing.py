"""Helpers several architectures share: the encoder-stage helpers (mtlrun/encoder/stages.py), the initial
mixing matrices (mtlrun/architecture/mixing.py) and the heads' roles (TaskHeads.roles)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mtlrun.architecture.base import ParamRole
from mtlrun.architecture.cross_stitch import CrossStitch
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import convex_init
from mtlrun.architecture.mtan import MTAN
from mtlrun.architecture.single_task import SingleTask
from mtlrun.architecture.sluice import Sluice
from mtlrun.architecture.soft_sharing import SoftSharing
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.encoder.stages import encoder_stages, select_stages
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks

TASKS = {"a": {"kind": "regression"}, "b": {"kind": "binary"}}


@pytest.mark.parametrize(
    ("spec", "expected"), [("all", [0, 1, 2]), ([2, 0], [0, 2]), ([-1, 2], [2]), ([-3], [0]), ([], [])]
)
def test_select_stages_sorts_and_wraps_negative_indices(spec, expected):
    assert select_stages(spec, 3, "key") == expected


@pytest.mark.parametrize("spec", ["some", [3], [-4], [True], [1.0]])
def test_select_stages_refuses_what_is_not_a_stage(spec):
    with pytest.raises(ConfigError, match=r"^architecture\.x: "):
        select_stages(spec, 3, "architecture.x")


def test_encoder_stages_returns_the_stages_or_refuses_an_encoder_without_any():
    encoder = MLPEncoder((3,), [4, 5])
    assert encoder_stages(encoder, "key") is encoder.stages
    for stageless in (MLPEncoder((3,), []), nn.Linear(3, 4)):
        with pytest.raises(ConfigError, match=r"^architecture: .* has none"):
            encoder_stages(stageless, "architecture")


@pytest.mark.parametrize("architecture", [CrossStitch, Sluice, MTAN, SoftSharing])
def test_designs_that_act_between_stages_refuse_a_stageless_encoder(architecture):
    tasks = build_tasks(TASKS)
    with pytest.raises(ConfigError, match=r"^architecture: .*MLPEncoder has none"):
        architecture(lambda: MLPEncoder((3,), []), tasks, {"hidden": []})
    # the baseline needs no stages: its columns are whole encoders
    model = SingleTask(lambda: MLPEncoder((3,), []), tasks, {"hidden": []})
    assert set(model({"x": torch.ones(2, 3)})) == {"a", "b"}


def test_convex_init_puts_own_on_the_diagonal_and_rows_sum_to_one():
    matrix = convex_init(4, 0.7)
    assert torch.allclose(matrix.diagonal(), torch.full((4,), 0.7))
    assert torch.allclose(matrix[0, 1:], torch.full((3,), 0.1))
    assert torch.allclose(matrix.sum(1), torch.ones(4))
    assert torch.allclose(convex_init(5, 1 / 5), torch.full((5, 5), 0.2))  # own = 1/size: uniform
    assert torch.equal(convex_init(3, 1.0), torch.eye(3))  # own = 1: no mixing
    assert convex_init(1, 0.3).tolist() == [[1.0]]


def test_task_heads_name_their_roles_under_the_models_prefix():
    tasks = build_tasks(TASKS)
    heads = TaskHeads(4, tasks, {"hidden": [3]})
    assert heads.roles("tower") == {
        "tower.heads.a": ParamRole("head", "a"),
        "tower.heads.b": ParamRole("head", "b"),
    }
    names = {f"tower.{n}" for n, _ in heads.named_parameters()}
    assert all(any(n.startswith(prefix + ".") for prefix in heads.roles("tower")) for n in names)


def test_only_the_baseline_declares_independent_tasks():
    assert SingleTask.independent_tasks
    assert not SoftSharing.independent_tasks  # the penalty couples its columns
