"""data=tabular: reading, splitting, preprocessing fitted on the training split only, label mappings, the
JSON round trip, and a clear DataError for every kind of bad input (mtlrun/data/tabular.py, preprocess.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_cfg

from mtlrun.data.preprocess import UNKNOWN, TablePreprocessor
from mtlrun.data.tabular import TabularData
from mtlrun.errors import ConfigError, DataError
from mtlrun.tasks import build_tasks
from mtlrun.trainer.setup import fit_tasks, setup_data

ROOT = Path(__file__).resolve().parents[2]

TASKS = {
    "clicked": {"kind": "binary"},
    "dwell": {"kind": "regression", "standardize": True},
    "mood": {"kind": "multiclass", "num_classes": 3},
}


def table(n: int = 12) -> pd.DataFrame:
    """A small table: row i is in train (i < n - 4), val (next 2) or test (last 2)."""
    i = np.arange(n)
    return pd.DataFrame(
        {
            "age": (20.0 + i).astype(float),
            "city": np.array(["paris", "rome", "oslo"])[i % 3],
            "clicked": i % 2,
            "dwell": 10.0 * i,
            "mood": np.array(["sad", "ok", "glad"])[i % 3],
            "split": ["train"] * (n - 4) + ["val", "val", "test", "test"],
        }
    )


def write(frame: pd.DataFrame, folder: Path, name: str = "t.csv") -> Path:
    path = folder / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def load(path: Path, tasks: dict | None = None, **options) -> TabularData:
    options = {"numeric": ["age"], "categorical": ["city"], "split_column": "split"} | options
    return TabularData(tasks=build_tasks(tasks or TASKS), path=str(path), **options)


# ----------------------------------------------------------------------------------- fitting and mapping


def test_statistics_come_from_the_training_split_only(tmp_path):
    frame = table()
    frame.loc[frame.split != "train", "age"] = 1e6  # extreme values outside the training split
    frame.loc[frame.split != "train", "dwell"] = -1e6
    data = load(write(frame, tmp_path))
    pre = data.preprocessor
    train_age = 20.0 + np.arange(8)
    assert pre.numeric_stats["age"].mean == pytest.approx(train_age.mean())  # 23.5
    assert pre.numeric_stats["age"].std == pytest.approx(train_age.std())  # population std
    train_dwell = 10.0 * np.arange(8)
    dwell = pre.target("dwell")
    assert (dwell.mean, dwell.std) == pytest.approx((train_dwell.mean(), train_dwell.std()))
    x = data.splits["train"].x
    assert x[:, 0].tolist() == pytest.approx(((train_age - 23.5) / train_age.std()).tolist())
    assert data.splits["val"].x[0, 0].item() == pytest.approx((1e6 - 23.5) / train_age.std())


def test_missing_numeric_values_get_the_training_mean_and_an_indicator(tmp_path):
    frame = table()
    frame.loc[[1, 9], "age"] = np.nan  # one training row, one validation row
    data = load(write(frame, tmp_path))
    pre = data.preprocessor
    assert pre.feature_names == ["age", "age_missing", "city"]
    observed = 20.0 + np.array([0, 2, 3, 4, 5, 6, 7])
    assert pre.numeric_stats["age"].mean == pytest.approx(observed.mean())
    train, val = data.splits["train"].x, data.splits["val"].x
    assert train[1].tolist()[:2] == [0.0, 1.0]  # imputed mean (0 once standardised), indicator set
    assert val[1, :2].tolist() == [0.0, 1.0] and val[0, 1].item() == 0.0


def test_unseen_missing_and_rare_categories_map_to_the_unknown_index(tmp_path):
    frame = table()
    frame.loc[9, "city"] = "lima"  # never seen in training
    frame.loc[10, "city"] = np.nan
    data = load(write(frame, tmp_path))
    assert data.preprocessor.categories["city"] == ["oslo", "paris", "rome"]  # index = position + 1
    codes = torch.cat([data.splits[s].x[:, -1] for s in ("train", "val", "test")])
    expected = [{"paris": 2, "rome": 3, "oslo": 1}[c] for c in table().city]
    expected[9] = expected[10] = UNKNOWN
    assert codes.tolist() == expected
    frame.loc[0, "city"] = "tokyo"  # seen once in training: below min_category_count=2
    rare = load(write(frame, tmp_path, "rare.csv"), min_category_count=2)
    assert "tokyo" not in rare.preprocessor.categories["city"] and rare.splits["train"].x[0, -1] == UNKNOWN
    assert rare.encoder_inputs() == {"categorical": [{"name": "city", "cardinality": 4}]}


def test_class_labels_map_to_indices_and_back_through_the_saved_json(tmp_path):
    data = load(write(table(), tmp_path))
    mood = data.preprocessor.target("mood")
    assert mood.classes == ["glad", "ok", "sad"]  # sorted text labels
    y = data.splits["train"].y["mood"]
    assert y.dtype == torch.int64 and y.tolist() == [2, 1, 0, 2, 1, 0, 2, 1]  # sad, ok, glad, ...
    data.save_preprocessing(tmp_path)
    again = TablePreprocessor.load(tmp_path)  # a run folder or the file itself
    assert again.to_dict() == data.preprocessor.to_dict()
    assert list(again.decode("mood", y.numpy())) == list(table().mood[:8])
    dwell = again.decode("dwell", data.splits["train"].y["dwell"].numpy())  # standardised -> seconds
    assert dwell == pytest.approx(10.0 * np.arange(8))
    new = table().drop(columns=["clicked", "dwell", "mood"])  # a file to predict on: features only
    assert np.array_equal(again.features(new.iloc[:8], "new.csv"), data.splits["train"].x.numpy())
    assert json.loads((tmp_path / "preprocessing.json").read_text())["targets"][2]["classes"] == mood.classes


def test_numeric_labels_and_declared_classes(tmp_path):
    frame = table()
    frame["mood"] = np.array([3, 7, 9])[np.arange(12) % 3]  # arbitrary integers -> 0, 1, 2
    frame["clicked"] = np.where(np.arange(12) % 2, "yes", "no")
    data = load(write(frame, tmp_path))
    assert data.preprocessor.target("mood").classes == [3, 7, 9]
    assert data.splits["train"].y["mood"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert data.preprocessor.target("clicked").classes == ["no", "yes"]
    declared = TASKS | {"clicked": {"kind": "binary", "classes": ["yes", "no"]}}  # "no" is the positive class
    flipped = load(write(frame, tmp_path), tasks=declared)
    assert flipped.splits["train"].y["clicked"].tolist() == [1.0, 0.0] * 4


def test_regression_targets_standardised_with_metrics_in_original_units(tmp_path):
    from mtlrun.trainer.evaluate import evaluate

    data = load(write(table(), tmp_path))
    tasks = fit_tasks(build_tasks(TASKS), data)
    mean, std = 35.0, float(np.std(10.0 * np.arange(8)))
    assert tasks["dwell"].target_scale == pytest.approx((mean, std))

    class Constant(torch.nn.Module):  # predicts 0 in standardised units: the training mean in seconds
        def forward(self, batch):
            n = batch["x"].shape[0]
            return {"clicked": torch.zeros(n), "dwell": torch.zeros(n), "mood": torch.zeros(n, 3)}

        def diagnostics(self):
            return {}

    model = Constant()
    model.dummy = torch.nn.Parameter(torch.zeros(1))
    results = evaluate(model, data, "val", {"dwell": tasks["dwell"]}, batch_size=8)
    dwell_val = np.array([80.0, 90.0])  # rows 8 and 9
    assert results["dwell"]["mae"] == pytest.approx(np.abs(dwell_val - mean).mean())  # 50 seconds
    assert results["dwell"]["rmse"] == pytest.approx(math.sqrt(((dwell_val - mean) ** 2).mean()))
    assert results["dwell"]["loss"] == pytest.approx((((dwell_val - mean) / std) ** 2).mean())  # standardised


def test_pos_weight_auto_is_negatives_over_positives_of_the_labelled_training_rows():
    cfg = compose_cfg(["data=tabular", "data.n_train=400"])
    tasks = build_tasks({"click": {"kind": "binary", "pos_weight": "auto"}, "purchase": {"kind": "binary"}})
    cfg.data.numeric, cfg.data.categorical = ["item_price"], ["device"]
    data = setup_data(cfg, tasks, torch.device("cpu"))
    fitted = fit_tasks(tasks, data)
    click = data.splits["train"].y["click"]
    assert len(click) == 400
    positives = int(click.sum())
    assert fitted["click"].positive_weight == pytest.approx((400 - positives) / positives)
    assert tasks["click"].pos_weight == "auto"  # the declared task is left as the config says
    assert fitted["purchase"].positive_weight is None and "purchase" in data.splits["train"].mask


def test_random_split_separate_files_and_parquet(tmp_path):
    frame = table(40).drop(columns=["split"])
    random = load(write(frame, tmp_path), split_column=None, fractions=[0.5, 0.25, 0.25], seed=3)
    assert random.sizes() == {"train": 20, "val": 10, "test": 10}
    again = load(write(frame, tmp_path), split_column=None, fractions=[0.5, 0.25, 0.25], seed=3)
    assert torch.equal(random.splits["val"].x, again.splits["val"].x)
    parts = {
        s: write(frame.iloc[r], tmp_path, f"{s}.parquet")
        for s, r in [("tr", slice(0, 30)), ("va", slice(30, 35)), ("te", slice(35, 40))]
    }
    files = load(parts["tr"], split_column=None, val_path=str(parts["va"]), test_path=str(parts["te"]))
    assert files.sizes() == {"train": 30, "val": 5, "test": 5}
    capped = load(
        parts["tr"], split_column=None, val_path=str(parts["va"]), test_path=str(parts["te"]), n_train=7
    )
    assert capped.sizes()["train"] == 7


def test_masks_and_weights_reach_the_batches(tmp_path):
    frame = table()
    frame["clicked"] = frame.clicked.astype(float)
    frame.loc[[0, 3], "clicked"] = np.nan
    frame["w"] = np.arange(12) / 4
    data = load(write(frame, tmp_path), weight="w")
    train = data.splits["train"]
    assert train.mask["clicked"].tolist() == [False, True, True, False, True, True, True, True]
    assert train.y["clicked"][0].item() == 0.0  # a finite placeholder where unlabelled
    assert "dwell" not in train.mask  # fully labelled targets carry no mask
    batch = next(data.batches("train", 4))
    assert batch["mask"]["clicked"].tolist() == [False, True, True, False]
    assert batch["weight"].tolist() == [0.0, 0.25, 0.5, 0.75]


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (None, {"path": "nope/missing.csv"}, r"no file .*missing\.csv.*fix the path"),
        (
            None,
            {"numeric": ["agee"]},
            r"no column 'agee' \(data\.numeric\); did you mean 'age'\? the file has: age, city",
        ),
        (
            lambda f: f.assign(mood=np.arange(12) % 5),
            {},
            r"5 distinct labels .*outside the declared classes \(num_classes=3\)",
        ),
        (
            lambda f: f.assign(clicked=np.arange(12) % 3),
            {},
            r"binary target has 3 distinct values .*\(0, 1, 2\)",
        ),
        (
            lambda f: f.assign(age=["21"] * 5 + ["twenty"] + ["22"] * 6),
            {},
            r"column 'age' must be numeric, but row 5 \(line 7\) of .*t\.csv holds 'twenty'",
        ),
        (lambda f: f.assign(split=["train"] * 10 + ["test"] * 2), {}, r"the val split is empty"),
        (
            lambda f: f.assign(dwell=[np.nan] * 8 + [1.0] * 4),
            {},
            r"task 'dwell' \(column 'dwell'\): no labelled rows in the training split",
        ),
        (
            lambda f: f.assign(split=["train"] * 8 + ["valid"] * 2 + ["test"] * 2),
            {},
            r"split column 'split' holds 'valid' at row 8 .*one of train, val, test",
        ),
        (
            lambda f: f.assign(mood=["sad", "ok"] * 4 + ["glad", "sad", "ok", "ok"]),
            {},
            r"label 'glad' at row 8 .*is not one of the classes \['ok', 'sad'\]",
        ),
    ],
    ids=[
        "missing-file",
        "missing-column",
        "too-many-classes",
        "binary-3-values",
        "non-numeric",
        "empty-split",
        "no-train-labels",
        "bad-split-value",
        "unseen-label",
    ],
)
def test_bad_input_is_a_data_error_that_names_the_problem(tmp_path, change, options, message):
    frame = table() if change is None else change(table())
    options = dict(options)
    path = options.pop("path", None) or write(frame, tmp_path)
    with pytest.raises(DataError, match=message):
        load(path, **options)


def test_bad_config_is_a_config_error(tmp_path):
    path = write(table(), tmp_path)
    with pytest.raises(ConfigError, match="both a feature"):
        load(path, numeric=["age", "dwell"])
    with pytest.raises(ConfigError, match="fractions"):
        load(path, split_column=None, fractions=[0.5, 0.5])
    with pytest.raises(ConfigError, match="give both"):
        load(path, split_column=None, val_path=str(path))
    with pytest.raises(ConfigError, match="pos_weight"):
        build_tasks({"t": {"kind": "regression", "pos_weight": 2.0}})


# ----------------------------------------------------------------------------------- the shipped example


def test_the_committed_example_is_what_the_script_writes(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_example", ROOT / "scripts" / "make_tabular_example.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr("sys.argv", ["make_tabular_example.py", "--out", str(tmp_path)])
    script.main()
    for name in ("feed.csv", "feed_new.csv"):
        assert (tmp_path / name).read_bytes() == (
            ROOT / "mtlrun" / "examples" / "feed" / name
        ).read_bytes(), name
    assert (ROOT / "mtlrun" / "examples" / "feed" / "feed.csv").stat().st_size < 1_000_000


def test_from_frames_builds_a_table_whose_columns_a_loader_knows():
    frame = table()
    frames = {s: frame[frame.split == s].drop(columns=["split"]) for s in ("train", "val", "test")}
    data = TabularData.from_frames(frames, build_tasks(TASKS), numeric=["age"], categorical=["city"])
    assert data.sizes() == {"train": 8, "val": 2, "test": 2}
    assert data.preprocessor.numeric_stats["age"].mean == pytest.approx(23.5)
    frames["val"] = frames["val"].iloc[:0]
    with pytest.raises(DataError, match="val split: the val split is empty"):
        TabularData.from_frames(frames, build_tasks(TASKS), numeric=["age"])


# ----------------------------------------------------------------------------------- unreadable table files


def write_raw(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def write_parquet_columns(folder: Path, name: str, names: list[str], rows: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / name
    pq.write_table(pa.table([pa.array([1.0] * rows) for _ in names], names=names), path)
    return path


CSV_HEADER = ",".join(table().columns)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: write_raw(d, "t.csv", b""), r"t\.csv: the file is empty \(0 bytes\)"),
        (lambda d: write_raw(d, "t.parquet", b""), r"t\.parquet: the file is empty \(0 bytes\)"),
        (lambda d: write_raw(d, "t.csv", "\n \n\n"), r"t\.csv: the file holds only blank lines"),
        (lambda d: write_raw(d, "t.csv", CSV_HEADER + "\n"), r"t\.csv: the table has a header but no rows"),
        (
            lambda d: write(table().iloc[:0], d, "t.parquet"),
            r"t\.parquet: the table has columns but no rows",
        ),
        (  # a repeated column the config does not even read is refused: which one is meant is unknown
            lambda d: write_raw(d, "t.csv", table().to_csv(index=False).replace("split\n", "age\n", 1)),
            r"t\.csv: column 'age' appears 2 times in the header \(columns 1, 6\)",
        ),
        (
            lambda d: write_parquet_columns(d, "t.parquet", ["age", "city", "age"]),
            r"t\.parquet: column 'age' appears 2 times in the header \(columns 1, 3\)",
        ),
        (
            lambda d: write_raw(d, "t.csv", b"\x89PNG\r\n\x1a\n" + bytes(64)),
            r"t\.csv: .* it holds a PNG image",
        ),
        (lambda d: write(table(), d, "t.parquet").rename(d / "t.csv"), r"a Parquet file"),
        (
            lambda d: write_raw(d, "t.csv", "âge,ville\n1,2\n".encode("latin-1")),
            r"not UTF-8 text \(at byte 0\)",
        ),
        (
            lambda d: write_raw(d, "t.parquet", CSV_HEADER + "\n1,2\n"),
            r"t\.parquet: cannot read it as Parquet",
        ),
    ],
    ids=[
        "empty-csv",
        "empty-parquet",
        "blank-csv",
        "header-only-csv",
        "no-rows-parquet",
        "repeated-csv-column",
        "repeated-parquet-column",
        "png-as-csv",
        "parquet-as-csv",
        "latin-1-csv",
        "csv-as-parquet",
    ],
)
def test_an_unreadable_table_file_is_a_data_error_that_names_it(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError, match=message) as error:
        load(path)
    assert str(path) in str(error.value)


def test_a_missing_column_suggests_only_a_close_real_column(tmp_path):
    path = write(table().assign(user_segment="a", level=1), tmp_path)
    for asked in ("Age", "agee", "AGE "):
        with pytest.raises(DataError, match=f"no column '{asked}' \\(data.numeric\\); did you mean 'age'\\?"):
            load(path, numeric=[asked])
    for far in ("user_age", "label", "segment"):  # alike in letters only: user_segment, level are not meant
        with pytest.raises(DataError, match=f"no column '{far}' \\(data.numeric\\); the file has") as error:
            load(path, numeric=[far])
        assert "did you mean" not in str(error.value)


@pytest.mark.parametrize(
    ("change", "options", "shown"),
    [
        (lambda f: f.assign(clicked=[0, 1] * 4 + [1, 0, 2, 0]), {}, "label 2 at row 10"),
        (lambda f: f.assign(mood=[0, 1, 2] * 3 + [0, 5, 1]), {}, "label 5 at row 10"),
        (lambda f: f.assign(w=[1.0] * 9 + [-1.5, 1.0, 1.0]), {"weight": "w"}, "holds -1.5; fill it"),
        (lambda f: f.assign(split=[1] * 8 + [2, 2, 3, 4]), {}, "split column 'split' holds 1 at row 0"),
    ],
    ids=["binary-label", "multiclass-label", "weight", "split-value"],
)
def test_messages_show_plain_values_not_numpy_reprs(tmp_path, change, options, shown):
    with pytest.raises(DataError) as error:
        load(write(change(table()), tmp_path), **options)
    assert shown in str(error.value) and "np." not in str(error.value)
