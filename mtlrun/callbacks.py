"""Hydra callbacks. ``SweepStatus`` lists the failed jobs of a multirun and makes ``mtlrun`` exit non-zero."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("mtlrun")

FAILED_JOBS: list[str] = []


def job_statuses(sweep_dir: Path) -> dict[str, dict]:
    """{job folder: summary} for every job folder under ``sweep_dir`` that has a summary.json."""
    return {str(p.parent): json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


class SweepStatus(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = job_statuses(sweep_dir)
        failed = {job: s for job, s in statuses.items() if s.get("status") != "completed"}
        FAILED_JOBS.extend(failed)
        log.info("sweep %s: %d job(s), %d failed", sweep_dir, len(statuses), len(failed))
        for job, s in failed.items():
            log.error("failed job %s: %s", job, s.get("error"))
