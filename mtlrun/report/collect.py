"""Find run folders under any mix of run and sweep paths, and load what a report needs from each.

A run folder is a folder that holds ``summary.json``; a sweep folder holds run folders (one per job, at any
depth). From each run the report reads ``summary.json`` (status, error, seed, tasks, the selected epoch's
val/test metrics), ``config.yaml`` (the resolved config), ``.hydra/hydra.yaml`` (the option chosen in each
config group) and ``metrics.csv`` (curves, task weights, time per step). Only ``summary.json`` is required:
a job that failed early may lack the rest.

A run folder whose files cannot be read (binary or garbled metrics.csv, summary.json that is not a JSON
object, broken YAML) is not an error for the report: `read_runs` returns it as an
`UnreadableRun` that names the file and the problem, and the report lists it. A metrics.csv whose
last line was cut off (a run killed while writing it) is read without that line. ``summary.json``'s
``status`` is ``running``, ``completed``, ``failed`` or ``interrupted`` (stopped by a signal, named by its
``signal`` key); a run that says ``running`` while no process holds its lock was killed, and is listed so.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mtlrun import rundir
from mtlrun.errors import DataError
from mtlrun.rundir import SUMMARY
from mtlrun.trainer.outputs import METRIC_COLUMNS, METRICS  # the file and header mtlrun writes

OPTUNA_RESULTS = "optimization_results.yaml"
# the summary.json keys the report reads, and the JSON types mtlrun writes them as (when not null)
SUMMARY_TYPES = {
    "status": str,
    "seed": int,
    "data": dict,
    "tasks": dict,
    "higher_is_better": dict,
    "val": dict,
    "test": dict,
    "wall_time_s": (int, float),
    "time_per_step_s": (int, float),
}
YAML_KINDS = {dict: "mapping", list: "list"}
LEFT_OUT = "the run is left out of the report; restore or delete the file, or remove the run's folder"


class UnreadableRunsError(DataError):
    """No run under the inputs could be read; ``unreadable`` says why for each."""

    def __init__(self, message: str, unreadable: Sequence[UnreadableRun]) -> None:
        super().__init__(message)
        self.unreadable = list(unreadable)


@dataclass(frozen=True)
class UnreadableRun:
    """A run folder the report could not read: which file, and what is wrong with it."""

    path: Path
    problem: str  # "<file>: <what is wrong>"

    def warning(self) -> str:
        return f"warning: {self.problem}; {LEFT_OUT}"


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
        """summary.json's status; ``killed`` for a run that says ``running`` while no process writes it."""
        return str(rundir.status(self.path, self.summary) or "unknown")

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def error(self) -> str | None:
        """The error the run recorded; for a run stopped by a signal, the signal too (``stopped by
        SIGTERM``)."""
        error = self.summary.get("error")
        signal = self.summary.get("signal")
        if not signal or str(signal) in str(error or ""):
            return None if error is None else str(error)
        return f"stopped by {signal}" + (f" ({error})" if error else "")

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
        """Whether this run trained the single-task baseline: its architecture declared that the tasks do
        not interact (summary.json's ``independent_tasks``, e.g. ``architecture=single_task``)."""
        return self.summary.get("independent_tasks") is True

    @property
    def has_fixed_weights(self) -> bool:
        """Whether its weighting declared fixed weights (summary.json's ``weighting.adaptive`` is false, as
        for ``weighting=equal`` and ``weighting=static``)."""
        weighting = self.summary.get("weighting")
        return isinstance(weighting, Mapping) and weighting.get("adaptive") is False

    def metric_values(self, split: str) -> dict[str, float]:
        """{"task/metric": value} of the selected epoch on ``split`` (val or test), declared metrics only."""
        declared = {task: spec.get("metrics", []) for task, spec in self.tasks().items()}
        return rundir.selected_metrics(self.summary, split, declared)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """{task: {"kind": ..., "metrics": [...]}} from summary.json, else from the resolved config."""
        tasks = self.summary.get("tasks")
        if tasks:
            return dict(tasks)
        return {name: dict(spec) for name, spec in (self.config.get("tasks") or {}).items()}

    def auxiliary_tasks(self) -> set[str]:
        """The tasks the run trained as auxiliary (summary.json's ``"auxiliary": true``, mtlrun/auxiliary.py)."""
        return {
            name for name, spec in self.tasks().items() if isinstance(spec, Mapping) and spec.get("auxiliary")
        }

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


