"""Tasks (mtlrun.tasks): losses per kind, label checks, config validation, metric directions, estimates."""

import dataclasses
import math

import pytest
import torch

from mtlrun.errors import ConfigError
from mtlrun.schema import TaskKind
from mtlrun.tasks import (
    DEFAULT_METRICS,
    KINDS,
    LOSSES,
    METRICS,
    RESERVED_NAMES,
    RESERVED_ROW_NAMES,
    Task,
    build_tasks,
    topological_order,
)

N, C = 7, 4


def make_task(kind, **kw):
    classes = {"num_classes": C} if kind in ("multiclass", "multilabel") else {}
    return Task(name="t", kind=kind, target="y", **classes, **kw)


def sample(kind, gen):
    """(prediction, target) of the shapes the runner passes for ``kind``."""
    if kind == "regression":
        return torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    if kind == "binary":
        return torch.randn(N, generator=gen), torch.randint(0, 2, (N,), generator=gen).float()
    if kind == "multiclass":
        return torch.randn(N, C, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return torch.randn(N, C, generator=gen), torch.randint(0, 2, (N, C), generator=gen).float()


LOSS_CASES = [(kind, loss) for kind in KINDS for loss in LOSSES[kind]]


@pytest.mark.parametrize(("kind", "loss"), LOSS_CASES, ids=[f"{kind}-{loss}" for kind, loss in LOSS_CASES])
def test_loss_is_per_sample_non_negative_and_differentiable(kind, loss):
    task = make_task(kind, loss=loss)
    prediction, target = sample(kind, torch.Generator().manual_seed(0))
    prediction.requires_grad_(True)
    per_sample = task.loss_per_sample(prediction, target)
    assert per_sample.shape == (N,)
    assert (per_sample >= 0).all() and torch.isfinite(per_sample).all()
    per_sample.mean().backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_loss_values():
    mse = make_task("regression").loss_per_sample(torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.5]))
    assert mse.tolist() == [4.0, 0.25]
    l1 = make_task("regression", loss="l1").loss_per_sample(torch.tensor([1.0]), torch.tensor([3.0]))
    assert l1.item() == 2.0
    uniform = make_task("multiclass").loss_per_sample(torch.zeros(2, C), torch.tensor([0, 3]))
    assert uniform.tolist() == pytest.approx([math.log(C)] * 2)
    half = make_task("binary").loss_per_sample(torch.zeros(3), torch.tensor([0.0, 1.0, 1.0]))
    assert half.tolist() == pytest.approx([math.log(2)] * 3)
    multilabel = make_task("multilabel").loss_per_sample(torch.zeros(2, C), torch.ones(2, C))
    assert multilabel.tolist() == pytest.approx([math.log(2)] * 2)  # mean over labels


def test_defaults_per_kind():
    for kind in KINDS:
        task = make_task(kind)
        assert task.loss == next(iter(LOSSES[kind]))
        assert list(task.metrics) == DEFAULT_METRICS[kind]
    assert make_task("multiclass").out_dim == C and make_task("regression").out_dim == 1


# ------------------------------------------------------------------------------------ label checks


def test_check_targets_accepts_valid_labels():
    make_task("multiclass").check_targets(torch.tensor([0, 1, C - 1]), "train")
    make_task("binary").check_targets(torch.tensor([0.0, 1.0]), "train")
    make_task("regression").check_targets(torch.tensor([-3.0, 1e6]), "train")
    make_task("multilabel").check_targets(torch.zeros(2, C), "train")


@pytest.mark.parametrize("bad", [C, C + 8, -1])
def test_multiclass_label_out_of_range(bad):
    task = make_task("multiclass")
    with pytest.raises(ConfigError) as err:
        task.check_targets(torch.tensor([0, bad, 1]), "val")
    message = str(err.value)
    assert f"label {bad} " in message and f"num_classes={C}" in message and "split val" in message


def test_multiclass_fractional_label():
    with pytest.raises(ConfigError, match="must be integers"):
        make_task("multiclass").check_targets(torch.tensor([0.0, 1.5]), "train")


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
def test_binary_labels_must_be_zero_or_one(kind):
    target = torch.zeros(3, C) if kind == "multilabel" else torch.zeros(3)
    target[1] = 2.0
    with pytest.raises(ConfigError, match="must be 0 or 1; found 2"):
        make_task(kind).check_targets(target, "train")


