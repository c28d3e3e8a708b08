"""Preprocessing of a table, fitted on the training split only and saved as JSON (never pickle).

`TablePreprocessor` turns a pandas DataFrame into what the runner trains on, with vectorised
pandas/numpy only (no per-row Python):

* **features** -> one float32 matrix [N, F], columns in this order:
  numeric columns, standardised with the training mean and std (a missing value becomes the training mean,
  i.e. 0 after standardising); one 0/1 missing-indicator column per numeric column that had missing values
  in the training split; then one column per categorical feature holding its category index as a float
  (1..K for the categories seen in training, ``UNKNOWN`` = 0 for unseen, rare and missing ones), which the
  tabular encoder splits off and embeds.
* **targets** -> {target: array} plus {target: bool mask} for targets with missing values. Binary and
  multiclass labels (strings or arbitrary numbers) map to class indices (``classes`` lists the original
  labels in index order); regression targets may be standardised (mean/std of the training split);
  multilabel targets pack several 0/1 columns into [N, C]. Unlabelled rows hold the placeholder 0.
* **weights** -> an optional float32 [N] sample-weight column.

``save``/``load`` write and read the fitted state as JSON, so a new file can be transformed exactly like
the training data (``features``) and predictions mapped back (``decode``). Every problem with the input is a
`DataError` naming the file, the column, the problem and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlrun.errors import ConfigError, DataError

FORMAT = "mtlrun.tabular.preprocessing"
VERSION = 1
UNKNOWN = 0  # category index of unseen, rare and missing categories (embedding row 0)
ROWS_PER_BLOCK = 1 << 14  # rows per block when filling the feature matrix (a block fits the CPU cache)
CLOSE = 0.8  # similarity from which a column is suggested for a missing one ('agee' -> 'age': 0.86)


# ------------------------------------------------------------------------------------------ helpers
def category_key(value: Any) -> str:
    """The text a category or class label is matched by, so 1, 1.0 and "1" from CSV and Parquet agree."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold (labels keep their type: 3 stays 3, "yes" "yes")."""
    return value.item() if isinstance(value, np.generic) else value


def label_order(value: Any) -> tuple:
    """Sort key of class labels: numbers first, in numeric order, then everything else as text."""
    number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    return (0, float(value), "") if number else (1, 0.0, str(value))


def shown(value: Any) -> str:
    """A value from a table as a message shows it: ``'twenty'``, ``2``, ``-1.5`` (never ``np.int64(2)``)."""
    return repr(plain(value))


def closest_column(name: str, present: Sequence[str]) -> str | None:
    """The column of ``present`` that ``name`` most likely misspells, or None when none is close: equal but
    for case, or at least ``CLOSE`` similar (difflib ratio of the lower-cased names)."""
    lowered = {column.lower(): column for column in reversed(present) if column != name}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=CLOSE)
    return lowered[close[0]] if close else None


def row_label(source: str, row: Any) -> str:
    """Where a row is, as a user finds it: CSV rows also give the line number (header = line 1)."""
    if str(source).lower().endswith((".csv", ".tsv")) and isinstance(row, int | np.integer):
        return f"row {row} (line {int(row) + 2}) of {source}"
    return f"row {row} of {source}"


@dataclass(frozen=True)
class BadRows:
    """The first of the rows a check refused, as a message names it, and how many there are."""

    where: str  # e.g. "row 3 (line 5) of feed.csv"
    value: str  # what that row holds, as :func:`shown` writes it
    count: int


def first_bad(bad: np.ndarray, series: pd.Series, source: str) -> BadRows | None:
    """The first row of ``series`` where ``bad`` (bool, one per row) is True; None when there is none."""
    if not bad.any():
        return None
    first = int(np.flatnonzero(bad)[0])
    return BadRows(row_label(source, series.index[first]), shown(series.iloc[first]), int(bad.sum()))


def check_columns(frame: pd.DataFrame, columns: Iterable[str], source: str, role: str = "") -> None:
    """A DataError naming the first missing column, the file's columns and the closest name."""
    present = [str(c) for c in frame.columns]
    for column in columns:
        if column in frame.columns:
            continue
        close = closest_column(str(column), present)
        hint = f"did you mean '{close}'? " if close else ""
        listed = ", ".join(present[:40]) + (" ..." if len(present) > 40 else "")
        raise DataError(
            f"{source}: no column '{column}'{f' ({role})' if role else ''}; {hint}the file has: {listed}. "
            "Fix the name in the data config or the file"
        )


