"""data=census_income: the UCI Census-Income (KDD) reader, labels, features, splits, errors, and the preset.

Every file here is generated in tmp_path in the UCI format (headerless, 42 values separated by ", ", plain
and gzip; tests/census_files.py); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from census_files import census_rows, write_census_file, write_census_files
from conftest import CONF, compose_cfg
from omegaconf import OmegaConf

from mtlrun import predict
from mtlrun.data.census_income import CATEGORICAL, COLUMNS, NUMERIC, CensusIncome
from mtlrun.errors import ConfigError, DataError
from mtlrun.tasks import build_tasks
from mtlrun.trainer.runner import run

TASKS = {"income": {"kind": "binary"}, "marital": {"kind": "binary"}}
COL = {name: i for i, name in enumerate(COLUMNS)}


def build(root: Path, tasks: dict | None = None, **kwargs) -> CensusIncome:
    return CensusIncome(build_tasks(tasks or TASKS), root=str(root), **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, list[list[str]], list[list[str]]]:
    """census-income.data (plain, 96 rows) and census-income.test.gz (80 rows), with their rows."""
    root = tmp_path_factory.mktemp("census")
    train, test = write_census_files(root, n_train=96, n_test=80, gz=(False, True))
    return root, train, test


@pytest.fixture(scope="module")
def data(files) -> CensusIncome:
    return build(files[0])


# ------------------------------------------------------------------------------------------- columns


def test_feature_lists_cover_every_column_but_the_labels_education_and_the_weight() -> None:
    assert len(COLUMNS) == 42 and len(NUMERIC) == 7 and len(CATEGORICAL) == 31
    left_out = set(COLUMNS) - set(NUMERIC) - set(CATEGORICAL)
    assert left_out == {"income_50k", "marital_stat", "education", "instance_weight"}
    assert {"det_ind_code", "det_occ_code", "own_or_self", "vet_benefits", "year"} <= set(CATEGORICAL)


def test_the_yaml_lists_the_module_defaults() -> None:
    content = OmegaConf.load(CONF / "data" / "census_income.yaml")
    assert list(content.data.numeric) == NUMERIC and list(content.data.categorical) == CATEGORICAL
    assert content.data.weight is None and list(content.tasks) == ["income", "marital"]


def test_marital_stat_education_and_instance_weight_are_not_features(data: CensusIncome) -> None:
    # no numeric column has a missing value, so no indicator columns: 7 numeric + 31 categorical
    assert data.preprocessor.feature_names == NUMERIC + CATEGORICAL
    assert data.input_shape == (38,)
    assert data.encoder_inputs()["categorical"][-1] == {"name": "year", "cardinality": 3}  # 94, 95, unknown


# ------------------------------------------------------------------------------------------- labels


def test_labels_are_income_above_50k_and_never_married(files, data: CensusIncome) -> None:
    _, train, test = files
    for split, rows in (("train", train), ("val", test), ("test", test)):
        picked = [rows[i] for i in data.file_rows[split]]
        income = [row[COL["income_50k"]] == "50000+." for row in picked]
        marital = [row[COL["marital_stat"]] == "Never married" for row in picked]
        assert data.splits[split].y["income"].tolist() == [float(v) for v in income]
        assert data.splits[split].y["marital"].tolist() == [float(v) for v in marital]
    assert data.task_settings() == {"income": {"classes": [0, 1]}, "marital": {"classes": [0, 1]}}


def test_hand_written_rows_map_to_the_expected_labels(tmp_path: Path) -> None:
    rows = census_rows(6)
    labels = [
        ("50000+.", "Never married"),
        ("- 50000.", "Never married"),
        ("- 50000.", "Divorced"),
        ("50000+.", "Married-civilian spouse present"),
        ("- 50000.", "Married-A F spouse present"),
        ("50000+.", "Widowed"),
    ]
    for row, (income, marital) in zip(rows, labels, strict=True):
        row[COL["income_50k"]], row[COL["marital_stat"]] = income, marital
    write_census_file(tmp_path / "census-income.data", rows)
    write_census_file(tmp_path / "census-income.test", rows + rows)
    data = build(tmp_path)
    assert data.splits["train"].y["income"].tolist() == [1, 0, 0, 1, 0, 1]
    assert data.splits["train"].y["marital"].tolist() == [1, 1, 0, 0, 0, 0]


def test_question_marks_are_missing_and_na_is_a_category(files, data: CensusIncome) -> None:
    _, train, _ = files
    x = data.splits["train"].x.numpy()  # numeric columns first, then one code column per categorical one
    country = x[:, len(NUMERIC) + CATEGORICAL.index("country_self")]
    asked = np.array([row[COL["country_self"]] == "?" for row in train])
    assert asked.any() and (country[asked] == 0).all() and (country[~asked] > 0).all()  # 0 = unknown
    assert "?" not in data.preprocessor.categories["country_self"]
    assert "NA" in data.preprocessor.categories["hisp_origin"]
    # the leading space is dropped, a trailing one (part of the UCI value) is kept
    assert data.preprocessor.categories["citizenship"] == [
        "Foreign born- Not a citizen of U S ",
        "Native- Born in the United States",
    ]


def test_instance_weight_is_the_optional_sample_weight(files, data: CensusIncome) -> None:
    root, train, _ = files
    assert data.splits["train"].weight is None  # off by default
    weighted = build(root, weight="instance_weight")
    expected = [float(row[COL["instance_weight"]]) for row in train]
    assert weighted.splits["train"].weight.tolist() == pytest.approx(expected)
    assert "instance_weight" not in weighted.preprocessor.feature_names


# ------------------------------------------------------------------------------------------- splits


def test_the_test_file_is_halved_into_disjoint_seeded_halves(files, data: CensusIncome) -> None:
    root = files[0]
    rows = data.file_rows
    assert rows["train"].tolist() == list(range(96))
    assert len(rows["val"]) == len(rows["test"]) == 40 and not set(rows["val"]) & set(rows["test"])
    assert sorted([*rows["val"], *rows["test"]]) == list(range(80))
    assert all((np.diff(rows[s]) > 0).all() for s in ("val", "test"))  # file order within each half
    again, other = build(root), build(root, seed=1)
    assert all((again.file_rows[s] == rows[s]).all() for s in rows)
    assert (again.splits["val"].x == data.splits["val"].x).all()
    assert set(other.file_rows["val"]) != set(rows["val"])


def test_an_odd_test_file_gives_validation_the_smaller_half(tmp_path: Path) -> None:
    write_census_files(tmp_path, n_train=20, n_test=81)
    assert build(tmp_path).sizes() == {"train": 20, "val": 40, "test": 41}


def test_size_limits_draw_seeded_rows_of_each_split(files, data: CensusIncome) -> None:
    root, train, _ = files
    small = build(root, n_train=10, n_val=5, n_test=7)
    assert small.sizes() == {"train": 10, "val": 5, "test": 7}
    rows = small.file_rows
    assert (
        len(set(rows["train"])) == 10
        and rows["train"].max() < 96
        and rows["train"].tolist() != list(range(10))
    )
    assert set(rows["val"]) <= set(data.file_rows["val"]) and set(rows["test"]) <= set(data.file_rows["test"])
    ages = [float(train[i][COL["age"]]) for i in rows["train"]]
    stats = small.preprocessor.numeric_stats["age"]  # fitted on these 10 rows only
    assert stats.mean == pytest.approx(np.mean(ages)) and stats.std == pytest.approx(np.std(ages))
    assert (build(root, n_train=10, n_val=5, n_test=7).file_rows["train"] == rows["train"]).all()
    assert build(root, n_train=500).sizes()["train"] == 96  # a cap larger than the file: every row


def test_a_plain_file_wins_over_its_gz_twin(tmp_path: Path) -> None:
    train, _ = write_census_files(tmp_path, n_train=30, n_test=20, gz=(False, False))
    write_census_file(tmp_path / "census-income.data.gz", census_rows(12, seed=5))
    assert build(tmp_path).sizes()["train"] == 30
    (tmp_path / "census-income.data").unlink()
    assert build(tmp_path).sizes()["train"] == 12
    with gzip.open(tmp_path / "census-income.data.gz", "rt") as handle:
        assert handle.readline().startswith(census_rows(1, seed=5)[0][0] + ", ")  # first value: no space


# ------------------------------------------------------------------------------------------- errors


def test_a_missing_directory_names_the_files_and_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build(tmp_path / "nowhere")
    message = str(err.value)
    assert f"data.root: {tmp_path / 'nowhere'} is not a directory" in message
    assert "census-income.data[.gz], census-income.test[.gz]" in message
    assert (
        "https://archive.ics.uci.edu/dataset/117/census+income+kdd" in message
        and "downloads nothing" in message
    )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    write_census_file(tmp_path / "census-income.data.gz", census_rows(10))
    with pytest.raises(DataError, match=rf"{tmp_path} has no census-income\.test\[\.gz\];"):
        build(tmp_path)


def test_a_file_with_the_wrong_number_of_columns_names_the_counts(tmp_path: Path) -> None:
    write_census_files(tmp_path, n_train=10, n_test=10)
    write_census_file(tmp_path / "census-income.data", [row[:-1] for row in census_rows(10)])
    with pytest.raises(DataError) as err:
        build(tmp_path)
    assert str(err.value).startswith(
        f"{tmp_path / 'census-income.data'}: 41 columns, but census-income files have 42"
    )


def test_a_ragged_line_names_the_file_and_the_line(tmp_path: Path) -> None:
    write_census_files(tmp_path, n_train=10, n_test=10)
    rows = census_rows(10, seed=3)
    rows[4] = [*rows[4], "extra"]
    write_census_file(tmp_path / "census-income.test.gz", rows)
    with pytest.raises(DataError, match=r"census-income\.test\.gz: cannot read it .*line 5, saw 43"):
        build(tmp_path)


def test_an_unknown_income_label_is_a_data_error(tmp_path: Path) -> None:
    write_census_files(tmp_path, n_train=10, n_test=10)
    rows = census_rows(10)
    rows[3][COL["income_50k"]] = "50000"
    write_census_file(tmp_path / "census-income.data", rows)
    with pytest.raises(
        DataError, match=r"census-income\.data: column 'income_50k' holds '50000' at line 4 \(1 such rows\)"
    ):
        build(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (
            {"categorical": [*CATEGORICAL, "marital_stat"]},
            "'marital_stat' is listed as a feature, but task 'marital'",
        ),
        (
            {"numeric": [*NUMERIC, "instance_weight"]},
            "'instance_weight' is listed as a feature; it is a survey weight",
        ),
        ({"n_val": 0}, "data.n_val: 0 rows"),
    ],
)
def test_a_label_or_the_survey_weight_as_a_feature_or_a_bad_size_is_a_config_error(
    files, kwargs: dict, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        build(files[0], **kwargs)


def test_another_column_can_be_a_task(files) -> None:
    root, train, _ = files
    data = build(root, {"sex": {"kind": "binary"}}, categorical=[c for c in CATEGORICAL if c != "sex"])
    assert data.task_settings() == {"sex": {"classes": ["Female", "Male"]}}
    assert data.splits["train"].y["sex"].tolist() == [float(row[COL["sex"]] == "Male") for row in train]


# ------------------------------------------------------------------------------------------- the preset


def test_the_preset_trains_end_to_end_in_process(files, tmp_path: Path) -> None:
    cfg = compose_cfg(["experiment=census_income", "debug=smoke", f"data.root={files[0]}"])
    cfg.trainer.device = "cpu"
    assert cfg.architecture.num_experts == 8 and list(cfg.encoder.hidden) == [16]
    assert run(cfg, tmp_path)["status"] == "completed"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"] == {"name": "census_income", "sizes": {"train": 96, "val": 40, "test": 40}}
    assert summary["monitor"] == {"name": "income/auroc", "higher_is_better": True}
    assert summary["architecture"] == "MMoE" and set(summary["test"]) == {"income", "marital"}
    assert 0 <= summary["test"]["income"]["auroc"] <= 1
    assert (tmp_path / "preprocessing.json").is_file()

    # the trained run predicts a headerless file in the census layout (its own test file here)
    out = tmp_path / "predictions.csv"
    test_file = next(files[0].glob("census-income.test*"))
    assert predict.main([f"run={tmp_path}", f"data.path={test_file}", "keep=[age]", f"out={out}"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["age", "income", "marital"] and len(table) == len(files[2])
    assert table[["income", "marital"]].stack().between(0, 1).all()


@pytest.mark.slow  # an `mtlrun` process (~5 s); the fast tier runs the preset through the CLI in test_cli.py
def test_a_missing_root_fails_with_one_error_line(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    command = [
        "data=census_income",
        "debug=smoke",
        f"data.root={tmp_path / 'none'}",
        f"hydra.run.dir={folder}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mtlrun", *command], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and "census-income.data[.gz]" in errors[0]
