"""``data=census_income``: the UCI Census-Income (KDD) files the user already has, set up as in the MMoE paper.

Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate Mixture-of-Experts" (KDD 2018),
section 6.3: 199,523 training and 99,762 test rows of the 1994/95 Current Population Survey; the test rows
split at random 1:1 into validation and test; group 1 of the paper's tasks, both binary and scored by AUC:

* ``income``: total person income above $50,000 (the last column, ``50000+.`` vs ``- 50000.``), the main task;
* ``marital``: marital status "Never married" (vs every other status), the auxiliary task.

The paper removes education and marital status from the input features, as they are labels in its two task
groups; so do the default feature lists here (`NUMERIC`, `CATEGORICAL`). ``instance_weight`` is
never a feature: it is a survey weight (the number of people a row stands for), which the UCI description
says must not be used by classifiers. It can weigh the loss instead (``weight=instance_weight``); that is off
by default, as in the paper, whose AUCs count every row once.

Column types follow the UCI ``census-income.names`` file: 7 continuous columns are numeric (standardised by
the `TablePreprocessor`); every other column is categorical (embedded by
``encoder=tabular``), including the integer-coded ``det_ind_code``, ``det_occ_code``, ``own_or_self``,
``vet_benefits`` and ``year``, whose numbers are codes, not quantities.

Reading: headerless, values separated by ", " (the leading space is dropped), each file plain or ``.gz``.
``?`` is a missing value (categorical: the "unknown" index, like an unseen category); "Not in universe" and
"NA" (a ``hisp_origin`` answer) are categories. Any other column of the file (``sex``, ``wage_per_hour``, ...)
can be a task's target too; the derived targets are ``income`` and ``marital`` (0/1, see `DERIVED`).

Splits: train = ``census-income.data``; ``census-income.test`` halved at random (seeded by ``seed``) into
validation (the first ``n // 2`` rows of a permutation) and test (the rest). ``n_train`` / ``n_val`` /
``n_test`` draw that many rows of a split at random (seeded, each split from its own stream) for quick trials.
After the build, ``file_rows[split]`` holds each split's row numbers in its file (0-based, in file order).
Nothing is downloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlrun.data import files
from mtlrun.data.base import SPLITS
from mtlrun.data.files import resolve_path
from mtlrun.data.preprocess import TablePreprocessor, shown
from mtlrun.data.tabular import TabularData
from mtlrun.errors import ConfigError, DataError

log = logging.getLogger("mtlrun")

# The 42 columns of census-income.data / .test, in file order (names as in the widely used MMoE
# reimplementations; the UCI census-income.names file describes each).
COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits",
    "weeks_worked", "year", "income_50k",
]  # fmt: skip
# The UCI file's continuous columns (census-income.names), standardised.
NUMERIC = [
    "age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked",
]  # fmt: skip
# Every other column but the labels (income_50k, marital_stat), education (removed by the paper too) and
# the survey weight, embedded.
CATEGORICAL = [
    "class_worker", "det_ind_code", "det_occ_code", "hs_college", "major_ind_code", "major_occ_code", "race",
    "hisp_origin", "sex", "union_member", "unemp_reason", "full_or_part_emp", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "mig_chg_msa", "mig_chg_reg",
    "mig_move_reg", "mig_same", "mig_prev_sunbelt", "fam_under_18", "country_father", "country_mother",
    "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits", "year",
]  # fmt: skip
SURVEY_WEIGHT = "instance_weight"
FILES = {"train": "census-income.data", "test": "census-income.test"}  # each plain or .gz
SOURCE = (
    "the UCI Machine Learning Repository, data set 'Census-Income (KDD)' "
    "(https://archive.ics.uci.edu/dataset/117/census+income+kdd: unzip the download, then unpack the "
    "census.tar.gz inside; the two files land in its census/ folder)"
)
MISSING = ["?", ""]  # read as missing; "NA" stays a category (a hisp_origin answer)
UCI_ROWS = {"census-income.data": 199_523, "census-income.test": 99_762}


@dataclass(frozen=True)
class DerivedTarget:
    """A 0/1 target computed from one column: 1 where the value is ``positive``; every value must be one of
    ``allowed`` (None: any value) after dropping spaces and a trailing period."""

    column: str
    positive: str
    allowed: frozenset[str] | None = None


DERIVED = {
    "income": DerivedTarget("income_50k", "50000+", frozenset({"- 50000", "50000+"})),
    "marital": DerivedTarget("marital_stat", "Never married"),
}


def expected_files() -> str:
    return files.expected_files(FILES)


def find_files(root: Path) -> dict[str, Path]:
    """{"train": path, "test": path} in ``root``, plain preferred over ``.gz``; a DataError names what is
    missing, the names expected and where to get them."""
    hint = (
        f"data=census_income reads {expected_files()} (headerless, 42 columns) from data.root; get them from "
        f"{SOURCE}, put both in one directory and pass it as data.root=DIR (mtlrun downloads nothing)"
    )
    return files.find_files(root, FILES, hint)


def read_census_file(path: Path) -> pd.DataFrame:
    """One census-income file as a frame with `COLUMNS`; the index is the row's number in the file."""
    try:
        frame = pd.read_csv(
            path,
            header=None,
            sep=",",
            skipinitialspace=True,
            na_values=MISSING,
            keep_default_na=False,
            low_memory=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it should hold census-income rows") from None
    except (pd.errors.ParserError, OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: cannot read it as a census-income file ({str(err).strip()}); every line holds "
            f"{len(COLUMNS)} values separated by ', '"
        ) from None
    if frame.shape[1] != len(COLUMNS):
        raise DataError(
            f"{path}: {frame.shape[1]} columns, but census-income files have {len(COLUMNS)} "
            f"({', '.join(COLUMNS[:3])}, ..., {COLUMNS[-1]}), headerless and separated by ', '; "
            "is it the UCI census-income.data / .test file?"
        )
    frame.columns = COLUMNS
    return frame


def derive_target(frame: pd.DataFrame, spec: DerivedTarget, source: str) -> np.ndarray:
    """float64 [N]: 1 where ``spec.column`` holds ``spec.positive``, 0 elsewhere, NaN where it is missing."""
    codes, uniques = pd.factorize(frame[spec.column], use_na_sentinel=True)
    keys = [str(value).strip().rstrip(".").strip() for value in uniques]
    if spec.allowed is not None:
        bad = [i for i, key in enumerate(keys) if key not in spec.allowed]
        if bad:
            first = int(np.flatnonzero(codes == bad[0])[0])
            raise DataError(
                f"{source}: column '{spec.column}' holds {shown(uniques[bad[0]])} at line "
                f"{int(frame.index[first]) + 1} "
                f"({int(np.isin(codes, bad).sum())} such rows); census-income labels are "
                f"{' and '.join(sorted(spec.allowed))} (with a trailing period); is it the right file?"
            )
    lookup = np.array([float(key == spec.positive) for key in keys] + [np.nan])
    return lookup[codes]  # code -1 (missing) reads the last entry: NaN


def seeded_rows(count: int, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``n`` rows of ``count`` drawn at random, in file order (all when ``n`` is None or
    larger)."""
    if n is None or n >= count:
        return np.arange(count)
    return np.sort(rng.permutation(count)[:n])


class CensusIncome(TabularData):
    """The UCI Census-Income (KDD) files as train/val/test tensors; see the module docstring."""

    name = "census_income"

    def __init__(
        self,
        tasks: Mapping[str, Any] | None = None,
        root: str = "data/census-income",
        numeric: list[str] | None = None,
        categorical: list[str] | None = None,
        weight: str | None = None,
        seed: int = 0,
        min_category_count: int = 1,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
    ) -> None:
        if not tasks:
            raise ConfigError(
                "data=census_income: no tasks; declare them under `tasks:` (conf/data/census_income.yaml "
                "declares income and marital)"
            )
        sizes = {"train": n_train, "val": n_val, "test": n_test}
        for split, n in sizes.items():
            if n is not None and n < 1:
                raise ConfigError(f"data.n_{split}: {n} rows; give a positive count, or null for all")
        numeric = list(NUMERIC if numeric is None else numeric)
        categorical = list(CATEGORICAL if categorical is None else categorical)
        self._check_features(tasks, numeric + categorical, weight)
        if not root:
            raise ConfigError(f"data.root: no directory given; set data.root=DIR holding {expected_files()}")
        self.root = resolve_path(root, "data.root")
        self.files = find_files(self.root)
        files = {split: read_census_file(path) for split, path in self.files.items()}
        for split, frame in files.items():
            uci = UCI_ROWS[FILES[split]]
            log.info(
                "data census_income: %d rows in %s (the UCI file has %d)", len(frame), self.files[split], uci
            )
        halve, *streams = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
        order = halve.permutation(len(files["test"]))
        halves = {"val": np.sort(order[: len(order) // 2]), "test": np.sort(order[len(order) // 2 :])}
        pools = {"train": np.arange(len(files["train"])), **halves}
        derived = {task.target: DERIVED[task.target] for task in tasks.values() if task.target in DERIVED}
        self.file_rows: dict[str, np.ndarray] = {}
        frames, sources = {}, {}
        for split, rng in zip(SPLITS, streams, strict=True):
            pool = pools[split]
            rows = pool[seeded_rows(len(pool), sizes[split], rng)]
            self.file_rows[split] = rows
            sources[split] = str(self.files["train" if split == "train" else "test"])
            frame = files["train" if split == "train" else "test"].iloc[rows].copy()
            for target, spec in derived.items():
                frame[target] = derive_target(frame, spec, sources[split])
            frames[split] = frame
        preprocessor = TablePreprocessor.for_tasks(tasks, numeric, categorical, weight, min_category_count)
        self.init_from_frames(frames, preprocessor, sources)

    @classmethod
    def read_new_file(
        cls, path: str, columns: Sequence[str], optional: Sequence[str], roles: Mapping[str, str]
    ) -> tuple[pd.DataFrame, str]:
        """A file to predict on, in the census-income layout (headerless, like census-income.test)."""
        resolved = resolve_path(path, "data.path")
        if not resolved.is_file():
            raise DataError(f"data.path: no file {resolved}; give a file in the census-income layout")
        frame = read_census_file(resolved)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{resolved}: no column(s) {missing} ({', '.join(roles.get(c, '') for c in missing)}); "
                f"census-income files have {', '.join(COLUMNS)}"
            )
        return frame, str(resolved)

    @staticmethod
    def _check_features(tasks: Mapping[str, Any], features: list[str], weight: str | None) -> None:
        """ConfigErrors for features that would leak a label or the survey weight into the input."""
        for column in features:
            if column == SURVEY_WEIGHT:
                raise ConfigError(
                    f"data: '{SURVEY_WEIGHT}' is listed as a feature; it is a survey weight (how many people a "
                    "row stands for) that the UCI description says classifiers must not use; remove it from "
                    f"data.numeric (data.weight={SURVEY_WEIGHT} weighs the loss with it instead)"
                )
            if weight is not None and column == weight:
                raise ConfigError(f"data: '{column}' is both a feature and data.weight; pick one")
        for task in tasks.values():
            spec = DERIVED.get(task.target)
            if spec is not None and spec.column in features:
                raise ConfigError(
                    f"data: '{spec.column}' is listed as a feature, but task '{task.name}' predicts "
                    f"'{task.target}', which is derived from it; remove '{spec.column}' from data.categorical"
                )
