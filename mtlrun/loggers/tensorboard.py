"""``logger=tensorboard``: TensorBoard event files in the run folder itself.

Each run folder is one TensorBoard run, so ``tensorboard --logdir <sweep folder>`` shows the jobs of a sweep
side by side under their job numbers (``0``, ``1``, ...), and ``--logdir outputs/runs`` every single run under
its date and time. What is written:

- every row of metrics.csv as the scalar ``<split>/<task>/<metric>`` (``val/left/accuracy``,
  ``train/left/weight``, ``train/left~right/grad_cosine``, ``train/all/lr/shared``), at the optimisation
  step of the row (metrics.csv's ``step`` column: the steps taken when the row was written);
- the resolved config (text ``config``) and the run's description (text ``run``) when it starts;
- at the end, the selected epoch's values from summary.json as ``best/<split>/<task>/<metric>`` and
  ``best/epoch``, at the run's last step, with the hyperparameters (``name``, ``seed`` and every
  command-line override) in the HPARAMS tab and the run's status as text ``status``.

A resumed run appends a new event file; TensorBoard discards the older files' events past the step the
run resumed from (``purge_step``), so the curves show each step once. A resumed run whose folder has no
event files yet (resumed into a new folder, or with this tracker added) first logs the rows its metrics.csv
already holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtlrun.errors import ConfigError
from mtlrun.loggers.base import (
    Logger,
    Rows,
    RunInfo,
    earlier_rows,
    flat_config,
    override_pairs,
    selected_values,
)

HPARAM_TYPES = (bool, int, float, str)


class TensorBoardLogger(Logger):
    """Write TensorBoard event files into the run folder (or its ``subdir``).

    Args:
        run_dir: The run folder.
        subdir: A subfolder of the run folder for the event files; ``null`` writes them into the run folder
            itself (TensorBoard then names each run after its folder).
        flush_secs: How often, in seconds, the writer's background thread puts queued events on the disk;
            the end of the run always flushes.
        hparams: Also write the HPARAMS tab's record at the end (name, seed, overrides, selected values).
    """

    def __init__(
        self, run_dir: Path, subdir: str | None = None, flush_secs: int = 30, hparams: bool = True
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package: pip install 'mtlrun[tensorboard]'"
            ) from None
        self._writer_class = SummaryWriter
        self.log_dir = Path(run_dir) / subdir if subdir else Path(run_dir)
        self.flush_secs = flush_secs
        self.hparams = hparams
        self.writer: Any = None
        self.run: RunInfo | None = None

    def start(self, run: RunInfo) -> None:
        from omegaconf import OmegaConf

        self.run = run
        purge = run.resumed_at_step
        backfill = run.resumed and not any(self.log_dir.glob("events.out.tfevents.*"))
        self.writer = self._writer_class(
            log_dir=str(self.log_dir),
            flush_secs=self.flush_secs,
            purge_step=None if purge is None else purge + 1,
        )
        text = OmegaConf.to_yaml(OmegaConf.create(run.config))
        self.writer.add_text("config", preformatted(text), global_step=purge or 0)
        about = [f"folder: {run.folder}", f"name: {run.name}", f"overrides: {' '.join(run.overrides)}"]
        if run.sweep_dir is not None:
            about += [f"sweep: {run.sweep_dir}", f"job: {run.job}"]
        if run.resumed:
            about.append(f"resumed at step {purge or 0}")
        self.writer.add_text("run", preformatted("\n".join(about)), global_step=purge or 0)
        if backfill:  # resumed into a new folder, or with this tracker added: the rows it kept come first
            for call in earlier_rows(run.folder):
                self.log_rows(*call)

    def log_rows(self, epoch: int, step: int, split: str, rows: Rows) -> None:
        for task, metrics in rows.items():
            for metric, value in metrics.items():
                self.writer.add_scalar(f"{split}/{task}/{metric}", float(value), global_step=step)

    def finish(self, status: str, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        step = int(summary.get("steps") or 0)
        best = selected_values(summary)
        for tag, value in best.items():
            self.writer.add_scalar(tag, value, global_step=step)
        error = summary.get("error")
        self.writer.add_text("status", status + (f": {error}" if error else ""), global_step=step)
        if self.hparams and self.run is not None:
            self._write_hparams(best)
        self.writer.flush()
        self.writer.close()

    def _write_hparams(self, metrics: Mapping[str, float]) -> None:
        """The HPARAMS tab's record, written into this run's own event file (SummaryWriter.add_hparams
        would open a run of its own)."""
        from torch.utils.tensorboard.summary import hparams

        assert self.run is not None
        values = hparam_values(self.run)
        experiment, start, end = hparams(values, dict(metrics))
        for record in (experiment, start, end):
            self.writer.file_writer.add_summary(record)


def preformatted(text: str) -> str:
    """Text that TensorBoard's markdown shows as it is (a code block: every line indented)."""
    return "\n".join("    " + line for line in text.splitlines())


def hparam_values(run: RunInfo) -> dict[str, bool | int | float | str]:
    """The run's name, seed and overrides, each with its resolved value where the config has the key (so a
    number stays a number), else the override's text (a group's option: ``weighting=uncertainty``)."""
    flat = flat_config(run.config)
    values: dict[str, Any] = {"name": run.name, "seed": flat.get("seed", 0)}
    for key, text in override_pairs(run.overrides).items():
        values[key] = flat.get(key, text)
    return {k: v if isinstance(v, HPARAM_TYPES) else str(v) for k, v in values.items()}
