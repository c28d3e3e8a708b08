"""The end-of-run table: per task and metric, the validation and test values of the selected epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd


def results_frame(
    val: Mapping[str, Mapping[str, float]],
    test: Mapping[str, Mapping[str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per task and metric; ``columns`` ({task: metrics}) keeps only those (default: all)."""
    rows = [
        {"task": task, "metric": metric, "val": value, "test": test.get(task, {}).get(metric, float("nan"))}
        for task, metrics in val.items()
        for metric, value in metrics.items()
        if columns is None or metric in columns.get(task, ())
    ]
    return pd.DataFrame(rows, columns=["task", "metric", "val", "test"])


def results_table(
    val: Mapping[str, Mapping[str, float]],
    test: Mapping[str, Mapping[str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> str:
    return results_frame(val, test, columns).to_markdown(index=False, floatfmt=".4f")
