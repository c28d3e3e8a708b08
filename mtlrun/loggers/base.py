"""The contract between the runner and an experiment tracker (a ``logger=`` option).

A tracker subclasses :class:`Logger` and implements what it keeps; each method is called in this order:

1. `start(run)`: once, when the run has been described (its resolved config, its folder, its name, the
   command-line overrides, the sweep folder it belongs to, whether it resumes an earlier run);
2. `log_rows(epoch, step, split, rows)`: every time rows go to metrics.csv, with the same values:
   ``rows`` is ``{task: {metric: value}}``, where ``task`` may also be a task pair ``a~b`` (gradient
   cosines), ``model`` (the model's penalty and diagnostics) or ``all`` (time per step, learning rates
   ``lr/<group>``);
3. `finish(status, summary, artifacts)`: once, at the end: ``completed``, ``failed`` or ``interrupted``, the
   run's summary.json as a dict, and the files worth keeping beside the metrics (the run's plots).

The class is built from its YAML (``conf/logger/<name>.yaml``) with the run folder as ``run_dir``. A tracker
whose package is missing raises a ConfigError with the pip command that installs it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("mtlrun")

Rows = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class RunInfo:
    """What a tracker is told about a run when it starts."""

    folder: Path  # the run folder
    name: str  # the run's label (``name=``)
    config: dict[str, Any]  # the resolved config, as plain containers
    overrides: list[str] = field(default_factory=list)  # the command line's (Hydra's task overrides)
    sweep_dir: Path | None = None  # the sweep folder, for a job of a multirun
    job: str | None = None  # the job's number within its sweep
    resumed_from: Path | None = None  # the folder of the run this one continues (itself, resumed in place)
    resumed_at_step: int | None = None  # the optimisation step it continues from

    @property
    def resumed(self) -> bool:
        """The run continues an earlier one (the tracker may continue its record)."""
        return self.resumed_from is not None

    @classmethod
    def of(
        cls, cfg: Any, folder: Path, resumed_from: Path | None = None, resumed_at_step: int | None = None
    ) -> RunInfo:
        """The run of ``cfg`` in ``folder``; the overrides and the sweep come from Hydra when it runs one."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        overrides, sweep_dir, job = [], None, None
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            overrides = list(hydra.overrides.task)
            if hydra.mode == RunMode.MULTIRUN:
                sweep_dir, job = Path(hydra.sweep.dir), str(hydra.job.num)
        config = (
            OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
            if OmegaConf.is_config(cfg)
            else dict(cfg)
        )
        return cls(
            folder, str(cfg.get("name")), config, overrides, sweep_dir, job, resumed_from, resumed_at_step
        )


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer.epochs": 2, "weighting._target_": "...", ...}``: the leaves of a nested config; a list
    is one leaf, and an empty mapping one leaf (``{}``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flat_config(value, path + ".")
        else:
            flat[path] = value
    return flat


def override_pairs(overrides: Sequence[str]) -> dict[str, str]:
    """``{"seed": "1", "weighting": "uncertainty"}`` from Hydra's overrides (``+key``, ``++key`` and
    ``~key`` lose their sign; a deletion ``~key`` without a value maps to ``""``)."""
    pairs = {}
    for override in overrides:
        key, _, value = override.partition("=")
        pairs[key.lstrip("+~")] = value
    return pairs


def selected_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """``{"best/val/left/accuracy": ..., "best/test/...": ..., "best/epoch": ...}``: summary.json's values
    at the selected epoch (what the end-of-run table shows)."""
    best: dict[str, float] = {}
    for split in ("val", "test"):
        for task, metrics in (summary.get(split) or {}).items():
            for metric, value in (metrics or {}).items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    best[f"best/{split}/{task}/{metric}"] = float(value)
    if isinstance(summary.get("best_epoch"), int):
        best["best/epoch"] = float(summary["best_epoch"])
    return best


def earlier_rows(folder: Path) -> list[tuple[int, int, str, dict[str, dict[str, float]]]]:
    """The rows a resumed run's metrics.csv already holds, as ``log_rows`` arguments ``(epoch, step, split,
    rows)`` in their order: what a tracker that starts its record at a resume has not seen."""
    from mtlrun.trainer.outputs import METRICS, metric_rows

    calls: dict[tuple[int, int, str], dict[str, dict[str, float]]] = {}
    path = folder / METRICS
    if not path.is_file():
        return []
    rows = metric_rows(path, last_epoch=sys.maxsize)
    next(rows)  # the header
    for epoch, step, split, task, metric, value in rows:
        calls.setdefault((int(epoch), int(step), split), {}).setdefault(task, {})[metric] = float(value)
    return [(*key, rows) for key, rows in calls.items()]


class Logger:
    """Base of the trackers: every method does nothing."""

    def start(self, run: RunInfo) -> None:
        """The run is described and about to train."""

    def log_rows(self, epoch: int, step: int, split: str, rows: Rows) -> None:
        """Rows that have just gone to metrics.csv."""

    def finish(self, status: str, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        """The run ended with ``status``; ``summary`` is its summary.json."""


class Loggers(Logger):
    """The trackers of one run, called in turn. One that raises is reported once and left out."""

    def __init__(self, loggers: Mapping[str, Logger]) -> None:
        self.loggers = dict(loggers)
        self.started = False  # finish() reaches only trackers that were started

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.loggers.items()):
            try:
                getattr(logger, method)(*args)
            except Exception as err:  # a tracker never stops a run: metrics.csv holds everything
                log.warning(
                    "warning: logger %s failed in %s (%s: %s); it is left out for the rest of the run, "
                    "metrics.csv has every value",
                    name,
                    method,
                    type(err).__name__,
                    err,
                )
                del self.loggers[name]

    def start(self, run: RunInfo) -> None:
        self.started = True
        self._each("start", run)

    def log_rows(self, epoch: int, step: int, split: str, rows: Rows) -> None:
        self._each("log_rows", epoch, step, split, rows)

    def finish(self, status: str, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        if self.started:
            self.started = False
            self._each("finish", status, summary, artifacts)


def build_loggers(nodes: Mapping[str, Any] | None, run_dir: Path) -> Loggers:
    """The trackers ``cfg.logger`` declares (``{name: node with _target_}``), built for ``run_dir``."""
    from mtlrun.instantiate import build

    return Loggers(
        {name: build(node, f"logger.{name}", run_dir=run_dir) for name, node in (nodes or {}).items()}
    )
