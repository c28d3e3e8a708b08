"""Reading a user's table: CSV or Parquet by extension, only the columns asked for, paths as the user typed.

Relative paths are resolved against the directory ``mtlrun`` was started from: Hydra's ``runtime.cwd`` when
a Hydra run is active (``hydra.job.chdir`` is false anyway), else the current directory. CSV files are read
by pandas with the pyarrow engine (multi-threaded); a missing file, an unknown extension, a missing column,
an empty file, a table without rows, a column name that appears twice in the header (pandas would rename
one copy ``x.1`` and read the other) and a binary file named ``.csv`` are each a `DataError` that
names the file and says what to do.
"""

from __future__ import annotations

import codecs
import csv
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from mtlrun.data.files import resolve_path, start_directory
from mtlrun.data.preprocess import check_columns
from mtlrun.errors import DataError

READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SAMPLE_BYTES = 1 << 16  # the start of a CSV file checked for binary content
# how common binary files start, and what they are (for the message about a binary file named .csv)
SIGNATURES = {
    b"PAR1": "a Parquet file (name it .parquet)",
    b"\x89PNG": "a PNG image",
    b"PK\x03\x04": "a zip archive (e.g. a torch .pt checkpoint or an Excel workbook)",
    b"\x1f\x8b": "gzip-compressed data (decompress it first)",
    b"%PDF": "a PDF document",
    b"\x80": "a Python pickle (e.g. an old torch .pt file)",
}


def file_format(path: Path) -> str:
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(
            f"{path}: unknown file type '{path.suffix}'; mtlrun reads {', '.join(READERS)} files "
            "(convert the file, or rename it if it is one of these)"
        )
    return kind


def file_columns(path: Path, key: str = "data.path") -> list[str]:
    """The column names of a CSV (its header) or Parquet file (its schema), without reading the rows. A
    DataError names an empty or binary file and a column name the header holds twice."""
    if path.stat().st_size == 0:
        raise DataError(
            f"{path}: the file is empty (0 bytes); write the table again, or point {key} at another file"
        )
    if file_format(path) == "csv":
        check_csv_text(path, key)
        check_unique(path, csv_header(path, key))
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    import pyarrow.parquet as pq

    try:
        names = list(pq.read_schema(path).names)
    except (ValueError, OSError) as err:
        raise DataError(
            f"{path}: cannot read it as Parquet ({err}); point {key} at a Parquet table (a CSV file needs "
            "the .csv extension)"
        ) from None
    check_unique(path, names)
    return names


def check_csv_text(path: Path, key: str) -> None:
    """A DataError when the start of ``path`` is not UTF-8 text (an image, a checkpoint, Parquet...)."""
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    what = next((name for start, name in SIGNATURES.items() if sample.startswith(start)), None)
    if what is None and b"\0" in sample:
        what = "binary data"
    if what is None:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
        except UnicodeDecodeError as err:
            what = f"bytes that are not UTF-8 text (at byte {err.start})"
    if what is not None:
        raise DataError(
            f"{path}: not a CSV text file, it holds {what}; point {key} at the table saved as CSV (UTF-8 "
            "text) or Parquet"
        )


def csv_header(path: Path, key: str) -> list[str]:
    """The names in the first line of a CSV file, as written (pandas renames a repeated name ``x.1``)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = next((row for row in csv.reader(handle) if any(name.strip() for name in row)), None)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read its header line ({err}); save the table as UTF-8 CSV") from None
    if header is None:
        raise DataError(
            f"{path}: the file holds only blank lines, no header and no rows; write the table again, or "
            f"point {key} at another file"
        )
    return header


def check_unique(path: Path, names: Sequence[str]) -> None:
    """A DataError naming a column name the header holds more than once (unnamed columns aside)."""
    counts = Counter(name for name in names if str(name).strip())
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        name = repeated[0]
        positions = [str(i + 1) for i, other in enumerate(names) if other == name]
        others = f" (also {', '.join(map(repr, repeated[1:]))})" if len(repeated) > 1 else ""
        raise DataError(
            f"{path}: column '{name}' appears {len(positions)} times in the header (columns "
            f"{', '.join(positions)}){others}, so one of them would be read silently; rename or remove the "
            "duplicate columns"
        )


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
    names = file_columns(resolved, key)
    if columns is not None:
        header = pd.DataFrame(columns=names)
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
    if len(frame) == 0:
        raise DataError(
            f"{source}: the table has {'a header' if kind == 'csv' else 'columns'} but no rows; add the "
            f"rows, or point {key} at the full table"
        )
    return frame.reset_index(drop=True), source
