"""Files a run writes as it goes: metrics.csv (long format, appended), summary.json and checkpoints (replaced).

Replaced files go through a temporary file with a unique name in the same folder, are flushed to the disk
(fsync) and renamed over the old one: a crash or a kill at any moment leaves the previous version or the new
one, never half a file, and a failed write removes its temporary file. metrics.csv is appended and flushed
after every epoch; `MetricsWriter.sync` puts it on the disk before a checkpoint that counts on its rows.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtlrun.loggers import Logger

METRICS = "metrics.csv"
METRIC_COLUMNS = ["epoch", "step", "split", "task", "metric", "value"]
TEMP_SUFFIX = ".tmp"  # temporary files are hidden: .<name>.<pid>.<random>.tmp


class MetricsWriter:
    """Appends rows ``epoch, step, split, task, metric, value`` to metrics.csv and flushes every call, so
    a killed run still leaves a valid table; ``also`` (the run's experiment trackers) gets the same rows."""

    def __init__(self, path: Path, also: Logger | None = None) -> None:
        self.path = path
        self.also = also
        new = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        if new:
            self._csv.writerow(METRIC_COLUMNS)
            self._file.flush()

    def write(self, epoch: int, step: int, split: str, values: dict[str, dict[str, float]]) -> None:
        """``values``: {task: {metric: value}}."""
        for task, metrics in values.items():
            for metric, value in metrics.items():
                self._csv.writerow([epoch, step, split, task, metric, repr(float(value))])
        self._file.flush()
        if self.also is not None:
            self.also.log_rows(epoch, step, split, values)

    def sync(self) -> None:
        """Put the rows written so far on the disk (a checkpoint that counts on them follows)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def metric_rows(path: Path, last_epoch: int) -> Iterator[list[str]]:
    """The rows of a metrics.csv up to ``last_epoch`` (header first); a last line cut short by a kill (no
    line end), or any row that does not parse, is left out."""
    lines = path.read_text().split("\n")[:-1]  # the piece after the last line end is cut short or empty
    reader = csv.reader(lines)
    yield next(reader, METRIC_COLUMNS)
    for row in reader:
        if len(row) == len(METRIC_COLUMNS) and row[0].isdigit() and int(row[0]) <= last_epoch:
            yield row


def keep_metric_rows(source: Path, target: Path, last_epoch: int) -> None:
    """Write ``source``'s rows up to ``last_epoch`` to ``target`` (which may be ``source``): what a resumed
    run keeps from the rows its checkpoint covers."""
    rows = list(metric_rows(source, last_epoch)) if source.exists() else [METRIC_COLUMNS]
    atomic_write(target, lambda f: csv.writer(f, lineterminator="\n").writerows(rows), text=True)


def atomic_write(path: Path, write: Callable[[IO], Any], text: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync, and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # a unique name; the mode follows umask
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"newline": ""} if text else {})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = _os_error(err)
        if cause is None:
            raise
        # name the file (torch.save wraps a failed write in a RuntimeError that names neither)
        raise OSError(cause.errno, cause.strerror, str(path)) from err
    _fsync_folder(path.parent)


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError (disk full, file too large, read-only) behind ``err``, if any."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete the temporary files a killed process left in ``folder``; returns them."""
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), text=True)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
