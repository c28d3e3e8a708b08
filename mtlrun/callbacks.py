"""Hydra callbacks.

``RunFolders``, before a run or a sweep writes anything: checks the run's config, plans a resume, and claims
the folder (mtlrun/rundir.py), so a rejected command leaves every folder as it was and two runs never share
one. ``SweepStatus``, at the end of a multirun: lists the failed jobs (``mtlrun`` then exits non-zero) and
writes the sweep's comparison report (summary.csv, summary.md, report.html, plots) into the sweep folder.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mtlrun import ranks, resume, rundir, schema
from mtlrun.errors import ConfigError, DataError, MtlrunError

log = logging.getLogger("mtlrun")

FAILED_JOBS: list[str] = []


def job_statuses(sweep_dir: Path) -> dict[str, dict]:
    """{job folder: summary} for every job folder under ``sweep_dir`` that has a summary.json (one that cannot
    be read counts as a failed job whose error says why)."""
    statuses = {}
    for path in sorted(sweep_dir.glob(f"*/{rundir.SUMMARY}")):
        try:
            statuses[str(path.parent)] = rundir.load_summary(path.parent)
        except DataError as err:
            statuses[str(path.parent)] = {"status": "unreadable", "error": str(err)}
    return statuses


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


class RunFolders(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run: its config (or the resumed run's) is checked, then its folder claimed: a new one for
        a new run, the run's own for a resume that continues in place. A data-parallel run (torchrun) is one
        run: rank 0 checks and claims, the other ranks wait for it and write into scratch folders."""
        rank, size = ranks.launched()
        if size == 1:
            self._claim(config)
            return
        from mtlrun.trainer import distributed  # torch: only under torchrun

        distributed.init_process_group()
        atexit.register(distributed.leave_process_group)
        if rank == 0:
            try:
                self._claim(config)
            except SystemExit:
                distributed.broadcast_from_main(None)  # the other ranks stop too; rank 0 said why
                raise
            distributed.broadcast_from_main(config.hydra.run.dir)
            return
        if distributed.broadcast_from_main(None) is None:
            raise SystemExit(1)
        logging.getLogger("mtlrun").setLevel(logging.ERROR)  # rank 0 tells the run's story, once
        scratch = tempfile.mkdtemp(prefix=f"mtlrun-rank{rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        _set(config, "hydra.output_subdir", None)
        _set(config, "hydra.run.dir", scratch)

    def _claim(self, config: DictConfig) -> None:
        with _refused():
            HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves while checking
            run_dir = Path(config.hydra.run.dir)
            chosen = not _clock_named(config.hydra.run)  # the user named the folder
            if config.resume:
                from mtlrun.cli import base_config

                plan = resume.plan(
                    config, base_config(config.hydra.job.config_name), run_dir if chosen else None
                )
                schema.validate(plan.cfg)
                if plan.in_place:
                    rundir.lock(plan.source)
                    _set(config, "hydra.output_subdir", None)  # keep the .hydra/ files of the run's start
                    _set(config, "hydra.run.dir", str(plan.source))
                    return
            else:
                schema.validate(config)
            _set(config, "hydra.run.dir", str(rundir.claim_new(run_dir, numbered=not chosen)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep: its folder is claimed (jobs then get fresh subfolders of it); each job's config is checked
        by the job."""
        with _refused():
            if ranks.launched()[1] > 1:
                raise ConfigError(
                    "torchrun trains one run data-parallel; start sweeps (-m) with mtlrun alone, and give "
                    "each job its devices through the launcher (see the docs on sweeps and multi-GPU runs)"
                )
            sweep_dir = Path(config.hydra.sweep.dir)
            claimed = rundir.claim_new(
                sweep_dir, numbered=_clock_named(config.hydra.sweep), key="hydra.sweep.dir"
            )
            if claimed != sweep_dir:  # the jobs compose their own config from the sweep's overrides
                _set(config, "hydra.sweep.dir", str(claimed))
                with read_write(config.hydra.overrides.hydra):
                    config.hydra.overrides.hydra.append(path_override("hydra.sweep.dir", claimed))


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A user's mistake found before the run starts: one paragraph on stderr, exit 1, nothing written. Any
    other error too (with its traceback): Hydra would turn an exception in a callback into a warning and go
    on, and the run must not start unchecked."""
    try:
        yield
    except MtlrunError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception:
        print(
            f"error: mtlrun could not check the run before starting it:\n{traceback.format_exc()}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def _clock_named(node: DictConfig) -> bool:
    """Whether ``node.dir`` is named from the clock (``${now:...}``), so mtlrun may pick the next free name."""
    return "${now:" in str(OmegaConf.to_container(node, resolve=False).get("dir", ""))


def _set(config: DictConfig, key: str, value: Any) -> None:
    """Change a key of Hydra's node (read-only while Hydra runs)."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key)
    with read_write(parent), open_dict(parent):
        parent[name] = value


def path_override(key: str, path: Path | str) -> str:
    """The command-line override ``key='<path>'``, quoted so that any character of the path survives Hydra's
    override grammar."""
    return f"{key}='" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


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