def test_multilabel_target_shape():
    with pytest.raises(ConfigError, match=rf"shape \[N, {C}\]"):
        make_task("multilabel").check_targets(torch.zeros(3, C + 1), "train")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_regression_targets_must_be_finite(value):
    with pytest.raises(ConfigError, match="NaN or inf"):
        make_task("regression").check_targets(torch.tensor([1.0, value]), "test")


def test_empty_targets():
    with pytest.raises(ConfigError, match="no labels"):
        make_task("regression").check_targets(torch.tensor([]), "train")


# ------------------------------------------------------------------------------------ config validation


def test_unknown_loss_lists_the_choices():
    with pytest.raises(
        ConfigError, match=r"tasks\.t\.loss: 'hinge' is not a regression loss.*mse, l1, huber"
    ):
        make_task("regression", loss="hinge")


def test_unknown_metric_lists_the_choices():
    with pytest.raises(
        ConfigError, match=r"'auc' is not a binary metric.*accuracy, auroc, f1, average_precision"
    ):
        make_task("binary", metrics=["accuracy", "auc"])


def test_unknown_kind():
    with pytest.raises(ConfigError, match="not a task kind"):
        Task(name="t", kind="ordinal", target="y")


@pytest.mark.parametrize("classes", [None, 1])
def test_classifier_needs_two_classes(classes):
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        Task(name="t", kind="multiclass", target="y", num_classes=classes)


@pytest.mark.parametrize(
    ("kind", "metric", "higher"),
    [
        ("multiclass", "accuracy", True),
        ("binary", "accuracy", True),
        ("binary", "auroc", True),
        ("regression", "mae", False),
        ("regression", "rmse", False),
        ("regression", "r2", True),
    ],
)
def test_higher_is_better(kind, metric, higher):
    assert make_task(kind).higher_is_better(metric) is higher


def test_every_metric_builds_and_scores_a_batch():
    gen = torch.Generator().manual_seed(0)
    for kind in KINDS:
        task = make_task(kind, metrics=list(METRICS[kind]))
        prediction, target = sample(kind, gen)
        for name, metric in task.make_metrics().items():
            metric.update(*task.metric_inputs(prediction, target))
            assert math.isfinite(float(metric.compute())), (kind, name)


# ------------------------------------------------------------------------------------ estimates and building


