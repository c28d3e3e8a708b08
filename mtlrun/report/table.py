"""The comparison table: one row per configuration, its seeds folded into mean ± std.

Columns (numeric ones stay numeric, for the CSV):

- ``label``, ``status``, ``n_seeds``, ``seeds`` and one column per distinguishing setting (see configs.py);
- ``<task>/<metric>_mean`` and ``_std`` for every declared metric, on the report's split (test by default)
  at each run's selected epoch. std is the sample std over seeds (ddof=1); with one seed it is NaN;
- ``delta_m_mean`` / ``delta_m_std`` (only when there is a baseline): Δm% of each run against B of its
  data set (baseline.py), then mean and sample std over seeds. Δm% is linear in the metrics, so the mean
  equals Δm% of the mean metrics;
- ``mean_rank``: each configuration ranked on each metric's mean (1 = best, in the metric's direction, ties
  share the average rank), then averaged over the metrics it has;
- ``time_per_step_s``: mean over seeds of each run's mean ``time_per_step_s`` (metrics.csv);
- ``wall_time_s_sum``: the wall time of all its seeds together (what the row cost);
- ``best_in``: the columns in which this row is best (ties all marked), e.g. ``left/accuracy;delta_m``.

Auxiliary tasks (``auxiliary: true`` in summary.json, mtlrun/auxiliary.py) are helpers, not results: the
metrics of a task that is auxiliary in any run are left out of the metric columns, the mean rank and ``best_in``,
and each run's Δm% leaves out the metrics of its own auxiliary tasks; ``include_auxiliary`` keeps them all
(``mtlrun report --include-auxiliary``). ``Report.auxiliary`` counts the runs that had each auxiliary task.

Runs that did not complete (failed, interrupted by a signal, still running or killed) are left out of the
rows and listed in ``Report.failed`` with their overrides, status, error (or signal) and folder. Run folders
whose files cannot be read are listed in ``Report.unreadable`` (the file and the problem).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mtlrun.errors import MtlrunError
from mtlrun.report.baseline import Baseline
from mtlrun.report.collect import Run, UnreadableRun
from mtlrun.report.configs import Configuration, group_configurations
from mtlrun.report.delta import delta_m

SPLITS = ("test", "val")


@dataclass
class Report:
    """Everything the Markdown, the CSV, the HTML page and the plots are made from."""

    table: pd.DataFrame
    failed: pd.DataFrame
    configurations: list[Configuration]
    metrics: list[str]
    higher_is_better: dict[str, bool]
    settings: list[str]
    split: str
    baseline: Baseline | None
    n_runs: int
    optuna: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unreadable: list[UnreadableRun] = field(default_factory=list)  # run folders left out: file and problem
    inputs: list[str] = field(default_factory=list)  # the paths the runs were read from
    auxiliary: dict[str, int] = field(default_factory=dict)  # auxiliary task -> runs that trained it as one
    include_auxiliary: bool = False  # their metrics are columns (and in Δm%) too


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1) of the finite values; NaN for fewer than two."""
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return math.nan
    mean = sum(finite) / len(finite)
    return math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _directions(runs: Sequence[Run]) -> tuple[list[str], dict[str, bool]]:
    metrics: dict[str, None] = {}
    directions: dict[str, bool] = {}
    for run in runs:
        keys = run.metric_values("test")
        metrics |= dict.fromkeys(keys)
        if any(k not in directions for k in keys):
            directions |= run.directions()
    return list(metrics), directions


def run_delta_m(
    run: Run, split: str, baseline: Baseline, notes: list[str], include_auxiliary: bool = False
) -> float:
    """Δm% of one run against B of its data set, over B's metrics less those of the run's auxiliary tasks
    (unless ``include_auxiliary``); NaN (with a note) where it cannot be computed."""
    base = baseline.for_run(run)
    if base is not None and not include_auxiliary:
        helpers = run.auxiliary_tasks()
        base = {key: value for key, value in base.items() if key.partition("/")[0] not in helpers}
    if base is None:
        notes.append(f"no single-task baseline for data set {run.dataset!r}: no Δm% for {run.path}")
        return math.nan
    try:
        return delta_m(run.metric_values(split), base, run.directions())
    except MtlrunError as err:
        notes.append(f"no Δm% for {run.path}: {err}")
        return math.nan