def _read_yaml(path: Path, kind: type = dict) -> Any:
    """The YAML file's content ({} or [] when the file is missing); a DataError when it is not ``kind``."""
    if not path.is_file():
        return kind()
    try:
        content = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid YAML ({_first_line(err)})") from None
    if content is None:
        return kind()
    if not isinstance(content, kind):
        raise DataError(f"{path}: holds a {type(content).__name__}, not a YAML {YAML_KINDS[kind]}")
    return content


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_summary(path: Path) -> dict[str, Any]:
    """summary.json as a dict; a DataError names the file and what is wrong with it (also a key the report
    reads that holds another JSON type than mtlrun writes)."""
    summary = rundir.load_summary(path)
    for key, kinds in SUMMARY_TYPES.items():
        if summary.get(key) is not None and not isinstance(summary[key], kinds):
            raise DataError(
                f"{path / SUMMARY}: '{key}' holds a {type(summary[key]).__name__}, not what mtlrun writes"
            )
    return summary


def read_metrics(path: Path) -> pd.DataFrame | None:
    """metrics.csv (None when there is none, or no line yet). A last line cut off mid-row (a run killed while
    writing it: no line break at the end) is dropped; a DataError names a file that is not an mtlrun
    metrics table."""
    file = path / METRICS
    if not file.is_file():
        return None
    data = file.read_bytes()
    if b"\0" in data:
        raise DataError(f"{file}: not a CSV text file (binary data)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text (bad byte at position {err.start})") from None
    if text and not text.endswith(("\n", "\r")):
        text = text[: max(text.rfind("\n"), 0)]  # the incomplete last row
    if not text.strip():
        return None
    try:
        metrics = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"{file}: not a valid CSV table ({_first_line(err)})") from None
    missing = [column for column in METRIC_COLUMNS if column not in metrics.columns]
    if missing:
        raise DataError(
            f"{file}: not an mtlrun metrics table (no column {', '.join(missing)}; it needs "
            f"{', '.join(METRIC_COLUMNS)})"
        )
    if not pd.api.types.is_numeric_dtype(metrics.value) and len(metrics):
        values = pd.to_numeric(metrics.value, errors="coerce")
        bad = values.isna() & metrics.value.notna()
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2
            raise DataError(
                f"{file}: line {line} holds the value {metrics.value[bad].iloc[0]!r}, not a number"
            )
        metrics = metrics.assign(value=values)
    return metrics


def load_run(path: Path) -> Run:
    """Load one run folder (it must hold summary.json); a DataError names a file that cannot be read."""
    summary = read_summary(path)
    hydra = _read_yaml(path / ".hydra" / "hydra.yaml").get("hydra") or {}
    choices = {
        group: str(option)
        for group, option in ((hydra.get("runtime") or {}).get("choices") or {}).items()
        if option is not None and not group.startswith("hydra/")
    }
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml", list)
    return Run(
        path=path,
        summary=summary,
        config=_read_yaml(path / "config.yaml"),
        choices=choices,
        metrics=read_metrics(path),
        overrides=[str(o) for o in overrides],
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


def read_runs(paths: Iterable[str | Path]) -> tuple[list[Run], list[UnreadableRun]]:
    """(the runs in or under ``paths``, the run folders among them that could not be read)."""
    runs: list[Run] = []
    unreadable: list[UnreadableRun] = []
    for path in find_run_dirs(paths):
        try:
            runs.append(load_run(path))
        except DataError as err:
            unreadable.append(UnreadableRun(path, str(err)))
    return runs, unreadable


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in or under ``paths``; a DataError names the first one that cannot be read."""
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
