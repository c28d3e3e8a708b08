"""Auxiliary tasks (mtlrun/auxiliary.py): the flag's effect on selection and reports, each generator's defining
property, and gradient reversal's negated, scaled gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import build_objects, small_cfg

from mtlrun import auxiliary
from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.data.base import Split, TensorData
from mtlrun.data.tabular import TabularData
from mtlrun.errors import ConfigError, DataError
from mtlrun.report.baseline import baseline_from
from mtlrun.report.collect import load_run
from mtlrun.report.markdown import render
from mtlrun.report.table import build_report
from mtlrun.tasks import build_tasks
from mtlrun.trainer.backward import gradients_through_views, per_task_gradients
from mtlrun.trainer.state import Monitor
from mtlrun.trainer.step import per_task_losses

# ------------------------------------------------------------------------------------------------ the flag


def test_all_auxiliary_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every task .* is auxiliary"):
        build_tasks({"a": {"kind": "regression", "auxiliary": True}})


def test_selection_on_loss_ignores_the_auxiliary_task() -> None:
    """Epoch 1 has the lower total loss only because of the helper's loss; the main task is better at 2."""
    tasks = build_tasks({"main": {"kind": "regression"}, "aux": {"kind": "regression", "auxiliary": True}})
    epochs = {
        1: {"main": {"loss": 1.0}, "aux": {"loss": 0.1}},
        2: {"main": {"loss": 0.8}, "aux": {"loss": 5.0}},
    }
    monitor = Monitor.from_config("loss", tasks)
    best = None
    for epoch, val in epochs.items():
        if monitor.improved(monitor.value(val), None if best is None else best[1]):
            best = epoch, monitor.value(val)
    assert best == (2, 0.8)  # with the helper's loss summed in, epoch 1 (1.1 < 5.8) would win
    assert Monitor.from_config("aux/loss", tasks).value({"aux": {"loss": 0.3}}) == 0.3  # allowed explicitly


