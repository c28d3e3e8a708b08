"""Files a run writes as it goes: metrics.csv (long format, appended), summary.json (rewritten)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ["epoch", "step", "split", "task", "metric", "value"]


class MetricsWriter:
    """Appends rows ``epoch, step, split, task, metric, value`` to metrics.csv and flushes every call, so
    a killed run still leaves a valid table."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(METRIC_COLUMNS)
            self._file.flush()

    def write(self, epoch: int, step: int, split: str, values: dict[str, dict[str, float]]) -> None:
        """``values``: {task: {metric: value}}."""
        for task, metrics in values.items():
            for metric, value in metrics.items():
                self._csv.writerow([epoch, step, split, task, metric, repr(float(value))])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
