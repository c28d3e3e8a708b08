"""``data=tabular``: the user's own table (CSV or Parquet), with feature columns and tasks declared in config.

The tasks (the top-level ``tasks`` node) name their target columns; the data config names the feature
columns (``numeric``, ``categorical``), an optional sample-weight column, and how rows split into
train/val/test:

* ``split_column``: a column whose values are ``train``, ``val`` or ``test``;
* ``val_path`` and ``test_path``: separate files (``path`` is then the training file);
* otherwise a random split of ``path`` by ``fractions``, drawn from ``seed``.

The preprocessing (`TablePreprocessor`) is fitted on the training split only
and written to ``preprocessing.json`` in the run folder. Rows with a missing target still train the other
tasks: each split carries a mask per target with missing values (see `mtlrun.data.base`).

Reuse for a table of fixed layout (a loader that knows its columns, e.g. a headerless CSV): subclass, read
the frames yourself and call ``self.init_from_frames(frames, TablePreprocessor.for_tasks(tasks, numeric,
categorical), sources)`` from ``__init__``; or build one from frames in memory with
`TabularData.from_frames`. A new file becomes model input with `transform_file` (with the
rest of what ``mtlrun predict`` needs: `TabularData.new_input`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlrun import auxiliary, examples
from mtlrun.data.base import SPLITS, NewInput, Split, TensorData
from mtlrun.data.preprocess import TablePreprocessor, check_columns, first_bad
from mtlrun.data.table_io import read_table
from mtlrun.errors import ConfigError, DataError

EXAMPLE = examples.path("feed/feed.csv")  # shipped in the package, written by scripts/make_tabular_example.py
PREPROCESSING_FILE = "preprocessing.json"


def split_by_column(frame: pd.DataFrame, column: str, source: str) -> dict[str, pd.DataFrame]:
    """Rows by the value of ``column`` (train / val / test); any other value is a DataError."""
    check_columns(frame, [column], source, "data.split_column")
    values = frame[column]
    outside = ~values.isin(SPLITS).to_numpy()
    if bad := first_bad(outside, values, source):
        found = sorted({str(v) for v in values[outside].unique()[:5]})
        raise DataError(
            f"{source}: split column '{column}' holds {bad.value} at {bad.where} ({bad.count} rows with values "
            f"{found}); every row needs one of {', '.join(SPLITS)}: fix the values or drop those rows"
        )
    return {split: frame[(values == split).to_numpy()] for split in SPLITS}


def split_at_random(frame: pd.DataFrame, fractions: Sequence[float], seed: int) -> dict[str, pd.DataFrame]:
    """A seeded random split by ``fractions`` (train, val, test); each split keeps the file's row order."""
    order = np.random.default_rng(seed).permutation(len(frame))
    cuts = np.cumsum([int(round(f * len(frame))) for f in fractions[:2]])
    return {
        split: frame.iloc[np.sort(rows)] for split, rows in zip(SPLITS, np.split(order, cuts), strict=True)
    }


def transform_file(
    preprocessor: TablePreprocessor, path: str, keep: Sequence[str] = (), key: str = "data.path"
) -> tuple[torch.Tensor, pd.DataFrame]:
    """A new file as the model's input: (features [N, F] float32 tensor, the frame read). Only the feature
    columns must exist (targets may be absent); ``keep`` columns (e.g. an id) are read along when present,
    as are the target columns, so callers can compare."""
    optional = [*keep, *preprocessor.target_columns]
    frame, source = read_table(path, preprocessor.feature_columns, optional=optional, key=key)
    return torch.from_numpy(preprocessor.features(frame, source)), frame