def _write_run(folder: Path, seed: int, main: float, aux: float, auxiliary_flag: bool, single: bool) -> None:
    folder.mkdir(parents=True)
    tasks = {"main": {"kind": "regression", "metrics": ["mae"]}}
    test = {"main": {"mae": main}}
    if aux is not None:
        tasks["hint"] = {"kind": "regression", "metrics": ["mae"]} | (
            {"auxiliary": True} if auxiliary_flag else {}
        )
        test["hint"] = {"mae": aux}
    summary = {
        "status": "completed",
        "seed": seed,
        "data": {"name": "toy"},
        "tasks": tasks,
        "independent_tasks": single,
        "higher_is_better": {"main/mae": False, "hint/mae": False},
        "val": test,
        "test": test,
        "wall_time_s": 1.0,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    arch = "single_task" if single else "hard_sharing"
    (folder / "config.yaml").write_text(f"seed: {seed}\narchitecture: {{_target_: x.{arch}}}\n")


def test_report_leaves_auxiliary_metrics_out_of_columns_and_delta_m(tmp_path: Path) -> None:
    """Baseline: main 2.0, hint 1.0 (both plain tasks). The run: main 1.0 (−50 %), hint 3.0 (+200 %), hint
    auxiliary. Δm% counts main only (−50) unless auxiliary metrics are included ((−50 + 200) / 2 = 75)."""
    _write_run(tmp_path / "base", 0, 2.0, 1.0, auxiliary_flag=False, single=True)
    _write_run(tmp_path / "mtl", 0, 1.0, 3.0, auxiliary_flag=True, single=False)
    runs = [load_run(tmp_path / "base"), load_run(tmp_path / "mtl")]
    baseline = baseline_from(runs, "test", "the single-task run")
    default = build_report(runs[1:], baseline=baseline)
    assert default.metrics == ["main/mae"] and "hint/mae_mean" not in default.table
    assert default.table.delta_m_mean[0] == pytest.approx(-50.0)
    assert default.auxiliary == {"hint": 1}
    assert "Auxiliary tasks: `hint` (1 run(s)); left out" in render(default)
    full = build_report(runs[1:], baseline=baseline, include_auxiliary=True)
    assert full.metrics == ["main/mae", "hint/mae"]
    assert full.table.delta_m_mean[0] == pytest.approx(75.0)
    assert "hint/mae (aux)" in render(full)


# ------------------------------------------------------------------------------------------------ generators


def test_reconstruction_target_is_the_flattened_input_and_sizes_the_head() -> None:
    built = build_objects(small_cfg(["auxiliary=reconstruction"]))
    for split in built.data.splits.values():
        assert torch.equal(split.y["reconstruction"], split.x.reshape(len(split), -1))
    assert built.tasks["reconstruction"].out_dim == 100  # the 10 x 10 canvas
    batch = {"x": built.data.splits["train"].x[:4]}
    assert built.model(batch)["reconstruction"].shape == (4, 100)


def _frames(n: int = 60) -> dict[str, pd.DataFrame]:
    g = torch.Generator().manual_seed(0)
    frame = pd.DataFrame(
        {
            "a": torch.randn(n, generator=g).numpy(),
            "price": torch.rand(n, generator=g).numpy() * 10,
            "colour": ["red", "blue", "green"] * (n // 3),
            "y": torch.randn(n, generator=g).numpy(),
        }
    )
    return {"train": frame[:30], "val": frame[30:45], "test": frame[45:]}


def test_predicted_inputs_leave_the_model_input() -> None:
    tasks = build_tasks(
        {
            "y": {"kind": "regression"},
            "price": {
                "kind": "regression",
                "auxiliary": True,
                "generate": {"from": "feature", "column": "price"},
            },
            "hue": {
                "kind": "multiclass",
                "num_classes": 3,
                "generate": {"from": "feature", "column": "colour"},
            },
        }
    )
    data = TabularData.from_frames(_frames(), tasks, numeric=["a", "price"], categorical=["colour"])
    assert data.preprocessor.feature_columns == ["a"] and data.input_shape == (1,)
    assert set(data.targets) == {"y", "price", "colour"}
    assert torch.allclose(
        data.splits["train"].y["price"], torch.tensor(_frames()["train"].price.values).float()
    )
    wrong = build_tasks(
        {
            "y": {"kind": "regression"},
            "p": {"kind": "binary", "generate": {"from": "feature", "column": "price"}},
        }
    )
    with pytest.raises(ConfigError, match="numeric column; use kind: regression"):
        TabularData.from_frames(_frames(), wrong, numeric=["a", "price"])


def _toy(train: torch.Tensor, other: torch.Tensor) -> TensorData:
    splits = {"train": Split(torch.zeros(len(train), 2), {"r": train, "c": (train.abs() * 3).long() % 4})}
    splits |= {
        s: Split(torch.zeros(len(other), 2), {"r": other, "c": (other.abs() * 3).long() % 4})
        for s in ("val", "test")
    }
    return TensorData(splits)


def test_quantile_bins_come_from_the_training_split_and_are_balanced_there() -> None:
    train = torch.randn(400, generator=torch.Generator().manual_seed(1))
    data = _toy(train, train[:50] + 100.0)  # val/test far above every training edge: all in the top bin
    tasks = build_tasks(
        {
            "r": {"kind": "regression"},
            "h": {"auxiliary": True, "generate": {"from": "bins", "of": "r", "bins": 4}},
        }
    )
    assert tasks["h"].kind == "multiclass" and tasks["h"].num_classes == 4
    auxiliary.add_targets(data, tasks)
    assert torch.bincount(data.splits["train"].y["h"]).tolist() == [100, 100, 100, 100]
    assert (data.splits["val"].y["h"] == 3).all()
    assert int(data.splits["train"].y["h"][train.argmin()]) == 0


def test_class_groups_map_labels_and_must_partition_the_classes() -> None:
    data = _toy(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 10))
    spec = {"c": {"kind": "multiclass", "num_classes": 4}}
    tasks = build_tasks(
        spec
        | {"g": {"auxiliary": True, "generate": {"from": "groups", "of": "c", "groups": [[0, 3], [1, 2]]}}}
    )
    auxiliary.add_targets(data, tasks)
    labels = data.splits["train"].y["c"]
    assert torch.equal(data.splits["train"].y["g"], torch.tensor([0, 1, 1, 0])[labels])
    bad = build_tasks(
        spec | {"g": {"auxiliary": True, "generate": {"from": "groups", "of": "c", "groups": [[0], [1, 2]]}}}
    )
    with pytest.raises(ConfigError, match="exactly once"):
        auxiliary.add_targets(_toy(torch.zeros(4), torch.zeros(2)), bad)


def test_ties_across_quantiles_are_a_data_error() -> None:
    with pytest.raises(DataError, match="use fewer bins"):
        auxiliary.quantile_edges(torch.tensor([0.0] * 9 + [1.0]), 4, "h")


def test_a_preset_on_the_wrong_data_set_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="made for data=tabular .* run it with data=tabular"):
        build_objects(small_cfg(["auxiliary=tabular_predict_price"]))


