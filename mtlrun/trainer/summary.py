"""summary.json: what a run is, how far it got, and how it ended, rewritten as the run goes.

``status``: ``running`` while it trains (also what a run killed with SIGKILL leaves; ``mtlrun report`` and
``resume=`` call such a run ``killed``, since no process holds its lock), ``completed``, ``failed`` (with
``error``), or ``interrupted`` (stopped by the stop signal named in ``signal``; resumable).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mtlrun.trainer.outputs import write_json

log = logging.getLogger("mtlrun")

SUMMARY = "summary.json"


class RunRecord:
    def __init__(self, folder: Path, fields: dict[str, Any]) -> None:
        self.path = folder / SUMMARY
        self.fields = dict(fields)
        self.started = time.time()
        self.earlier_wall_time_s = float(self.fields.get("wall_time_s") or 0.0)  # of the run before a resume
        self.active = False  # set once the run writes into its folder (a resume may fail before it does)

    def write(self, **fields: Any) -> None:
        self.fields |= fields
        self.fields["wall_time_s"] = self.earlier_wall_time_s + time.time() - self.started
        write_json(self.path, self.fields)

    def end(self, status: str, **fields: Any) -> None:
        """Record how the run ended, even when the disk refuses: then say so in one line (the caller reports
        the error that ended the run). A run that never became active leaves its folder's summary as it was."""
        if not self.active:
            return
        try:
            self.write(status=status, **fields)
        except OSError as err:
            log.error("could not record status '%s' in %s (%s)", status, self.path, err.strerror or err)