def test_estimates_are_features_of_the_right_width():
    logits = torch.randn(N, C, generator=torch.Generator().manual_seed(1))
    probs = make_task("multiclass").estimate(logits)
    assert probs.shape == (N, C) and torch.allclose(probs.sum(-1), torch.ones(N))
    binary = make_task("binary").estimate(torch.tensor([-50.0, 0.0, 50.0]))
    assert binary.shape == (3, 1) and binary[:, 0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    values = torch.tensor([1.5, -2.0])
    assert torch.equal(make_task("regression").estimate(values), values[:, None])


def test_prepare_prediction_squeezes_one_output_heads_only():
    assert make_task("regression").prepare_prediction(torch.zeros(N, 1)).shape == (N,)
    assert make_task("multiclass").prepare_prediction(torch.zeros(N, C)).shape == (N, C)


def test_build_tasks_from_config_node():
    tasks = build_tasks(
        {
            "a": {"kind": TaskKind.multiclass, "num_classes": 3, "metrics": None, "inputs_from": []},
            "b": {"kind": "regression", "target": "col_b", "inputs_from": ["a"], "detach": False},
        }
    )
    assert tasks["a"].kind == "multiclass" and tasks["a"].target == "a"  # target defaults to the name
    assert tasks["b"].target == "col_b" and tasks["b"].detach is False
    assert topological_order({"b": tasks["b"], "a": tasks["a"]}) == ["a", "b"]


def test_build_tasks_rejects_unknown_keys_and_empty_config():
    with pytest.raises(ConfigError, match=r"tasks\.a: unknown keys \['foo'\]"):
        build_tasks({"a": {"kind": "regression", "foo": 1}})
    with pytest.raises(ConfigError, match="no tasks declared"):
        build_tasks({})


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("all", "'all' is reserved for metrics.csv's own rows"),
        ("model", "'model' is reserved for metrics.csv's own rows"),
        ("lr", "'lr' is reserved (a key of heads and optim.groups)"),
        ("left~right", "'left~right' contains '~'"),
        ("click/ctr", "'click/ctr' contains '/'"),
        ("a.b", "'a.b' contains '.'"),
    ],
)
def test_reserved_task_names_are_refused_with_the_list_of_them(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        build_tasks({"fine": {"kind": "regression"}, name: {"kind": "regression"}})
    message = str(error.value)
    assert message.startswith(f"tasks.{name}: {problem}; rename the task. Reserved names: all, model, ")
    assert all(reserved in message for reserved in (*RESERVED_ROW_NAMES, *RESERVED_NAMES))
    assert message.endswith("a name may not contain '.', '~', '/'")


def test_names_that_only_resemble_reserved_ones_are_tasks() -> None:
    names = ["all_users", "model_score", "Model", "left-right", "lr2"]
    assert list(build_tasks({name: {"kind": "regression"} for name in names})) == names


def test_the_rows_of_metrics_csv_that_are_not_tasks_use_only_the_reserved_names(tmp_path) -> None:
    """RESERVED_ROW_NAMES is what the trainer writes: a run with model rows (PLE's shared gates) and task-pair
    rows (PCGrad's gradient cosines) puts nothing else in the task column of metrics.csv."""
    import pandas as pd
    from conftest import small_cfg

    from mtlrun.trainer.runner import run

    run(small_cfg(["architecture=ple", "weighting=pcgrad", "debug=smoke"]), tmp_path)
    names = set(pd.read_csv(tmp_path / "metrics.csv").task)
    pairs = {name for name in names if "~" in name}
    assert pairs == {"left~right", "left~sum", "right~sum"}
    assert names - pairs - {"left", "right", "sum"} == set(RESERVED_ROW_NAMES)


def test_pos_weight_probabilities_stay_calibrated() -> None:
    """With pos_weight w the BCE optimum of a constant logit is log(w p / (1 - p)) (positives count w times);
    Task.probabilities takes log w off, so the fitted constant model predicts the base rate p, not w-inflated
    odds. Here p = 0.2, w = 4: the raw sigmoid would say 0.5."""
    task = Task(name="click", kind="binary", target="click", pos_weight=4.0)
    labels = torch.tensor([1.0] * 20 + [0.0] * 80).view(100, 1)
    logit = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([logit], lr=1.0)
    for _ in range(300):
        optimizer.zero_grad()
        task.loss_mean(logit.expand(100, 1), labels).backward()
        optimizer.step()
    assert float(logit.detach()) == pytest.approx(math.log(4 * 0.2 / 0.8), abs=1e-4)
    assert float(task.probabilities(logit.detach())) == pytest.approx(0.2, abs=1e-4)
    assert float(task.estimate(logit.detach().view(1, 1))) == pytest.approx(0.2, abs=1e-4)
    unweighted = Task(name="click", kind="binary", target="click")
    assert float(unweighted.probabilities(torch.zeros(1))) == 0.5


def test_the_declared_task_is_frozen_and_fitting_makes_a_copy():
    declared = Task(name="click", kind="binary", target="click", pos_weight="auto")
    with pytest.raises(dataclasses.FrozenInstanceError):
        declared.pos_weight = 2.0
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    fitted = declared.with_pos_weight_fitted(labels).with_data_settings("t", {"classes": ["no", "yes"]})
    assert fitted.positive_weight == pytest.approx(2.0) and fitted.class_labels == ("no", "yes")
    assert declared.positive_weight is None and declared.class_labels is None  # untouched
    assert fitted.pos_weight == "auto"  # what the config declared stays readable
    # unfitted auto cannot weigh a loss: the message says how to fit it
    with pytest.raises(ConfigError, match="not fitted"):
        declared.loss_mean(torch.zeros(6), labels)
    assert fitted.loss_mean(torch.zeros(6), labels).item() == pytest.approx(
        math.log(2) * (2 * 2.0 + 4) / 6  # positives weigh 2: BCE(0 logit) = log 2 per row
    )