# ------------------------------------------------------------------------------------------------ reversal


def _models(strength: float) -> tuple[HardSharing, HardSharing, dict]:
    """The same hard-sharing model twice (same weights): task ``adv`` plain, then through a reversal."""
    spec = {
        "main": {"kind": "regression"},
        "adv": {"kind": "multiclass", "num_classes": 3, "auxiliary": True},
    }
    reversed_spec = spec | {"adv": spec["adv"] | {"reverse_gradient": {"strength": strength}}}

    def encoder() -> torch.nn.Module:
        layer = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh())
        layer.out_dim = 6
        return layer

    torch.manual_seed(0)
    plain = HardSharing(encoder, build_tasks(spec), {"hidden": [4]})
    adversarial = HardSharing(encoder, build_tasks(reversed_spec), {"hidden": [4]})
    adversarial.load_state_dict(plain.state_dict(), strict=False)  # all but the ramp buffer
    g = torch.Generator().manual_seed(2)
    batch = {
        "x": torch.randn(8, 5, generator=g),
        "y": {"main": torch.randn(8, generator=g), "adv": torch.arange(8) % 3},
    }
    return plain, adversarial, batch


def test_gradient_reversal_negates_and_scales_the_trunk_gradient() -> None:
    plain, adversarial, batch = _models(strength=0.3)
    rows = []
    for model in (plain, adversarial):
        losses = per_task_losses(model(batch), batch, model.tasks)
        rows.append(per_task_gradients(losses, model.shared_parameters(), model.task_owned_parameters()))
    assert torch.allclose(rows[1][0], rows[0][0])  # the main task's row is untouched
    assert torch.allclose(rows[1][1], -0.3 * rows[0][1], atol=1e-7)  # the adversary's: −λ times
    assert rows[0][1].abs().sum() > 0
    # the heads themselves still descend their own loss: the same head gradients
    for p, q in zip(plain.heads.parameters(), adversarial.heads.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad)


def test_views_give_the_reversed_rows_for_gradient_methods() -> None:
    _, model, batch = _models(strength=2.0)
    losses = per_task_losses(model(batch), batch, model.tasks)
    views = model.representation_views()
    one_pass = gradients_through_views(losses, [views[t] for t in model.tasks])
    exact = per_task_gradients(losses, [model.shared_representation])
    assert torch.allclose(one_pass, exact, atol=1e-7)


def test_ganin_schedule_ramps_with_training_forwards_and_is_saved() -> None:
    layer = auxiliary.GradientReversal(auxiliary.ReversalSpec(1.0, "ganin", 10.0, ramp_steps=4))
    h = torch.ones(2, 3, requires_grad=True)
    assert layer.strength() == 0.0
    layer.eval()
    layer(h)
    assert int(layer.steps) == 0  # evaluation does not advance the ramp
    layer.train()
    for _ in range(2):
        layer(h)
    p = 2 / 4
    assert layer.strength() == pytest.approx(2 / (1 + torch.exp(torch.tensor(-10 * p)).item()) - 1)
    assert layer.state_dict()["steps"] == 2
    with pytest.raises(ConfigError, match="ramp_steps"):
        auxiliary.ReversalSpec.parse("adv", {"schedule": "ganin"})
