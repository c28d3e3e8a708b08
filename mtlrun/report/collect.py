"""Find run folders under any mix of run and sweep paths, and load what a report needs from each.

A run folder is a folder that holds ``summary.json``; a sweep folder holds run folders (one per job, at any
depth). From each run the report reads ``summary.json`` (status, error, seed, tasks, the selected epoch's
val/test metrics), ``config.yaml`` (the resolved config), ``.hydra/hydra.yaml`` (the option chosen in each
config group) and ``metrics.csv`` (curves, task weights, time per step). Only ``summary.json`` is required:
a job that failed early may lack the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtlrun.errors import DataError

SUMMARY = "summary.json"
OPTUNA_RESULTS = "optimization_results.yaml"


@dataclass
class Run:
    """One run folder, loaded."""

    path: Path
    summary: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config.yaml ({} when missing)
    choices: dict[str, str] = field(default_factory=dict)  # group -> option, from .hydra/hydra.yaml
    metrics: pd.DataFrame | None = None  # metrics.csv (None when missing)
    overrides: list[str] = field(default_factory=list)  # the command-line overrides (.hydra/overrides.yaml)

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def error(self) -> str | None:
        return self.summary.get("error")

    @property
    def seed(self) -> int | None:
        seed = self.summary.get("seed", self.config.get("seed"))
        return None if seed is None else int(seed)

    @property
    def dataset(self) -> str | None:
        """The data set's name (summary.json), else the ``data`` option chosen, else None."""
        data = self.summary.get("data")
        if isinstance(data, Mapping) and data.get("name"):
            return str(data["name"])
        return self.choices.get("data")

    @property
    def is_single_task(self) -> bool:
        """Whether this run trained the single-task baseline (``architecture=single_task``)."""
        if "architecture" in self.choices:
            return self.choices["architecture"] == "single_task"
        target = str(self.config.get("architecture", {}).get("_target_", ""))
        return target.endswith(".SingleTask") or self.summary.get("architecture") == "SingleTask"

    def metric_values(self, split: str) -> dict[str, float]:
        """{"task/metric": value} of the selected epoch on ``split`` (val or test), declared metrics only."""
        values = self.summary.get(split) or {}
        return {
            f"{task}/{metric}": float(values.get(task, {}).get(metric, math.nan))
            for task, spec in self.tasks().items()
            for metric in spec.get("metrics", [])
        }

    def tasks(self) -> dict[str, dict[str, Any]]:
        """{task: {"kind": ..., "metrics": [...]}} from summary.json, else from the resolved config."""
        tasks = self.summary.get("tasks")
        if tasks:
            return dict(tasks)
        return {name: dict(spec) for name, spec in (self.config.get("tasks") or {}).items()}

    def directions(self) -> dict[str, bool]:
        """{"task/metric": higher_is_better} as summary.json records it; older runs get it from the task
        kinds (this imports torch and torchmetrics, only when needed)."""
        recorded = self.summary.get("higher_is_better")
        if recorded:
            return {key: bool(value) for key, value in recorded.items()}
        from mtlrun.tasks import Task

        out = {}
        for name, spec in self.tasks().items():
            task = Task(
                name=name,
                kind=spec["kind"],
                target=name,
                num_classes=spec.get("num_classes") or 2,
                metrics=list(spec.get("metrics", [])),
            )
            out |= {f"{name}/{metric}": task.higher_is_better(metric) for metric in task.metrics}
        return out

    def time_per_step(self) -> float:
        """Mean of the run's ``time_per_step_s`` rows in metrics.csv (summary.json's value when absent)."""
        if self.metrics is not None and not self.metrics.empty:
            rows = self.metrics[(self.metrics.metric == "time_per_step_s") & (self.metrics.task == "all")]
            if not rows.empty:
                return float(rows.value.mean())
        return float(self.summary.get("time_per_step_s", math.nan))

    @property
    def wall_time(self) -> float:
        return float(self.summary.get("wall_time_s", math.nan))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def load_run(path: Path) -> Run:
    """Load one run folder (it must hold summary.json)."""
    try:
        summary = json.loads((path / SUMMARY).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path / SUMMARY}: cannot be read ({err}); remove the folder from the inputs"
        ) from err
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml").get("hydra", {})
    choices = {
        group: str(option)
        for group, option in (hydra.get("runtime", {}).get("choices") or {}).items()
        if option is not None and not group.startswith("hydra/")
    }
    metrics = None
    if (path / "metrics.csv").is_file():
        try:
            metrics = pd.read_csv(path / "metrics.csv")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            metrics = None
    overrides_path = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
    return Run(
        path=path,
        summary=summary,
        config=_read_yaml(path / "config.yaml"),
        choices=choices,
        metrics=metrics,
        overrides=[str(o) for o in overrides or []],
    )


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder in or under ``paths`` (each a run folder or a folder of them), sorted, no duplicates.

    Raises DataError naming the path when one does not exist or holds no run.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; pass a run folder or a sweep folder")
        if path.is_file():
            if path.name != SUMMARY:
                raise DataError(f"{path}: not a run folder; pass the folder that holds summary.json")
            path = path.parent
        runs = [path] if (path / SUMMARY).is_file() else sorted(p.parent for p in path.rglob(SUMMARY))
        if not runs:
            raise DataError(f"{path}: holds no run (no summary.json under it); pass a run or sweep folder")
        found |= dict.fromkeys(p.resolve() for p in runs)
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> tuple:
    """Sort job folders 0, 1, 2, ..., 10 numerically, not as text."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(path) for path in find_run_dirs(paths)]


def find_optuna_results(paths: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(file, content) of each ``optimization_results.yaml`` (the Optuna sweeper's best trial) in or under
    ``paths``."""
    results = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            results += [(p, _read_yaml(p)) for p in sorted(path.rglob(OPTUNA_RESULTS))]
    return results
