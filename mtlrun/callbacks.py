"""Hydra callbacks. ``SweepStatus``, at the end of a multirun: lists the failed jobs (``mtlrun`` then exits
non-zero) and writes the sweep's comparison report (summary.csv, summary.md, plots) into the sweep folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mtlrun")

FAILED_JOBS: list[str] = []


def job_statuses(sweep_dir: Path) -> dict[str, dict]:
    """{job folder: summary} for every job folder under ``sweep_dir`` that has a summary.json."""
    return {str(p.parent): json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


def write_sweep_report(sweep_dir: Path, plots: bool = True) -> None:
    """Write the comparison report into ``sweep_dir`` and log it; an error is logged, never raised."""
    try:
        from mtlrun.report.cli import make_report, write_report
        from mtlrun.report.markdown import comparison_table

        report = make_report([sweep_dir])
        _, written = write_report(report, sweep_dir, plots=plots)
        log.info("sweep summary (%s split):\n%s", report.split, comparison_table(report))
        log.info("sweep report: %s", ", ".join(str(p) for p in written))
    except Exception as err:  # the failed-job status above must survive any report problem
        log.error(
            "could not write the sweep report (%s: %s); retry with `mtlrun report %s`",
            type(err).__name__,
            err,
            sweep_dir,
            exc_info=True,
        )


class SweepStatus(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = job_statuses(sweep_dir)
        failed = {job: s for job, s in statuses.items() if s.get("status") != "completed"}
        FAILED_JOBS.extend(failed)
        log.info("sweep %s: %d job(s), %d failed", sweep_dir, len(statuses), len(failed))
        for job, s in failed.items():
            log.error("failed job %s: %s", job, s.get("error"))
        if statuses:
            # trainer.plots as set for the whole sweep (debug=smoke turns it off): the report's PNGs too
            write_sweep_report(sweep_dir, plots=bool(OmegaConf.select(config, "trainer.plots", default=True)))
