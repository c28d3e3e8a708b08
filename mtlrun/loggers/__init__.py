"""Experiment trackers a run reports to, chosen with the ``logger=`` config group (none by default):
``logger=tensorboard``, ``logger=mlflow``, or both, ``logger=[tensorboard,mlflow]``.

The runner never names a tracker. It builds whatever ``cfg.logger`` declares (:func:`build_loggers`) and
hands the result what it writes anyway: the metrics.csv rows of every epoch (through
:class:`~mtlrun.trainer.outputs.MetricsWriter`), and, through the run's record (summary.json), the start and
the end of the run with its summary and its plots. metrics.csv stays the record of a run: a tracker that
fails logs one warning and is left out for the rest of the run, and the run goes on.
"""

from mtlrun.loggers.base import Logger, Loggers, RunInfo, build_loggers

__all__ = ["Logger", "Loggers", "RunInfo", "build_loggers"]
