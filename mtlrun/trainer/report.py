"""The end-of-run table: per task and metric, the validation and test values of the selected epoch."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd


def results_frame(
    val: Mapping[str, Mapping[str, float]], test: Mapping[str, Mapping[str, float]]
) -> pd.DataFrame:
    rows = [
        {"task": task, "metric": metric, "val": value, "test": test.get(task, {}).get(metric, float("nan"))}
        for task, metrics in val.items()
        for metric, value in metrics.items()
    ]
    return pd.DataFrame(rows, columns=["task", "metric", "val", "test"])


def results_table(val: Mapping[str, Mapping[str, float]], test: Mapping[str, Mapping[str, float]]) -> str:
    return results_frame(val, test).to_markdown(index=False, floatfmt=".4f")
