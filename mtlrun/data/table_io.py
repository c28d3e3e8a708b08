"""Reading a user's table: CSV or Parquet by extension, only the columns asked for, paths as the user typed.

Relative paths are resolved against the directory ``mtlrun`` was started from: Hydra's ``runtime.cwd`` when
a Hydra run is active (``hydra.job.chdir`` is false anyway), else the current directory. CSV files are read
by pandas with the pyarrow engine (multi-threaded); a missing file, an unknown extension or a missing column
is a :class:`DataError` that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from mtlrun.data.preprocess import check_columns
from mtlrun.errors import DataError

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def start_directory() -> Path:
    """Where ``mtlrun`` was started: Hydra's runtime.cwd during a Hydra run, else the current directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return Path(cwd)
    return Path(os.getcwd())


def resolve_path(path: str | os.PathLike, key: str = "data.path") -> Path:
    """An absolute path: ``~`` expanded, relative paths taken from :func:`start_directory`."""
    if path is None or str(path) == "":
        raise DataError(f"{key}: no file given; set {key}=<your .csv or .parquet file>")
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else start_directory() / resolved


def file_format(path: Path) -> str:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown file type '{path.suffix}'; mtlrun reads {', '.join(READERS)} files "
            "(convert the file, or rename it if it is one of these)"
        )
    return kind


def file_columns(path: Path) -> list[str]:
    """The column names of a CSV (its header) or Parquet file (its schema), without reading the rows."""
    if file_format(path) == "csv":
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    optional: Sequence[str] = (),
    key: str = "data.path",
    roles: Mapping[str, str] | None = None,
) -> tuple[pd.DataFrame, str]:
    """(the frame, the resolved path as text). ``columns`` must exist (a DataError names the column, its
    ``roles`` entry (e.g. ``data.numeric``), the file's columns and the closest name); ``optional`` ones are
    read when present (e.g. targets of a file to predict on); ``columns=None`` reads everything. Rows keep
    their position in the file as the index."""
    resolved = resolve_path(path, key)
    if not resolved.is_file():
        raise DataError(
            f"{key}: no file {resolved}"
            + (
                f" (the path '{path}' is relative to {start_directory()})"
                if not Path(path).is_absolute()
                else ""
            )
            + "; fix the path (for the example table: python scripts/make_tabular_example.py)"
        )
    source = str(resolved)
    kind = file_format(resolved)
    wanted = None
    if columns is not None:
        header = pd.DataFrame(columns=file_columns(resolved))
        for column in columns:
            check_columns(header, [column], source, (roles or {}).get(column, ""))
        present = list(header.columns)
        wanted = list(dict.fromkeys([*columns, *(c for c in optional if c in present)]))
    try:
        if kind == "csv":
            frame = pd.read_csv(resolved, engine="pyarrow", usecols=wanted)
        else:
            frame = pd.read_parquet(resolved, columns=wanted)
    except (ValueError, OSError) as err:
        raise DataError(f"{source}: cannot read it as {kind} ({err}); check the file") from None
    return frame.reset_index(drop=True), source
