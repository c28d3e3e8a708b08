"""Paths as the user typed them, and the files a data set reads from its ``data.root``.

Relative paths are resolved against the directory ``mtlrun`` was started from: Hydra's ``runtime.cwd`` when
a Hydra run is active (``hydra.job.chdir`` is false anyway), else the current directory. Nothing here
downloads: a missing file is a `DataError` that names the folder, the files expected and where to get
them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mtlrun.errors import DataError


def start_directory() -> Path:
    """Where ``mtlrun`` was started: Hydra's runtime.cwd during a Hydra run, else the current directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        cwd = HydraConfig.get().runtime.get("cwd")
        if cwd:
            return Path(cwd)
    return Path(os.getcwd())


def resolve_path(
    path: str | os.PathLike, key: str = "data.path", expected: str = "<your .csv or .parquet file>"
) -> Path:
    """An absolute path: ``~`` expanded, relative paths taken from `start_directory`. An empty ``path``
    is a DataError that asks for ``key``=``expected``."""
    if path is None or str(path) == "":
        raise DataError(f"{key}: nothing given; set {key}={expected}")
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else start_directory() / resolved


def expected_files(files: Mapping[str, str]) -> str:
    """The names of ``files`` ({key: file name}) as a message lists them: each plain or gzipped."""
    return ", ".join(f"{name}[.gz]" for name in files.values())


def find_files(root: Path, files: Mapping[str, str], hint: str) -> dict[str, Path]:
    """{key: path} of each of ``files`` ({key: file name}) in ``root``, the plain file preferred over its
    ``.gz``. A DataError names a ``root`` that is not a folder, or the files it lacks, followed by ``hint``
    (what the data set reads and where to get it)."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a directory; {hint}")
    found, missing = {}, []
    for key, name in files.items():
        present = [path for path in (root / name, root / f"{name}.gz") if path.is_file()]
        if present:
            found[key] = present[0]
        else:
            missing.append(f"{name}[.gz]")
    if missing:
        listed = " or ".join(missing) if len(missing) == 2 else ", ".join(missing)
        raise DataError(f"data.root: {root} has no {listed}; {hint}")
    return found