def numeric_values(series: pd.Series, column: str, source: str) -> np.ndarray:
    """float64 values of a column that must be numeric; NaN where missing; a DataError shows a bad value.
    The result may share memory with the frame: do not write into it."""
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        coerced = pd.to_numeric(series, errors="coerce")
        bad = first_bad(coerced.isna().to_numpy() & series.notna().to_numpy(), series, source)
        if bad:
            raise DataError(
                f"{source}: column '{column}' must be numeric, but {bad.where} holds {bad.value} ({bad.count} "
                "such rows); fix the value, leave it empty for missing, or declare the column categorical"
            )
        values = coerced.to_numpy(dtype="float64", na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        first = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{source}: column '{column}' holds an infinite value at {row_label(source, series.index[first])}; "
            "replace it with a finite number or leave it empty"
        )
    return values


def category_codes(series: pd.Series, index: Mapping[str, int], default: int) -> np.ndarray:
    """int64 index of each row's value in ``index`` (by `category_key`); ``default`` for missing
    values and values not in ``index``. One hash pass over the rows, one Python pass over the distinct
    values."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    lookup = np.array([index.get(category_key(u), default) for u in uniques] + [default], dtype=np.int64)
    return lookup[codes]  # code -1 (missing) reads the last entry: ``default``


# ------------------------------------------------------------------------------------------ targets
@dataclass
class TargetSpec:
    """One target as the preprocessing sees it: which task reads it, its kind and file column(s)."""

    name: str  # the key in batch["y"] (the task's ``target``)
    task: str  # the task that reads it (for messages)
    kind: str  # regression, binary, multiclass or multilabel
    columns: list[str]  # the file columns: one, or the label columns of a multilabel target
    num_classes: int | None = None
    classes: list | None = None  # binary/multiclass labels in index order: declared, or fitted on train
    standardize: bool = False  # regression: fit mean/std on train and standardise
    mean: float | None = None  # fitted (standardize)
    std: float | None = None  # fitted (standardize)

    @classmethod
    def from_task(cls, task: Any) -> TargetSpec:
        """From a `mtlrun.tasks.Task`: a multilabel task reads ``columns``, others the column named
        by ``target``."""
        columns = list(task.columns) if task.kind == "multilabel" and task.columns else [task.target]
        return cls(
            name=task.target,
            task=task.name,
            kind=task.kind,
            columns=columns,
            num_classes=task.num_classes,
            classes=None if task.classes is None else list(task.classes),
            standardize=bool(task.standardize),
        )

    def where(self, source: str) -> str:
        return f"{source}: task '{self.task}' (column {', '.join(map(repr, self.columns))})"


# ------------------------------------------------------------------------------------------ preprocessor
@dataclass
class NumericStats:
    mean: float
    std: float
    missing_indicator: bool  # the training split had missing values: the features get a 0/1 column


@dataclass
class TablePreprocessor:
    """Feature, target and weight transforms of a table; ``fit`` on the training split, then transform any
    split or new file. See the module docstring for the feature layout."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    targets: list[TargetSpec] = field(default_factory=list)
    weight: str | None = None  # column of per-row sample weights
    min_category_count: int = 1  # categories seen fewer times in training map to UNKNOWN
    numeric_stats: dict[str, NumericStats] = field(default_factory=dict)  # fitted
    categories: dict[str, list[str]] = field(default_factory=dict)  # fitted: index = position + 1

    def __post_init__(self) -> None:
        self.numeric, self.categorical = list(self.numeric), list(self.categorical)
        if not self.numeric and not self.categorical:
            raise ConfigError(
                "data: no feature columns; list them under data.numeric and/or data.categorical"
            )
        both = set(self.numeric) & set(self.categorical)
        if both:
            raise ConfigError(
                f"data: column(s) {sorted(both)} are listed as numeric and categorical; pick one"
            )
        target_columns = {c for spec in self.targets for c in spec.columns}
        leaked = (set(self.numeric) | set(self.categorical) | {self.weight}) & target_columns
        if leaked:
            raise ConfigError(
                f"data: column(s) {sorted(leaked)} are both a feature (or the weight) and a task's target; "
                "remove them from data.numeric / data.categorical"
            )
        if self.min_category_count < 1:
            raise ConfigError(f"data.min_category_count: must be >= 1; got {self.min_category_count}")

    @classmethod
    def for_tasks(
        cls,
        tasks: Mapping[str, Any],
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        weight: str | None = None,
        min_category_count: int = 1,
    ) -> TablePreprocessor:
        """An unfitted preprocessor for these feature columns and the targets of ``tasks`` ({name: Task})."""
        return cls(
            numeric=list(numeric),
            categorical=list(categorical),
            targets=[TargetSpec.from_task(task) for task in tasks.values()],
            weight=weight,
            min_category_count=min_category_count,
        )

    # -------------------------------------------------------------------------------------- layout
    @property
    def fitted(self) -> bool:
        return len(self.numeric_stats) == len(self.numeric) and len(self.categories) == len(self.categorical)

    @property
    def indicator_columns(self) -> list[str]:
        return [c for c in self.numeric if self.numeric_stats[c].missing_indicator]

    @property
    def feature_names(self) -> list[str]:
        """Names of the feature matrix's columns, in order."""
        return [*self.numeric, *(f"{c}_missing" for c in self.indicator_columns), *self.categorical]

    def categorical_layout(self) -> list[dict[str, Any]]:
        """What the encoder embeds: per categorical column (the last columns of the features, in this order),
        its name and cardinality (the categories seen in training, plus UNKNOWN)."""
        return [{"name": c, "cardinality": len(self.categories[c]) + 1} for c in self.categorical]

    @property
    def feature_columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def target_columns(self) -> list[str]:
        return [c for spec in self.targets for c in spec.columns]

    def target(self, name: str) -> TargetSpec:
        for spec in self.targets:
            if spec.name == name:
                return spec
        raise KeyError(f"no target '{name}'; targets: {[s.name for s in self.targets]}")

    # -------------------------------------------------------------------------------------- fit
    def fit(self, frame: pd.DataFrame, source: str = "training split") -> TablePreprocessor:
        """Fit every statistic on ``frame`` (the training split only)."""
        check_columns(frame, self.feature_columns, source, "a feature")
        check_columns(frame, self.target_columns, source, "a task's target")
        if self.weight:
            check_columns(frame, [self.weight], source, "the sample weight")
        self.numeric_stats = {}
        for column in self.numeric:
            values = numeric_values(frame[column], column, source)
            missing = np.isnan(values)
            if missing.all():
                raise DataError(
                    f"{source}: numeric column '{column}' has no values in the training split; fill it or "
                    "remove it from data.numeric"
                )
            mean, std = float(np.nanmean(values)), float(np.nanstd(values))
            self.numeric_stats[column] = NumericStats(mean, std if std > 0 else 1.0, bool(missing.any()))
        self.categories = {column: self._fit_categories(frame[column]) for column in self.categorical}
        for spec in self.targets:
            self._fit_target(spec, frame, source)
        return self

    def _fit_categories(self, series: pd.Series) -> list[str]:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
        merged: dict[str, int] = {}
        for value, count in zip(uniques, counts, strict=True):
            key = category_key(value)
            merged[key] = merged.get(key, 0) + int(count)
        return sorted(key for key, count in merged.items() if count >= self.min_category_count)

    def _fit_target(self, spec: TargetSpec, frame: pd.DataFrame, source: str) -> None:
        present = frame[spec.columns].notna().all(axis=1).to_numpy()
        if not present.any():
            raise DataError(
                f"{spec.where(source)}: no labelled rows in the training split (every value is missing); "
                "label some training rows or drop the task"
            )
        series = frame[spec.columns[0]]
        if spec.kind == "regression":
            values = numeric_values(series, spec.columns[0], source)[present]
            if spec.standardize:
                std = float(values.std())
                spec.mean, spec.std = float(values.mean()), std if std > 0 else 1.0
        elif spec.kind in ("binary", "multiclass") and spec.classes is None:
            spec.classes = self._fit_classes(spec, series[present], source)

    def _fit_classes(self, spec: TargetSpec, labels: pd.Series, source: str) -> list:
        """Class labels in index order, from the training split's labelled values (see ``TargetSpec``)."""
        uniques = pd.unique(labels)
        numeric = pd.api.types.is_numeric_dtype(labels.dtype) or pd.api.types.is_bool_dtype(labels.dtype)
        if spec.kind == "binary":
            if numeric and set(uniques.tolist()) <= {0, 1}:
                return [False, True] if pd.api.types.is_bool_dtype(labels.dtype) else [0, 1]
            if len(uniques) == 2:
                return sorted((plain(u) for u in uniques), key=label_order)
            listed = ", ".join(repr(plain(u)) for u in uniques[:10])
            if len(uniques) > 2:
                raise DataError(
                    f"{spec.where(source)}: a binary target has {len(uniques)} distinct values in the training "
                    f"split ({listed}{' ...' if len(uniques) > 10 else ''}); make it two-valued or declare "
                    "the task multiclass with num_classes"
                )
            raise DataError(
                f"{spec.where(source)}: only one label ({listed}) in the training split, so the other class is "
                f"unknown; declare both with tasks.{spec.task}.classes: [negative, positive]"
            )
        k = int(spec.num_classes)
        if numeric and all(float(u).is_integer() and 0 <= u < k for u in uniques):
            return list(range(k))  # labels already are class indices
        if len(uniques) > k:
            listed = ", ".join(repr(plain(u)) for u in sorted(uniques, key=label_order)[:12])
            raise DataError(
                f"{spec.where(source)}: {len(uniques)} distinct labels in the training split ({listed} ...), "
                f"outside the declared classes (num_classes={k}); raise tasks.{spec.task}.num_classes or "
                f"list the labels in tasks.{spec.task}.classes"
            )
        return sorted((plain(u) for u in uniques), key=label_order)

    # -------------------------------------------------------------------------------------- transform
    def features(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        """The float32 feature matrix [N, F] of ``frame`` (only the feature columns are read)."""
        if not self.fitted:
            raise RuntimeError("TablePreprocessor.features before fit (or load)")
        check_columns(frame, self.feature_columns, source, "a feature")
        numeric = [(numeric_values(frame[c], c, source), self.numeric_stats[c]) for c in self.numeric]
        codes = [
            category_codes(frame[c], {key: i + 1 for i, key in enumerate(self.categories[c])}, UNKNOWN)
            for c in self.categorical
        ]
        out = np.empty((len(frame), len(self.feature_names)), dtype=np.float32)
        # filled in blocks of rows that stay in the CPU cache while their columns are written
        for start in range(0, len(frame), ROWS_PER_BLOCK):
            rows = slice(start, start + ROWS_PER_BLOCK)
            block = out[rows]
            indicator = len(numeric)
            for j, (values, stats) in enumerate(numeric):
                chunk = values[rows]
                missing = np.isnan(chunk)
                standardised = (chunk - stats.mean) / stats.std  # in float64: large values keep their digits
                standardised[missing] = 0.0  # the training mean, standardised
                block[:, j] = standardised
                if stats.missing_indicator:
                    block[:, indicator] = missing
                    indicator += 1
            for j, column_codes in enumerate(codes):
                block[:, indicator + j] = column_codes[rows]
        return out

    def transform_targets(
        self, frame: pd.DataFrame, source: str
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({target: labels}, {target: bool mask}) of ``frame``; a mask only for targets with missing rows.
        Labels: float32 for regression, binary and multilabel ([N, C]); int64 class indices for multiclass."""
        check_columns(frame, self.target_columns, source, "a task's target")
        labels, masks = {}, {}
        for spec in self.targets:
            present = frame[spec.columns].notna().all(axis=1).to_numpy(copy=True)  # writable: torch shares it
            if spec.kind == "multilabel":
                values = np.stack([self._zero_one(frame[c], c, spec, source) for c in spec.columns], axis=1)
            elif spec.kind == "regression":
                values = numeric_values(frame[spec.columns[0]], spec.columns[0], source)
                if spec.standardize:
                    values = (values - spec.mean) / spec.std
            else:
                values = self._class_indices(spec, frame[spec.columns[0]], present, source)
            values = np.where(present.reshape(-1, *[1] * (values.ndim - 1)), values, 0)
            dtype = np.int64 if spec.kind == "multiclass" else np.float32
            labels[spec.name] = values.astype(dtype)
            if not present.all():
                masks[spec.name] = present
        return labels, masks

    def _zero_one(self, series: pd.Series, column: str, spec: TargetSpec, source: str) -> np.ndarray:
        values = numeric_values(series, column, source)
        bad = first_bad(~np.isnan(values) & (values != 0) & (values != 1), series, source)
        if bad:
            raise DataError(
                f"{spec.where(source)}: multilabel columns hold 0 or 1, but {bad.where} of '{column}' holds "
                f"{bad.value}; fix the value or leave it empty for missing"
            )
        return values

    def _class_indices(
        self, spec: TargetSpec, series: pd.Series, present: np.ndarray, source: str
    ) -> np.ndarray:
        index = {category_key(label): i for i, label in enumerate(spec.classes)}
        codes = category_codes(series, index, -1)
        bad = first_bad((codes < 0) & present, series, source)
        if bad:
            raise DataError(
                f"{spec.where(source)}: label {bad.value} at {bad.where} "
                f"is not one of the classes {spec.classes} ({bad.count} such rows; classes are "
                f"{'declared' if spec.classes else 'those of the training split'}); list every label in "
                f"tasks.{spec.task}.classes{' (and num_classes)' if spec.kind == 'multiclass' else ''} "
                "or fix the value"
            )
        return codes

    def weights(self, frame: pd.DataFrame, source: str) -> np.ndarray | None:
        """float32 [N] sample weights (None without a weight column); finite, non-negative, none missing."""
        if not self.weight:
            return None
        check_columns(frame, [self.weight], source, "the sample weight")
        values = numeric_values(frame[self.weight], self.weight, source)
        bad = first_bad(np.isnan(values) | (values < 0), frame[self.weight], source)
        if bad:
            raise DataError(
                f"{source}: sample weight column '{self.weight}' must be a non-negative number on every row; "
                f"{bad.where} holds {bad.value}; fill it (1 = an ordinary row)"
            )
        return values.astype(np.float32)

    # -------------------------------------------------------------------------------------- outputs
    def task_settings(self) -> dict[str, dict[str, Any]]:
        """{target: settings} for ``Task.with_data_settings``: fitted classes and target scales."""
        settings: dict[str, dict[str, Any]] = {}
        for spec in self.targets:
            if spec.classes is not None:
                settings.setdefault(spec.name, {})["classes"] = list(spec.classes)
            if spec.standardize:
                settings.setdefault(spec.name, {})["target_scale"] = (spec.mean, spec.std)
        return settings

    def decode(self, target: str, values: np.ndarray | Sequence) -> np.ndarray:
        """Model outputs back in the file's terms: regression values in original units (undoing the
        standardisation), binary/multiclass class indices -> original labels; multilabel values unchanged."""
        spec = self.target(target)
        values = np.asarray(values)
        if spec.kind == "regression":
            return values * spec.std + spec.mean if spec.standardize else values
        if spec.kind in ("binary", "multiclass"):
            labels = np.empty(len(spec.classes), dtype=object)
            labels[:] = spec.classes
            return labels[values.astype(np.int64)]
        return values

    # -------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "feature_names": self.feature_names,
            "numeric": {c: asdict(self.numeric_stats[c]) for c in self.numeric},
            "categorical": {c: {"categories": self.categories[c]} for c in self.categorical},
            "unknown_index": UNKNOWN,
            "targets": [asdict(spec) for spec in self.targets],
            "weight": self.weight,
            "min_category_count": self.min_category_count,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> TablePreprocessor:
        if state.get("format") != FORMAT or state.get("version") != VERSION:
            raise DataError(
                f"not a {FORMAT} file of version {VERSION} (format {state.get('format')!r}, version "
                f"{state.get('version')!r}); it was written by another mtlrun version"
            )
        return cls(
            numeric=list(state["numeric"]),
            categorical=list(state["categorical"]),
            targets=[TargetSpec(**spec) for spec in state["targets"]],
            weight=state["weight"],
            min_category_count=state["min_category_count"],
            numeric_stats={c: NumericStats(**s) for c, s in state["numeric"].items()},
            categories={c: list(s["categories"]) for c, s in state["categorical"].items()},
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> TablePreprocessor:
        """The preprocessing a run saved (``<run folder>/preprocessing.json``)."""
        path = Path(path)
        if path.is_dir():
            path = path / "preprocessing.json"
        if not path.is_file():
            raise DataError(
                f"{path}: no such file; a data=tabular run writes preprocessing.json in its folder"
            )
        return cls.from_dict(json.loads(path.read_text()))
