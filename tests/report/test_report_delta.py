"""Δm% (mtlrun.report.delta.delta_m) on hand-computed examples, and its errors."""

from __future__ import annotations

import math

import pytest

from mtlrun.errors import ConfigError
from mtlrun.report.delta import delta_m

DIRECTIONS = {"a/accuracy": True, "b/mae": False}
BASELINE = {"a/accuracy": 0.8, "b/mae": 2.0}


def test_mixed_directions_by_hand() -> None:
    # accuracy (higher is better) 0.9 vs 0.8: -(0.9 - 0.8) / 0.8 * 100 = -12.5 (improvements count negative)
    # mae (lower is better)       1.5 vs 2.0: +(1.5 - 2.0) / 2.0 * 100 = -25.0
    # mean: (-12.5 - 25.0) / 2 = -18.75
    assert delta_m({"a/accuracy": 0.9, "b/mae": 1.5}, BASELINE, DIRECTIONS) == pytest.approx(-18.75)


def test_worse_on_both_is_positive_and_equal_is_zero() -> None:
    # accuracy 0.6: -(0.6 - 0.8) / 0.8 * 100 = +25; mae 3.0: (3 - 2) / 2 * 100 = +50; mean +37.5
    assert delta_m({"a/accuracy": 0.6, "b/mae": 3.0}, BASELINE, DIRECTIONS) == pytest.approx(37.5)
    assert delta_m(BASELINE, BASELINE, DIRECTIONS) == 0.0


def test_metrics_outside_the_baseline_are_ignored() -> None:
    metrics = {"a/accuracy": 0.9, "b/mae": 1.5, "c/rmse": 100.0}
    assert delta_m(metrics, BASELINE, DIRECTIONS | {"c/rmse": False}) == pytest.approx(-18.75)


def test_a_negative_baseline_keeps_improvements_negative() -> None:
    # r2 (higher is better) from -2.0 to -1.0 is an improvement: -(-1 - -2) / |-2| * 100 = -50
    assert delta_m({"y/r2": -1.0}, {"y/r2": -2.0}, {"y/r2": True}) == pytest.approx(-50.0)


def test_a_nan_metric_gives_nan() -> None:
    assert math.isnan(delta_m({"a/accuracy": math.nan, "b/mae": 1.5}, BASELINE, DIRECTIONS))


@pytest.mark.parametrize(
    ("metrics", "baseline", "directions", "named"),
    [
        ({"a/accuracy": 0.9}, BASELINE, DIRECTIONS, "b/mae"),  # a baseline metric the run lacks
        (
            {"a/accuracy": 0.9, "b/mae": 1.0},
            {"a/accuracy": 0.0, "b/mae": 2.0},
            DIRECTIONS,
            "a/accuracy",
        ),  # zero B
        (
            {"a/accuracy": 0.9, "b/mae": 1.0},
            {"a/accuracy": 0.8, "b/mae": math.nan},
            DIRECTIONS,
            "b/mae",
        ),  # NaN B
        ({"a/accuracy": 0.9, "b/mae": 1.0}, BASELINE, {"a/accuracy": True}, "b/mae"),  # no direction
        ({"a/accuracy": 0.9}, {}, DIRECTIONS, "no metrics"),  # empty baseline
    ],
)
def test_errors_name_the_metric(metrics: dict, baseline: dict, directions: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        delta_m(metrics, baseline, directions)
