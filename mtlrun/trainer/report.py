"""The end-of-run table: per task and metric, the validation and test values of the selected epoch.

Written with tabulate alone (the Markdown pandas' ``to_markdown`` writes, through tabulate too): importing
pandas would add about 0.25 s of CPU to the end of every run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tabulate import tabulate

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["task", "metric", "val", "test"]


def results_rows(
    val: Mapping[str, Mapping[str, float]],
    test: Mapping[str, Mapping[str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> list[list]:
    """One row (task, metric, val, test) per task and metric; ``columns`` ({task: metrics}) keeps only those
    (default: all)."""
    return [
        [task, metric, value, test.get(task, {}).get(metric, float("nan"))]
        for task, metrics in val.items()
        for metric, value in metrics.items()
        if columns is None or metric in columns.get(task, ())
    ]


def results_frame(
    val: Mapping[str, Mapping[str, float]],
    test: Mapping[str, Mapping[str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """`results_rows` as a DataFrame with the columns task, metric, val, test."""
    import pandas as pd

    return pd.DataFrame(results_rows(val, test, columns), columns=COLUMNS)


def results_table(
    val: Mapping[str, Mapping[str, float]],
    test: Mapping[str, Mapping[str, float]],
    columns: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """`results_rows` as a Markdown table, values to 4 decimals."""
    return tabulate(
        results_rows(val, test, columns), headers=COLUMNS, tablefmt="pipe", floatfmt=".4f", showindex=False
    )
