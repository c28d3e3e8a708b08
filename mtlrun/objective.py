"""The number a run hands back to a sweeper (the ``objective`` config block): what Optuna optimises.

``objective.metric`` picks it, and with it the direction an Optuna study must optimise it in:

- ``monitor``: the selected epoch's validation ``trainer.monitor`` value (``summary["monitor_value"]``).
  ``minimize`` for ``loss`` (the sum of the validation losses, the default) or a lower-is-better metric
  (``sum/mae``); ``maximize`` for a higher-is-better metric (``left/accuracy``).
- ``delta_m``: Δm% (`mtlrun.report.delta.delta_m`) of the selected epoch's *validation*
  metrics against the validation metrics of the single-task runs at ``objective.baseline`` (a run folder or
  a sweep folder; several runs are averaged, as the report does). Always ``minimize``. Test metrics never
  enter a search (model selection and tuning use validation only).

A run that fails returns None (see `mtlrun.cli.train`): the Optuna sweeper records that trial as failed,
and ``hydra.sweeper.max_failure_rate`` decides whether the study goes on. A completed run whose value is NaN
(a diverged metric) is recorded as failed by Optuna too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtlrun import rundir
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task, build_tasks

MINIMIZE = "minimize"
MAXIMIZE = "maximize"


@dataclass(frozen=True)
class Objective:
    """What a run returns to a sweeper: ``value(summary)`` and the Optuna direction that optimises it."""

    name: str  # what the value is, for messages
    direction: str  # "minimize" or "maximize"
    value: Callable[[Mapping[str, Any]], float]  # summary.json of a completed run -> the number


def validation_metrics(summary: Mapping[str, Any], tasks: Mapping[str, Task]) -> dict[str, float]:
    """{"task/metric": value} of the selected epoch's validation metrics, declared metrics only (no losses)."""
    return rundir.selected_metrics(summary, "val", {name: task.metrics for name, task in tasks.items()})


def _number(value: Any) -> float:
    """A summary value as a float; None (no epoch was ever selected) becomes NaN, which Optuna fails."""
    return math.nan if value is None else float(value)


def monitor_objective(cfg: DictConfig, tasks: Mapping[str, Task]) -> Objective:
    """The validation ``trainer.monitor`` value of the selected epoch."""
    from mtlrun.trainer.state import Monitor

    monitor = Monitor.from_config(cfg.trainer.monitor, tasks)
    return Objective(
        name=f"validation {monitor.name}",
        direction=MAXIMIZE if monitor.higher_is_better else MINIMIZE,
        value=lambda summary: _number(summary.get("monitor_value")),
    )


def delta_m_objective(cfg: DictConfig, tasks: Mapping[str, Task]) -> Objective:
    """Validation Δm% against the single-task runs at ``objective.baseline`` (loaded and checked now, so a bad
    baseline stops the run before it trains)."""
    from mtlrun.report.delta import delta_m

    baseline = load_baseline(cfg.objective.baseline)
    directions = {
        f"{name}/{m}": task.higher_is_better(m) for name, task in tasks.items() for m in task.metrics
    }
    missing = sorted(set(baseline) - set(directions))
    if missing:
        raise ConfigError(
            f"objective.baseline: its runs have metric(s) {', '.join(missing)} that this run does not declare; "
            "point objective.baseline at single-task runs of the same data set and tasks"
        )
    delta_m(baseline, baseline, directions)  # a zero or non-finite baseline value fails now, before training
    return Objective(
        name=f"validation Δm% against {cfg.objective.baseline}",
        direction=MINIMIZE,
        value=lambda summary: delta_m(validation_metrics(summary, tasks), baseline, directions),
    )


# objective.metric -> the function that builds it (the schema's ObjectiveMetric lists the same names)
OBJECTIVES: dict[str, Callable[[DictConfig, Mapping[str, Task]], Objective]] = {
    "monitor": monitor_objective,
    "delta_m": delta_m_objective,
}


def build_objective(cfg: DictConfig) -> Objective:
    """The objective ``cfg.objective`` asks for."""
    metric = cfg.objective.metric
    metric = getattr(metric, "value", metric)  # the schema's enum, or a plain string
    if metric not in OBJECTIVES:
        raise ConfigError(f"objective.metric: '{metric}' is not one of {', '.join(OBJECTIVES)}")
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    return OBJECTIVES[metric](cfg, tasks)


def load_baseline(path: str | None) -> dict[str, float]:
    """{"task/metric": mean validation value} over the completed single-task runs at ``path`` (a run folder,
    or a folder of runs such as a sweep), as the report forms its baseline."""
    from mtlrun.errors import DataError
    from mtlrun.report.baseline import baseline_from
    from mtlrun.report.collect import load_runs

    if not path:
        raise ConfigError(
            "objective.baseline: objective.metric=delta_m needs the single-task runs to compare with; set "
            "objective.baseline=<run or sweep folder> (e.g. of `mtlrun -m architecture=single_task seed=0,1,2`)"
        )
    try:
        runs = load_runs([Path(path)])
    except DataError as err:
        raise ConfigError(f"objective.baseline: {err}") from None
    found = baseline_from(runs, "val", source=str(path))
    if found is None:
        raise ConfigError(
            f"objective.baseline: {path} holds no completed single-task run (architecture=single_task); "
            "train one there first, or point objective.baseline at one"
        )
    if len(found.values) > 1:
        raise ConfigError(
            f"objective.baseline: {path} holds single-task runs on several data sets "
            f"({', '.join(map(str, found.values))}); point it at the runs of this run's data set"
        )
    return next(iter(found.values.values()))


def check_direction(objective: Objective, sweeper: Mapping[str, Any]) -> None:
    """Raise ConfigError when the sweeper's ``direction`` (Optuna's) would optimise ``objective`` the wrong
    way. Sweepers without one (the basic sweeper) and multi-objective lists are not checked."""
    direction = sweeper.get("direction")
    direction = getattr(direction, "name", direction)  # Optuna's Direction enum, or a plain string
    if not isinstance(direction, str) or direction.lower() == objective.direction:
        return
    raise ConfigError(
        f"hydra.sweeper.direction is {direction}, but the objective ({objective.name}) must be "
        f"{objective.direction}d; set hydra.sweeper.direction={objective.direction}"
    )
