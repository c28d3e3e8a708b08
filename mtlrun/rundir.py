"""Run folders: each is written by one process at a time, and claimed before anything is written into it.

* `claim_new`: a new run (or sweep) gets a folder that is new or empty. The folder is claimed by
  creating its lock file exclusively, so of several processes that start at once exactly one gets it. When
  the folder's name comes from the clock (the default ``outputs/runs/<date>/<time>``), a taken name is not an
  error: the run takes ``<time>_1``, ``<time>_2``, ... A name the user chose that holds files is refused.
* `lock`: the process that writes a run holds an advisory lock (``flock``) on ``<folder>/.mtlrun.lock``
  until it ends; the system releases it however the process ends, kill -9 included. So a run whose
  summary.json says ``"running"`` while nobody holds its lock was killed (`status` says ``"killed"``),
  and ``resume=`` refuses a folder that a live process still writes.

This module must not import torch: the CLI claims the folder before the run starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mtlrun.errors import ConfigError, DataError

LOCK_FILE = ".mtlrun.lock"
SUMMARY = "summary.json"
MAX_NUMBERED = 1000  # folders tried after a taken clock-named one: <name>_1 ... <name>_999

_held: dict[Path, int] = {}  # folder -> file descriptor of its lock, for the folders this process writes


def claim_new(folder: Path, numbered: bool, key: str = "hydra.run.dir") -> Path:
    """Create and lock ``folder`` for a new run; with ``numbered``, the first free of ``folder``,
    ``folder_1``, ... Returns the folder claimed. ``key`` names the setting in messages."""
    candidates = [folder]
    if numbered:
        candidates = itertools.chain(
            [folder], (folder.with_name(f"{folder.name}_{i}") for i in range(1, MAX_NUMBERED))
        )
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if any(candidate.iterdir()):
                raise FileExistsError
            fd = os.open(candidate / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if numbered:
                continue
            raise ConfigError(
                f"{key}={candidate} already holds files ({_listing(candidate)}); mtlrun never writes into a folder "
                f"that is not empty: choose a new folder, or leave {key} out for a fresh timestamped one"
            ) from None
        except OSError as err:
            raise unwritable(candidate, err, key) from None
        _hold(candidate, fd)
        return candidate
    raise ConfigError(f"{key}: {folder} and {MAX_NUMBERED - 1} numbered folders beside it are taken")


def lock(folder: Path) -> None:
    """Hold ``folder``'s lock for the rest of this process (or until `release`); a no-op when this
    process holds it already. A folder another live process holds is a ConfigError."""
    if folder.resolve() in _held:
        return
    try:
        fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as err:
        raise unwritable(folder, err, "the run folder") from None
    _hold(folder, fd)


def release(folder: Path) -> None:
    fd = _held.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)


def is_live(folder: Path) -> bool:
    """Whether a process (this one included) holds ``folder``'s lock."""
    if folder.resolve() in _held:
        return True
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False  # no lock file: never locked (or written by an mtlrun without locks)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def load_summary(folder: Path) -> dict:
    """The folder's summary.json; a DataError names the file and what is wrong with it (missing, binary,
    not valid JSON, not a JSON object)."""
    file = folder / SUMMARY
    try:
        summary = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{file}: not a text file (binary data)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{file}: not valid JSON ({err}; cut off or damaged)") from None
    except OSError as err:
        raise DataError(f"{file}: cannot be read ({err.strerror or err})") from None
    if not isinstance(summary, dict):
        raise DataError(f"{file}: holds a JSON {type(summary).__name__}, not the object mtlrun writes")
    return summary


def read_summary(folder: Path) -> dict | None:
    """The folder's summary.json, or None when it has none or it cannot be read (`load_summary` says
    why)."""
    try:
        return load_summary(folder)
    except DataError:
        return None


def selected_metrics(
    summary: Mapping[str, Any], split: str, declared: Mapping[str, Iterable[str]]
) -> dict[str, float]:
    """{"task/metric": value} of the selected epoch on ``split`` (val or test) as summary.json records it,
    for the ``declared`` metrics ({task: metric names}; losses are not metrics); NaN where one is missing."""
    values = summary.get(split) or {}
    return {
        f"{task}/{metric}": float(values.get(task, {}).get(metric, math.nan))
        for task, metrics in declared.items()
        for metric in metrics
    }


def status(folder: Path, summary: dict | None = None) -> str | None:
    """The run's status: summary.json's, except ``"killed"`` for a run that says ``"running"`` while no
    process holds its lock. None for a folder without a readable summary."""
    summary = read_summary(folder) if summary is None else summary
    if summary is None:
        return None
    value = summary.get("status")
    return "killed" if value == "running" and not is_live(folder) else value


def unwritable(folder: Path, err: OSError, key: str) -> ConfigError:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, or point it at another disk"
    else:
        fix = "choose a folder you can write to"
    return ConfigError(f"{key}: cannot write into {folder} ({reason}); {fix}")


def _hold(folder: Path, fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        summary = read_summary(folder) or {}
        raise ConfigError(
            f"{folder} is being written by another mtlrun process (pid {summary.get('pid', '?')}); "
            "two runs never share a folder: wait for it to end, or stop it first"
        ) from None
    _held[folder.resolve()] = fd


def _listing(folder: Path, shown: int = 3) -> str:
    with contextlib.suppress(OSError):
        names = sorted(p.name for p in folder.iterdir())
        return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return "unreadable"
