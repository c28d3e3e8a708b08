"""The single-task baseline B of Δm%.

B is formed per data set: for data set d and metric k, B_k is the mean of metric k (on the report's split, at
each run's selected epoch) over every completed single-task run (``architecture=single_task``) on d, all
seeds and all other settings pooled. A run is compared with the B of its own data set; a run whose data set
has no single-task run gets no Δm%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mtlrun.report.collect import Run


@dataclass
class Baseline:
    """B per data set: {data set: {"task/metric": mean}}, with how many runs formed it and where they were."""

    values: dict[str | None, dict[str, float]]
    counts: dict[str | None, int]
    source: str

    def for_run(self, run: Run) -> dict[str, float] | None:
        return self.values.get(run.dataset)


def single_task_runs(runs: Sequence[Run]) -> list[Run]:
    return [run for run in runs if run.completed and run.is_single_task]


def baseline_from(runs: Sequence[Run], split: str, source: str, single_task: bool = True) -> Baseline | None:
    """B from the completed single-task runs among ``runs`` (every completed run with ``single_task=False``);
    None when there is none."""
    by_dataset: dict[str | None, list[dict[str, float]]] = {}
    for run in single_task_runs(runs) if single_task else [r for r in runs if r.completed]:
        by_dataset.setdefault(run.dataset, []).append(run.metric_values(split))
    if not by_dataset:
        return None
    values = {}
    for dataset, rows in by_dataset.items():
        keys = list(dict.fromkeys(k for row in rows for k in row))
        values[dataset] = {k: _mean([row.get(k, math.nan) for row in rows]) for k in keys}
    return Baseline(values=values, counts={d: len(rows) for d, rows in by_dataset.items()}, source=source)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