class TabularData(TensorData):
    """A table's train/val/test splits as tensors; see the module docstring for the options."""

    name = "tabular"

    def __init__(
        self,
        tasks: Mapping[str, Any] | None = None,
        path: str = EXAMPLE,
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
        weight: str | None = None,
        split_column: str | None = None,
        fractions: list[float] | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        seed: int = 0,
        min_category_count: int = 1,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
    ) -> None:
        if not tasks:
            raise ConfigError("data=tabular: no tasks; declare them under `tasks:` (mtlrun passes them in)")
        numeric, categorical = auxiliary.feature_lists(tasks, numeric or [], categorical or [])
        preprocessor = TablePreprocessor.for_tasks(
            tasks, numeric or [], categorical or [], weight, min_category_count
        )
        roles = {c: "data.numeric" for c in preprocessor.numeric}
        roles |= {c: "data.categorical" for c in preprocessor.categorical}
        roles |= {c: f"target of task '{spec.task}'" for spec in preprocessor.targets for c in spec.columns}
        roles |= {c: f"data.{key}" for key, c in (("weight", weight), ("split_column", split_column)) if c}
        columns = list(roles)
        if (val_path is None) != (test_path is None):
            raise ConfigError("data.val_path / data.test_path: give both separate files, or neither")
        if val_path is not None:
            if split_column:
                raise ConfigError("data.split_column: not used with separate val/test files; set it to null")
            read = {
                s: read_table(p, columns, key=f"data.{k}", roles=roles)
                for s, p, k in self._paths(path, val_path, test_path)
            }
            frames = {split: frame for split, (frame, _) in read.items()}
            sources = {split: source for split, (_, source) in read.items()}
        else:
            frame, source = read_table(path, columns, roles=roles)
            sources = dict.fromkeys(SPLITS, source)
            if split_column:
                frames = split_by_column(frame, split_column, source)
            else:
                frames = split_at_random(frame, self._fractions(fractions), seed)
        limits = {"train": n_train, "val": n_val, "test": n_test}
        frames = {s: f if limits[s] is None else f.iloc[: limits[s]] for s, f in frames.items()}
        self.init_from_frames(frames, preprocessor, sources)

    @staticmethod
    def _paths(path: str, val_path: str, test_path: str) -> list[tuple[str, str, str]]:
        return [("train", path, "path"), ("val", val_path, "val_path"), ("test", test_path, "test_path")]

    @staticmethod
    def _fractions(fractions: list[float] | None) -> list[float]:
        fractions = list(fractions or [0.8, 0.1, 0.1])
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(
                f"data.fractions: need three positive fractions (train, val, test) summing to 1; got {fractions}"
            )
        return fractions

    # ------------------------------------------------------------------------------- the reusable core
    def init_from_frames(
        self,
        frames: Mapping[str, pd.DataFrame],
        preprocessor: TablePreprocessor,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        """Fit ``preprocessor`` on ``frames["train"]``, transform every split into tensors and initialise the
        data set. ``sources`` names each split's file for messages (default: the split's name)."""
        sources = dict(sources or {split: f"{split} split" for split in SPLITS})
        for split in SPLITS:
            if split not in frames or len(frames[split]) == 0:
                raise DataError(
                    f"{sources.get(split, split)}: the {split} split is empty; give it rows (data.fractions, "
                    "the split column's values, or the split's file)"
                )
        self.preprocessor = preprocessor.fit(frames["train"], sources["train"])
        splits = {}
        for split in SPLITS:
            frame, source = frames[split], sources[split]
            x = preprocessor.features(frame, source)
            labels, masks = preprocessor.transform_targets(frame, source)
            for spec in preprocessor.targets:
                if spec.name in masks and not masks[spec.name].any():
                    raise DataError(
                        f"{spec.where(source)}: no labelled rows in the {split} split; label some of its rows "
                        "(or change the split)"
                    )
            weight = preprocessor.weights(frame, source)
            splits[split] = Split(
                x=torch.from_numpy(x),
                y={name: torch.from_numpy(values) for name, values in labels.items()},
                mask={name: torch.from_numpy(mask) for name, mask in masks.items()},
                weight=None if weight is None else torch.from_numpy(weight),
            )
        super().__init__(splits)

    @classmethod
    def from_frames(
        cls,
        frames: Mapping[str, pd.DataFrame],
        tasks: Mapping[str, Any],
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        weight: str | None = None,
        min_category_count: int = 1,
        sources: Mapping[str, str] | None = None,
    ) -> TabularData:
        """A data set from train/val/test frames already in memory (e.g. a loader that read a headerless
        file whose column names it knows)."""
        data = cls.__new__(cls)
        numeric, categorical = auxiliary.feature_lists(tasks, numeric, categorical)  # predicted inputs go
        preprocessor = TablePreprocessor.for_tasks(tasks, numeric, categorical, weight, min_category_count)
        data.init_from_frames(frames, preprocessor, sources)
        return data

    # ------------------------------------------------------------------------------- runner hooks
    def encoder_inputs(self) -> dict[str, Any]:
        """The categorical columns (name, cardinality) the encoder embeds; none for an all-numeric table,
        which any vector encoder (encoder=mlp) reads as is."""
        layout = self.preprocessor.categorical_layout()
        return {"categorical": layout} if layout else {}

    def task_settings(self) -> dict[str, dict[str, Any]]:
        return self.preprocessor.task_settings()

    def input_columns(self) -> dict[str, int]:
        """{numeric feature column: its index in x}: what a reconstruction (``generate: {from: input}``,
        mtlrun/auxiliary.py) may target; category indices are labels, not quantities to regress."""
        return {c: i for i, c in enumerate(self.preprocessor.numeric)}

    def save_preprocessing(self, folder: Path) -> None:
        self.preprocessor.save(Path(folder) / PREPROCESSING_FILE)

    @classmethod
    def read_new_file(
        cls, path: str, columns: Sequence[str], optional: Sequence[str], roles: Mapping[str, str]
    ) -> tuple[pd.DataFrame, str]:
        """(frame, resolved path) of a file to predict on: ``columns`` must exist, ``optional`` ones are read
        when present. A data set whose files have a fixed layout (no header) overrides it."""
        return read_table(path, columns, optional=optional, roles=roles)

    @classmethod
    def new_input(cls, run_dir: Path, path: str, keep: Sequence[str] = ()) -> NewInput:
        """``path`` transformed with the run's preprocessing.json (``mtlrun predict``): the feature and
        ``keep`` columns must exist, the targets are read along when present."""
        fitted = cls.__new__(cls)  # holds only the saved preprocessor, for the runner hooks above
        fitted.preprocessor = TablePreprocessor.load(Path(run_dir) / PREPROCESSING_FILE)
        features = fitted.preprocessor.feature_columns
        roles = {c: "a feature of the trained model" for c in features} | {c: "keep" for c in keep}
        frame, source = cls.read_new_file(path, [*features, *keep], fitted.preprocessor.target_columns, roles)
        x = torch.from_numpy(fitted.preprocessor.features(frame, source))
        return NewInput(cls.name, x, frame, fitted.encoder_inputs(), fitted.task_settings())