def build_report(
    runs: Sequence[Run],
    split: str = "test",
    baseline: Baseline | None = None,
    optuna: Sequence[tuple[Path, dict[str, Any]]] = (),
    unreadable: Sequence[UnreadableRun] = (),
    inputs: Sequence[str | Path] = (),
    include_auxiliary: bool = False,
) -> Report:
    """Fold ``runs`` into one row per configuration (see the module docstring for every column)."""
    completed = [run for run in runs if run.completed]
    configurations = group_configurations(completed)
    metrics, directions = _directions(completed)
    auxiliary: dict[str, int] = {}
    for run in completed:
        for task in [t for t in run.tasks() if t in run.auxiliary_tasks()]:  # in the run's task order
            auxiliary[task] = auxiliary.get(task, 0) + 1
    if not include_auxiliary:
        metrics = [key for key in metrics if key.partition("/")[0] not in auxiliary]
    settings = list(configurations[0].settings) if configurations else []
    notes: list[str] = []
    rows = []
    for config in configurations:
        row: dict[str, Any] = {"label": config.label, "status": "completed", "n_seeds": len(config.runs)}
        row["seeds"] = ",".join(str(seed) for seed in config.seeds)
        row |= config.settings
        values = [run.metric_values(split) for run in config.runs]
        for key in metrics:
            column = [v.get(key, math.nan) for v in values]
            row[f"{key}_mean"], row[f"{key}_std"] = mean(column), sample_std(column)
        if baseline is not None:
            deltas = [run_delta_m(run, split, baseline, notes, include_auxiliary) for run in config.runs]
            row["delta_m_mean"], row["delta_m_std"] = mean(deltas), sample_std(deltas)
        row["time_per_step_s"] = mean([run.time_per_step() for run in config.runs])
        row["wall_time_s_sum"] = sum(run.wall_time for run in config.runs)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table["mean_rank"] = mean_rank(table, metrics, directions)
        table["best_in"] = best_in(table, metrics, directions)
    failed = pd.DataFrame(
        [
            {
                "label": " ".join(run.overrides) or run.path.name,
                "status": run.status,
                "seeds": "" if run.seed is None else str(run.seed),
                "error": run.error or "",
                "path": str(run.path),
            }
            for run in runs
            if not run.completed
        ],
        columns=["label", "status", "seeds", "error", "path"],
    )
    return Report(
        table=table,
        failed=failed,
        configurations=configurations,
        metrics=metrics,
        higher_is_better=directions,
        settings=settings,
        split=split,
        baseline=baseline,
        n_runs=len(runs),
        optuna=list(optuna),
        notes=list(dict.fromkeys(notes)),
        unreadable=list(unreadable),
        inputs=[str(path) for path in inputs],
        auxiliary=auxiliary,
        include_auxiliary=include_auxiliary,
    )


def mean_rank(table: pd.DataFrame, metrics: Sequence[str], directions: dict[str, bool]) -> pd.Series:
    """Per row: the mean over metrics of its rank on that metric's mean (1 = best; ties averaged)."""
    ranks = pd.DataFrame(
        {
            key: table[f"{key}_mean"].rank(ascending=not directions.get(key, False), method="average")
            for key in metrics
        },
        index=table.index,
    )
    return ranks.mean(axis=1, skipna=True)


def best_columns(metrics: Sequence[str], directions: dict[str, bool]) -> dict[str, bool]:
    """{column: higher is better} of every column that gets a best mark."""
    columns = {f"{key}_mean": directions.get(key, False) for key in metrics}
    return columns | {"delta_m_mean": False, "mean_rank": False, "time_per_step_s": False}


def best_in(table: pd.DataFrame, metrics: Sequence[str], directions: dict[str, bool]) -> pd.Series:
    """Per row, the columns (without ``_mean``) where it holds the best value; marks need two or more rows."""
    marks: list[list[str]] = [[] for _ in range(len(table))]
    for column, higher in best_columns(metrics, directions).items():
        if column not in table or table[column].notna().sum() < 2:
            continue
        best = table[column].max() if higher else table[column].min()
        for i, value in enumerate(table[column]):
            if value == best:
                marks[i].append(column.removesuffix("_mean"))
    return pd.Series([";".join(m) for m in marks], index=table.index)
