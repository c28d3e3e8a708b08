"""Joint many-task model (mtlrun/architecture/joint_many_task.py): each task's layer reads the one below and the
previous task's estimate, never a later one; the successive-regularisation term equals δ‖θ_s − θ_s′‖², is 0
on a snapshot's step and survives a state-dict round trip; roles follow which losses reach each layer; config
mistakes are ConfigErrors. The generic contract (roles against gradients, groups, resume) is in
test_architectures.py, test_groups.py and test_resume.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import build_objects, first_batch, small_cfg

from mtlrun.architecture.base import ParamRole
from mtlrun.errors import ConfigError

BATCH = 8


def build(*overrides: str, data: str = "multidigits"):
    return build_objects(small_cfg(["architecture=joint_many_task", f"data={data}", *overrides]))


@pytest.fixture(scope="module")
def three_tasks():
    built = build("architecture.order=[sum,left,right]")
    built.model.eval()
    return built


def perturbed_outputs(model, batch, layer: str) -> tuple[dict, dict]:
    before = model(batch)
    first = model.layers[layer][0]
    saved = first.weight.detach().clone()
    with torch.no_grad():
        first.weight.add_(0.5)
    after = model(batch)
    with torch.no_grad():
        first.weight.copy_(saved)
    return before, after


def test_a_layer_feeds_the_tasks_above_it_and_never_those_below(three_tasks) -> None:
    model, batch = three_tasks.model, first_batch(three_tasks.data, BATCH)
    assert model.order == ["sum", "left", "right"]
    before, after = perturbed_outputs(model, batch, "left")  # the middle task's layer
    assert torch.equal(before["sum"], after["sum"])  # task 0 does not read later layers
    assert not torch.allclose(before["left"], after["left"])
    assert not torch.allclose(before["right"], after["right"])  # task 2 reads task 1's layer
    before, after = perturbed_outputs(model, batch, "right")
    assert torch.equal(before["sum"], after["sum"]) and torch.equal(before["left"], after["left"])


def test_each_layer_reads_the_trunk_the_layer_below_and_the_embedded_estimate(three_tasks) -> None:
    """The forward pass equals the wiring written out by hand: h_k = ℓ_k([z ; h_k−1 ; E_k−1 p_k−1])."""
    model, batch, tasks = three_tasks.model, first_batch(three_tasks.data, BATCH), three_tasks.tasks
    z = model.trunk(batch["x"])
    h_sum = model.layers["sum"](z)
    sum_out = model.heads.heads["sum"](h_sum).squeeze(-1)
    embedded = model.label_embeddings["sum"](tasks["sum"].estimate(sum_out))
    h_left = model.layers["left"](torch.cat([z, h_sum, embedded], dim=-1))
    left_out = model.heads.heads["left"](h_left)
    embedded = model.label_embeddings["left"](left_out.softmax(-1))
    h_right = model.layers["right"](torch.cat([z, h_left, embedded], dim=-1))
    out = model(batch)
    assert torch.allclose(out["sum"], sum_out, atol=1e-6) and torch.allclose(out["left"], left_out, atol=1e-6)
    assert torch.allclose(out["right"], model.heads.heads["right"](h_right), atol=1e-6)
    assert model.layers["left"][0].in_features == z.shape[1] + 64 + 16  # z, hidden, label_dim


def test_roles_own_only_what_one_loss_reaches(three_tasks) -> None:
    roles = three_tasks.model.parameter_roles()
    assert roles["layers.sum.0.weight"] == ParamRole("trunk")  # reached by sum, left and right
    assert roles["layers.left.0.weight"] == ParamRole("trunk")  # reached by left and right
    assert roles["layers.right.0.weight"] == ParamRole("trunk", "right")  # the last layer: right alone
    assert roles["label_embeddings.sum.weight"] == ParamRole("trunk")  # feeds left's layer, so right too
    assert roles["label_embeddings.left.weight"] == ParamRole("trunk", "right")  # feeds right's layer only


def test_successive_term_is_its_closed_form_and_zero_on_a_snapshot_step() -> None:
    built = build(
        "architecture.successive_regularization=0.5", "architecture.snapshot_every=3", data="mmoe_synthetic"
    )
    model = built.model
    model.train()
    assert model.penalty().item() == 0.0  # step 0 takes the first snapshot
    shared = model.regularized_parameters()
    assert [id(p) for p in shared.values()] == [id(p) for p in model.shared_parameters()]  # θ_s
    weight = shared["trunk.stages.0.0.weight"]
    with torch.no_grad():
        weight.add_(0.1)
    expected = 0.5 * 0.01 * weight.numel()
    assert model.penalty().item() == pytest.approx(expected, rel=1e-4)  # step 1
    model.eval()  # evaluation does not count steps nor take snapshots
    assert model.penalty().item() == pytest.approx(expected, rel=1e-4)
    # the snapshot and the step count travel in the state dict: a copy continues exactly (a copy that
    # restarted its count would take a snapshot at the next step, and the term would be 0)
    copy = build(
        "architecture.successive_regularization=0.5", "architecture.snapshot_every=3", data="mmoe_synthetic"
    ).model
    copy.load_state_dict(model.state_dict())
    assert any(k.startswith("snapshot.") for k in model.state_dict())
    for m in (model, copy):
        m.train()
        assert m.penalty().item() == pytest.approx(expected, rel=1e-4)  # step 2
        assert m.penalty().item() == 0.0  # step 3: a new snapshot of the moved weights
    # the term's gradient pulls θ_s back toward the snapshot: 2δ(θ − θ′)
    with torch.no_grad():
        weight.sub_(0.2)
    penalty = model.penalty()  # step 4
    penalty.backward()
    assert torch.allclose(weight.grad, torch.full_like(weight, 2 * 0.5 * -0.2))


def test_no_penalty_and_no_snapshot_when_off() -> None:
    model = build("architecture.successive_regularization=0", data="mmoe_synthetic").model
    assert model.penalty() is None
    assert not any(k.startswith("snapshot.") for k in model.state_dict())


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("architecture.order=[left,nope,right,sum]", r"architecture\.order: unknown task.*nope"),
        ("architecture.order=[left,right]", r"architecture\.order: missing task.*sum"),
        ("architecture.order=[left,left,right,sum]", r"listed more than once"),
        ("architecture.successive_regularization=-1", r"successive_regularization"),
        ("architecture.snapshot_every=0", r"snapshot_every"),
    ],
)
def test_config_mistakes_are_config_errors(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(override)


def test_an_order_that_puts_a_reader_before_its_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'sum' reads the estimate of \['left'\]"):
        build("tasks.sum.inputs_from=[left]", "architecture.order=[sum,left,right]")


@pytest.mark.slow  # a real CLI run; the fast tier builds and steps the model in-process
def test_a_smoke_run_through_the_cli_logs_the_penalty(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrun",
            "architecture=joint_many_task",
            "debug=smoke",
            f"hydra.run.dir={folder}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = pd.read_csv(folder / "metrics.csv")
    penalty = metrics[(metrics.task == "model") & (metrics.metric == "penalty")]
    assert len(penalty) == 2 and (penalty.value >= 0).all()
    assert json.loads((folder / "summary.json").read_text())["architecture"] == "JointManyTask"
