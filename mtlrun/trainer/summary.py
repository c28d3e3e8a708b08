"""summary.json: the one record of a run (what it is, how far it got, how it ended), rewritten as it goes.

``status``: ``running`` while it trains (also what a run killed with SIGKILL leaves; ``mtlrun report`` and
``resume=`` call such a run ``killed``, since no process holds its lock), ``completed``, ``failed`` (with
``error``), or ``interrupted`` (stopped by the stop signal named in ``signal``; resumable).

Every writer of the file goes through this module: the runner (`RunRecord`), and, for a run that failed
or died before the runner wrote anything, the CLI and the parallel launcher (`record_failure`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlrun import rundir, signals
from mtlrun.rundir import SUMMARY
from mtlrun.trainer.outputs import write_json

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from mtlrun.loggers import Logger
    from mtlrun.trainer.setup import Setup
    from mtlrun.trainer.state import TrainState

log = logging.getLogger("mtlrun")


class RunRecord:
    """The run's summary.json, kept in memory and rewritten (atomically) on every change."""

    def __init__(self, folder: Path, fields: dict[str, Any]) -> None:
        self.folder = folder
        self.path = folder / SUMMARY
        self.fields = dict(fields)
        self.started = time.time()
        self.earlier_wall_time_s = float(self.fields.get("wall_time_s") or 0.0)  # of the run before a resume
        self.active = False  # set once the run writes into its folder (a resume may fail before it does)
        self.state: TrainState | None = None  # the training state, once there is one (for the ending)
        self.trackers: Logger | None = None  # told how the run ended, with the summary and the run's plots

    @classmethod
    def continuing(cls, folder: Path, source: Path | None) -> RunRecord:
        """The record of a run writing into ``folder``: a resumed run carries on the record of ``source``."""
        return cls(folder, (rundir.read_summary(source) or {}) if source else {})

    def write(self, **fields: Any) -> None:
        self.fields |= fields
        self.fields["wall_time_s"] = self.earlier_wall_time_s + time.time() - self.started
        write_json(self.path, self.fields)

    # ------------------------------------------------------------------------------------ the stages
    def begin(self, cfg: DictConfig, resumed_at: TrainState | None = None) -> None:
        """Status ``running``, and who runs it; ``resumed_at``: the run continues in its own folder from
        that state."""
        self.active = True
        if resumed_at is not None:
            self.add_resume(self.folder, resumed_at)
        self.write(
            status="running",
            error=None,
            signal=None,
            name=cfg.name,
            seed=cfg.seed,
            output_dir=str(self.folder),
            pid=os.getpid(),  # the process training this run (to signal it)
            resumes=list(self.fields.get("resumes") or []),
        )

    def add_resume(self, source: Path, state: TrainState) -> None:
        """Each resume: the folder it continued and from which epoch and step."""
        entry = {
            "from": str(source),
            "epoch": state.epoch,
            "step": state.step,
            "time": datetime.now().isoformat(timespec="seconds"),
        }
        self.fields["resumes"] = [*(self.fields.get("resumes") or []), entry]

    def progress(self, s: Setup, state: TrainState, **fields: Any) -> None:
        """How far training got, and the selected epoch's results."""
        self.write(
            epochs_completed=state.epoch,
            steps=state.step,
            best_epoch=state.best_epoch,
            monitor_value=state.best_value,
            val=state.best_val,
            test=state.best_test,
            train_time_s=state.train_time_s,
            time_per_step_s=state.train_time_s / max(state.step, 1),
            backward_passes_per_step=s.engine.passes_per_step(),
            weighting_state=s.weighting.summary(),
            **fields,
        )

    def complete(self, s: Setup, state: TrainState) -> None:
        self.progress(s, state, status="completed")
        self._tell_trackers("completed")

    def _tell_trackers(self, status: str) -> None:
        if self.trackers is not None:
            self.trackers.finish(status, self.fields, sorted(self.folder.glob("*.png")))

    def end(self, status: str, **fields: Any) -> None:
        """Record how the run ended, even when the disk refuses: then say so in one line (the caller reports
        the error that ended the run). A run that never became active leaves its folder's summary as it was."""
        if not self.active:
            return
        try:
            self.write(status=status, **fields)
        except OSError as err:
            log.error("could not record status '%s' in %s (%s)", status, self.path, err.strerror or err)
        self._tell_trackers(status)

    @contextlib.contextmanager
    def ending(self, checkpointed: bool) -> Iterator[None]:
        """Record how the run ends other than completed: interrupted by a stop signal (and log how to
        continue), or failed with the error; the exception goes on."""
        try:
            yield
        except (signals.Interrupted, KeyboardInterrupt) as err:
            stop = (
                err
                if isinstance(err, signals.Interrupted)
                else signals.Interrupted(signal.SIGINT, at_once=True)
            )
            self.end("interrupted", signal=signals.name(stop.signum), error=None)
            log.warning(self._interrupted_message(stop, checkpointed))
            raise stop from None
        except BaseException as err:
            self.end("failed", error=f"{type(err).__name__}: {err}")
            raise

    def _interrupted_message(self, stop: signals.Interrupted, checkpointed: bool) -> str:
        state = self.state
        where = (
            "before training started" if state is None else f"at epoch {state.epoch + 1}, step {state.step}"
        )
        if not checkpointed:
            saved = "trainer.checkpoint=false, so resume starts it over"
        elif stop.at_once:
            saved = "stopped at once: resume continues from the last checkpoint"
        else:
            saved = "checkpoint written"
        return (
            f"interrupted by {signals.name(stop.signum)} {where} ({saved}); "
            f"continue with: mtlrun resume={self.folder}"
        )


def record_failure(folder: Path, error: str, replace_running: bool = False) -> bool:
    """Make sure a run that failed before (or without) the runner recording it leaves summary.json saying
    so: the sweep report finds jobs by their summary. A summary the runner wrote is left alone, except one
    still saying ``running`` when ``replace_running`` (its process is known to be dead). Returns whether it
    wrote; a disk that refuses is logged in one line."""
    summary = rundir.read_summary(folder)
    running = summary is None or summary.get("status", "running") == "running"
    if (folder / SUMMARY).exists() and not (replace_running and running):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / SUMMARY, (summary or {"output_dir": str(folder)}) | {"status": "failed", "error": error}
        )
    except OSError as err:
        log.error("could not record status 'failed' in %s (%s)", folder / SUMMARY, err.strerror or err)
        return False
    return True
