"""``logger=mlflow``: one MLflow run per mtlrun run, through the MLflow client (no global active run, so
jobs that share a process or run in parallel processes never mix their records).

Where: ``tracking_uri`` (a team's server, ``http://...``, or a database); left ``null``, the environment's
``MLFLOW_TRACKING_URI`` if set, else a local SQLite store, ``outputs/mlflow.db`` under the directory mtlrun
was started from, with the artifacts beside it in ``outputs/mlartifacts/``: no server runs, and
``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` shows it. A relative path (``sqlite:///x.db``
or a plain ``x.db``) is taken from the directory mtlrun was started from.

Which experiment: a single run goes to ``experiment`` (``mtlrun``); every job of a sweep to one experiment
named after the sweep folder, ``<experiment>/<sweep folder>`` (``mtlrun/outputs/multiruns/2024-05-01/
12-00-00``), so the compare view holds exactly that sweep (``per_sweep: false`` puts the jobs in
``experiment`` too, tagged with their sweep).

What: the resolved config as params (``trainer.epochs``, ``weighting._target_``, ...), every command-line
override as a tag ``override.<key>``, the run folder, sweep and job as tags ``mtlrun.*``; every row of
metrics.csv as the metric ``<split>/<task>/<metric>`` at the optimisation step of the row (a pair ``a~b``
becomes ``a-b``: MLflow names allow letters, digits, ``_ - . /`` and spaces; other characters become ``_``);
at the end, the selected epoch's values as ``best/<split>/<task>/<metric>`` and ``best/epoch``, the run's
plots, summary.json and config.yaml as artifacts, and the status: completed FINISHED, failed FAILED,
interrupted KILLED.

Resume: the MLflow run id is kept in ``<run folder>/.mlflow_run_id``; a run resumed in its own folder
continues that MLflow run (status RUNNING again, the rows of the steps it trains again logged anew). A run
resumed into a new folder (or with this tracker added) starts a new MLflow run, which first gets the rows
its metrics.csv already holds, and the tag ``mtlrun.resumed_from_run_id``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
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

RUN_ID_FILE = ".mlflow_run_id"
DEFAULT_STORE = "outputs/mlflow.db"  # under the directory mtlrun was started from
ARTIFACTS_BESIDE_DB = "mlartifacts"  # a local database's artifacts: a folder beside it
STATUSES = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
INSTALL = "pip install 'mtlrun[mlflow]'"
BATCH = 100  # params or tags per log_batch call (MLflow's limit); metrics go 1000 at a time
INVALID = re.compile(r"[^A-Za-z0-9_\-./ ]")  # what MLflow refuses in a metric, param or tag name


class MLflowLogger(Logger):
    """Report the run to MLflow.

    Args:
        run_dir: The run folder.
        tracking_uri: Where the runs go: ``http(s)://`` a tracking server, ``sqlite:///path.db``, a plain
            ``path.db``; ``None``: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///outputs/mlflow.db`` under the
            directory mtlrun was started from.
        experiment: The experiment of single runs, and the prefix of each sweep's experiment.
        per_sweep: A sweep's jobs go to their own experiment, ``<experiment>/<sweep folder>``.
        artifacts: Upload the run's plots, summary.json and config.yaml at the end.
    """

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str | None = None,
        experiment: str = "mtlrun",
        per_sweep: bool = True,
        artifacts: bool = True,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(f"logger=mlflow needs the mlflow package: {INSTALL}") from None
        self.uri = resolve_tracking_uri(tracking_uri)
        if self.uri.startswith("sqlite:"):
            try:
                import alembic  # noqa: F401 (MLflow's database stores need both)
                import sqlalchemy  # noqa: F401
            except ImportError:
                raise ConfigError(
                    f"logger.mlflow.tracking_uri={self.uri} needs sqlalchemy and alembic: {INSTALL}"
                ) from None
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_dir = Path(run_dir)
        self.experiment = experiment
        self.per_sweep = per_sweep
        self.artifacts = artifacts
        self.run_id: str | None = None

    # ---------------------------------------------------------------------------------------- the contract
    def start(self, run: RunInfo) -> None:
        with store_lock(self.uri):  # parallel jobs: one creates the database and the experiment
            experiment_id = self._experiment_id(self.experiment_name(run))
            self.run_id = self._continued_run(run)
        tags = run_tags(run)
        params = {key: param_value(value) for key, value in flat_config(run.config).items()}
        new = self.run_id is None
        if new:
            created = self.client.create_run(experiment_id, tags=tags, run_name=run_name(run))
            self.run_id = created.info.run_id
            source = resumed_from(run)  # resumed into a new folder: a new MLflow run, linked to the old one
            tags = {} if source is None else {"mtlrun.resumed_from_run_id": source}
        else:  # the same MLflow run goes on: its params stay, a changed one (trainer.epochs) becomes a tag
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_run(self.run_id).data.params
            tags |= {f"param_on_resume.{k}": v for k, v in params.items() if k in logged and logged[k] != v}
            params = {k: v for k, v in params.items() if k not in logged}
        self._write_run_id(run.folder)
        self._log_batch(params=params, tags=tags)
        if run.resumed and new:  # resumed into a new folder, or with this tracker added: the kept rows first
            for call in earlier_rows(run.folder):
                self.log_rows(*call)

    def log_rows(self, epoch: int, step: int, split: str, rows: Rows) -> None:
        values = {
            metric_name(f"{split}/{task}/{metric}"): float(value)
            for task, metrics in rows.items()
            for metric, value in metrics.items()
        }
        self._log_metrics(values, step)

    def finish(self, status: str, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        assert self.run_id is not None, "finish before start"
        self._log_metrics(
            {metric_name(k): v for k, v in selected_values(summary).items()}, int(summary.get("steps") or 0)
        )
        tags = {"mtlrun.status": status}
        if summary.get("error"):
            tags["mtlrun.error"] = str(summary["error"])
        self._log_batch(tags=tags)
        if self.artifacts:
            extra = [self.run_dir / name for name in ("summary.json", "config.yaml")]
            for path in [*artifacts, *extra]:
                if Path(path).is_file():
                    self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, STATUSES.get(status, "FAILED"))

    # ---------------------------------------------------------------------------------------------- helpers
    def experiment_name(self, run: RunInfo) -> str:
        if run.sweep_dir is None or not self.per_sweep:
            return self.experiment
        return f"{self.experiment}/{sweep_label(run.sweep_dir)}"

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # else MLflow would put artifacts in ./mlruns of the cwd
            location = (Path(self.uri[len("sqlite:///") :]).parent / ARTIFACTS_BESIDE_DB).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first (a server without our lock)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _continued_run(self, run: RunInfo) -> str | None:
        """The MLflow run of a run resumed in its own folder, when this store still has it."""
        path = run.folder / RUN_ID_FILE
        if not run.resumed or not path.is_file():
            return None
        run_id = path.read_text().strip()
        try:
            self.client.get_run(run_id)
        except Exception:  # another store, or the run was deleted: start a new MLflow run
            return None
        return run_id

    def _write_run_id(self, folder: Path) -> None:
        from mtlrun.trainer.outputs import atomic_write_text

        atomic_write_text(folder / RUN_ID_FILE, f"{self.run_id}\n")

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def _log_batch(self, params: Mapping[str, str] = {}, tags: Mapping[str, str] = {}) -> None:  # noqa: B006
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

        entries = [Param(safe_name(k), truncate(v, MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]
        entries += [RunTag(safe_name(k), truncate(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for i in range(0, len(entries), BATCH):
            chunk = entries[i : i + BATCH]
            self.client.log_batch(
                self.run_id,
                params=[e for e in chunk if isinstance(e, Param)],
                tags=[e for e in chunk if isinstance(e, RunTag)],
            )


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri`` with a relative local path made absolute from the directory mtlrun was started from;
    ``None``: ``$MLFLOW_TRACKING_URI``, else the local SQLite store under outputs/."""
    from mtlrun.data.files import start_directory

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).expanduser()
        path = path if path.is_absolute() else start_directory() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri and not uri.startswith(("databricks", "file:")):  # a plain local path
        path = Path(uri).expanduser()
        path = path if path.is_absolute() else start_directory() / path
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        return path.as_uri()  # a folder: MLflow's file store (MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true)
    return uri


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold a lock beside a local SQLite database, so parallel jobs do not create its tables or an
    experiment twice at the same moment; nothing for other stores."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no lock; a clash there fails this tracker only, with a warning
        yield
        return
    with open(uri[len("sqlite:///") :] + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sweep_label(sweep_dir: Path) -> str:
    """The sweep folder as an experiment name shows it: relative to the start directory when under it."""
    from mtlrun.data.files import start_directory

    start = start_directory().resolve()
    folder = (sweep_dir if sweep_dir.is_absolute() else start / sweep_dir).resolve()
    with contextlib.suppress(ValueError):
        return folder.relative_to(start).as_posix()
    return folder.as_posix().lstrip("/")


def run_name(run: RunInfo) -> str:
    """``#<job>`` in a sweep, ``name=`` when set, and the overrides that tell the run apart (``seed=1
    weighting=mgda``; not ``logger=``); the run folder's name when none of these says anything."""
    overrides = [o for o in run.overrides if not o.lstrip("+~").startswith(("name=", "logger=", "logger."))]
    parts = ([run.name] if run.name and run.name != "default" else []) + overrides
    if run.job is not None:
        parts.insert(0, f"#{run.job}")
    return " ".join(parts) or run.folder.name


def run_tags(run: RunInfo) -> dict[str, str]:
    tags = {f"override.{key}": value for key, value in override_pairs(run.overrides).items()}
    tags |= {
        "mtlrun.folder": str(run.folder.resolve()),
        "mtlrun.name": run.name,
        "mtlrun.overrides": " ".join(run.overrides),
    }
    if run.sweep_dir is not None:
        tags |= {"mtlrun.sweep": str(run.sweep_dir.resolve()), "mtlrun.job": str(run.job)}
    return tags


def resumed_from(run: RunInfo) -> str | None:
    """The MLflow run id of the run this one resumed from (its folder's ``.mlflow_run_id``)."""
    source = run.resumed_from
    if source is None or not (source / RUN_ID_FILE).is_file():
        return None
    return (source / RUN_ID_FILE).read_text().strip() or None


def metric_name(name: str) -> str:
    """A metrics.csv name as MLflow accepts it: a task pair ``a~b`` becomes ``a-b``."""
    return safe_name(name.replace("~", "-"))


def safe_name(name: str) -> str:
    return INVALID.sub("_", name)


def param_value(value: Any) -> str:
    """A config value as text: strings as they are, everything else as JSON (``null``, ``true``, ``[64]``)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
