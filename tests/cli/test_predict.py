"""`mtlrun predict` (mtlrun/predict.py): a smoke run trained on the example feed predicts feed_new.csv; the
table's shape, columns and value ranges; the numbers against a forward pass recomputed here from the weights
file, the saved preprocessing and the decoding by hand; the `last` checkpoint; Parquet; every error case
(one `error:` line, exit code 1); one real `mtlrun predict` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_objects, compose_cfg

from mtlrun import cli, predict
from mtlrun.data.preprocess import TablePreprocessor
from mtlrun.data.tabular import transform_file
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.trainer.runner import run

ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "mtlrun" / "examples" / "feed" / "feed.csv"
NEW = ROOT / "mtlrun" / "examples" / "feed" / "feed_new.csv"
CLASSES = ["hide", "like", "none", "share"]  # the reaction labels, sorted (preprocessing.json)
COLUMNS = ["impression_id", "click", "purchase", "dwell_seconds", "reaction"] + [
    f"reaction_p_{label}" for label in CLASSES
]


def training_cfg():
    cfg = compose_cfg(["experiment=tabular_example", "debug=smoke", f"data.path={FEED}"])
    cfg.trainer.device = "cpu"
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A smoke run (2 epochs x 3 steps) of the example preset: its folder."""
    folder = tmp_path_factory.mktemp("run")
    assert run(training_cfg(), folder)["status"] == "completed"
    return folder


@pytest.fixture(scope="module")
def reference(trained: Path):
    """expected(weights_file) -> the prediction table computed here, independently of mtlrun.predict: the
    model built from the training data (not from the run folder), the weights loaded by hand, feed_new.csv
    transformed with the saved preprocessing, sigmoid / softmax / the inverse standardisation by hand."""
    model = build_objects(training_cfg()).model.eval()
    pre = TablePreprocessor.load(trained)
    x, frame = transform_file(pre, str(NEW), keep=["impression_id"])
    dwell = pre.target("dwell_seconds")
    # click trains with pos_weight=auto: n_neg / n_pos of the training split's clicks, recorded in the summary;
    # it must be near the whole file's ratio (the split is a random 80 %)
    click_w = json.loads((trained / "summary.json").read_text())["tasks"]["click"]["pos_weight"]
    clicks = pd.read_csv(FEED).click
    assert click_w == pytest.approx((clicks == 0).sum() / (clicks == 1).sum(), rel=0.1)

    def expected(weights: Path) -> pd.DataFrame:
        model.load_state_dict(torch.load(weights, weights_only=True)["model"])
        with torch.no_grad():
            out = {k: v.double().numpy() for k, v in model({"x": x}).items()}
        logits = out["reaction"]
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        table = {
            "impression_id": frame.impression_id.to_numpy(),
            # the example trains click with pos_weight=auto (w = n_neg / n_pos): probabilities undo log w
            "click": 1 / (1 + np.exp(-(out["click"].reshape(-1) - np.log(click_w)))),
            "purchase": 1 / (1 + np.exp(-out["purchase"].reshape(-1))),
            "dwell_seconds": out["dwell_seconds"].reshape(-1) * dwell.std + dwell.mean,
            "reaction": np.array(CLASSES)[probs.argmax(1)],
        }
        return pd.DataFrame(table | {f"reaction_p_{c}": probs[:, i] for i, c in enumerate(CLASSES)})

    return expected


def check_equal(table: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(table.columns) == list(expected.columns)
    assert (table.reaction.to_numpy() == expected.reaction.to_numpy()).all()
    assert (table.impression_id.to_numpy() == expected.impression_id.to_numpy()).all()
    numbers = [c for c in expected.columns if c not in ("reaction", "impression_id")]
    np.testing.assert_allclose(table[numbers].to_numpy(float), expected[numbers].to_numpy(float), rtol=1e-5)


def predict_ok(*args: str, capsys: pytest.CaptureFixture) -> str:
    assert predict.main(list(args)) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def copy_run(trained: Path, folder: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("predictions", *drop))
    return folder


# ----------------------------------------------------------------------------------------- end to end


def test_the_table_has_one_row_per_input_row_and_sane_values(trained, reference, tmp_path, capsys) -> None:
    out = tmp_path / "p.csv"
    printed = predict_ok(
        f"run={trained}", f"data.path={NEW}", "keep=[impression_id]", f"out={out}", capsys=capsys
    )
    assert f"wrote 500 rows to {out}" in printed
    table = pd.read_csv(out)
    assert table.shape == (500, 9) and list(table.columns) == COLUMNS
    assert table.impression_id.tolist() == list(range(6000, 6500))  # feed_new's ids, in file order
    for column in ["click", "purchase", *COLUMNS[5:]]:
        assert table[column].between(0, 1).all(), column
    np.testing.assert_allclose(table[COLUMNS[5:]].sum(axis=1), 1, atol=1e-6)
    assert set(table.reaction) <= set(CLASSES)
    assert (table.reaction == table[COLUMNS[5:]].idxmax(axis=1).str.removeprefix("reaction_p_")).all()
    # dwell in seconds: the barely trained model predicts near the training mean (8.6 s, std 9.8 s), far
    # from the ~0 of the standardised scale it trains on
    mean, std = json.loads((trained / "summary.json").read_text())["tasks"]["dwell_seconds"]["target_scale"]
    assert abs(table.dwell_seconds.mean() - mean) < 0.5 * std and table.dwell_seconds.mean() > 4
    check_equal(table, reference(trained / "best_model.pt"))


def test_last_checkpoint_parquet_default_out_and_an_unfinished_run(trained, reference, tmp_path, capsys):
    folder = copy_run(trained, tmp_path / "run")
    # make best_model.pt differ from checkpoint.pt's model, so picking the wrong file fails
    state = torch.load(folder / "best_model.pt", weights_only=True)["model"]
    torch.save(
        {"model": {k: v + 0.05 if v.is_floating_point() else v for k, v in state.items()}},
        folder / "best_model.pt",
    )
    summary = json.loads((folder / "summary.json").read_text()) | {"status": "running"}
    (folder / "summary.json").write_text(json.dumps(summary))

    predict_ok(f"run={folder}", f"data.path={NEW}", "keep=impression_id", capsys=capsys)  # default out
    best = pd.read_csv(folder / "predictions" / "feed_new.csv")
    check_equal(best, reference(folder / "best_model.pt"))

    out = tmp_path / "p.parquet"
    assert (
        predict.main(
            [
                f"run={folder}",
                f"data.path={NEW}",
                "keep=[impression_id]",
                "checkpoint=last",
                f"out={out}",
                "batch_size=64",
                "device=cpu",
            ]
        )
        == 0
    )
    assert "warning: run" in capsys.readouterr().err  # status 'running' is reported, the table still written
    last = pd.read_parquet(out)
    check_equal(last, reference(folder / "checkpoint.pt"))
    assert not np.allclose(last.click, best.click)


def test_a_file_with_the_targets_predicts_the_same_and_ignores_them(trained, tmp_path, capsys) -> None:
    frame = pd.read_csv(FEED).head(50)
    frame.to_csv(tmp_path / "labelled.csv", index=False)
    frame.drop(columns=["click", "purchase", "dwell_seconds", "reaction"]).to_csv(
        tmp_path / "bare.csv", index=False
    )
    for name in ("labelled", "bare"):
        predict_ok(
            f"run={trained}",
            f"data.path={tmp_path / name}.csv",
            f"out={tmp_path / name}_p.csv",
            capsys=capsys,
        )
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "labelled_p.csv"), pd.read_csv(tmp_path / "bare_p.csv")
    )


def test_the_mtlrun_command_dispatches_to_predict(trained, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "p.csv"
    monkeypatch.setattr(
        sys, "argv", ["mtlrun", "predict", f"run={trained}", f"data.path={NEW}", f"out={out}"]
    )
    with pytest.raises(SystemExit) as exit_code:
        cli.main()
    assert exit_code.value.code == 0 and pd.read_csv(out).shape == (500, 8)  # no kept column


@pytest.mark.slow  # about 6 s on a busy 2-core machine, most of it importing torch
def test_one_real_mtlrun_predict_process(trained, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "p.csv"
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", "predict", f"run={trained}", f"data.path={NEW}", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote 500 rows to {out}") and pd.read_csv(out).shape == (500, 8)


# ----------------------------------------------------------------------------------------- errors


class NotWeights:
    """An object torch.load(weights_only=True) refuses to rebuild (it would run this module's code)."""


def bad_input(tmp_path: Path, change) -> Path:
    frame = pd.read_csv(NEW).head(20)
    change(frame)
    frame.to_csv(tmp_path / "bad.csv", index=False)
    return tmp_path / "bad.csv"


ERRORS = {
    "no run folder": (lambda run, tmp: [f"run={tmp / 'nope'}", f"data.path={NEW}"], "no such folder"),
    "no config": (lambda run, tmp: [f"run={tmp}", f"data.path={NEW}"], "no config.yaml in it"),
    "no best_model.pt": (
        lambda run, tmp: [f"run={copy_run(run, tmp / 'r', ('best_model.pt',))}", f"data.path={NEW}"],
        "no best_model.pt (checkpoint=best); use checkpoint=last",
    ),
    "no preprocessing.json": (
        lambda run, tmp: [f"run={copy_run(run, tmp / 'r', ('preprocessing.json',))}", f"data.path={NEW}"],
        "preprocessing.json: no such file",
    ),
    "no input file": (lambda run, tmp: [f"run={run}", f"data.path={tmp / 'new.csv'}"], "data.path: no file"),
    "no feature column": (
        lambda run, tmp: [f"run={run}", f"data.path={bad_input(tmp, lambda f: f.pop('item_price'))}"],
        "no column 'item_price' (a feature of the trained model)",
    ),
    "no keep column": (
        lambda run, tmp: [f"run={run}", f"data.path={NEW}", "keep=[impression]"],
        "no column 'impression' (keep); did you mean 'impression_id'?",
    ),
    "bad value": (
        lambda run, tmp: [
            f"run={run}",
            f"data.path={bad_input(tmp, lambda f: f.__setitem__('item_price', ['cheap'] * 20))}",
        ],
        "item_price",
    ),
    "keep clashes with a prediction": (
        lambda run, tmp: [f"run={run}", f"data.path={FEED}", "keep=[click]"],
        "keep: column 'click' has the name of a prediction column",
    ),
    "misspelled key": (
        lambda run, tmp: [f"run={run}", f"data.path={NEW}", "chekpoint=last"],
        "chekpoint: unknown key; did you mean 'checkpoint'?",
    ),
    "bad checkpoint": (
        lambda run, tmp: [f"run={run}", f"data.path={NEW}", "checkpoint=first"],
        "checkpoint: 'first' is not one of best, last",
    ),
    "bad out extension": (
        lambda run, tmp: [f"run={run}", f"data.path={NEW}", f"out={tmp / 'p.txt'}"],
        "unknown file type '.txt'",
    ),
    "no data.path": (lambda run, tmp: [f"run={run}"], "data.path: required"),
    "not key=value": (lambda run, tmp: [str(run)], "takes key=value arguments"),
    "bad batch_size": (
        lambda run, tmp: [f"run={run}", f"data.path={NEW}", "batch_size=0"],
        "batch_size: '0'",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_each_error_is_one_line_and_exit_code_1(case, trained, tmp_path, capsys) -> None:
    make_args, message = ERRORS[case]
    assert predict.main(make_args(trained, tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_run_without_input_files_cannot_predict(tmp_path, capsys) -> None:
    """A MultiDigits run has no file to replace: the data class's default new_input says so."""
    from omegaconf import OmegaConf

    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg([]), resolve=True))
    torch.save({"model": {}}, tmp_path / "best_model.pt")
    assert predict.main([f"run={tmp_path}", f"data.path={NEW}"]) == 1
    assert (
        "data set multidigits: `mtlrun predict` needs a run trained on file-based data"
        in capsys.readouterr().err
    )


def test_weights_are_loaded_without_running_code(trained, tmp_path, capsys) -> None:
    folder = copy_run(trained, tmp_path / "r")
    torch.save({"model": NotWeights()}, folder / "best_model.pt")
    assert predict.main([f"run={folder}", f"data.path={NEW}"]) == 1
    assert "best_model.pt: cannot load it (Weights only load failed" in capsys.readouterr().err
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, folder / "best_model.pt")
    assert predict.main([f"run={folder}", f"data.path={NEW}"]) == 1
    assert "the weights do not fit the model its config.yaml describes" in capsys.readouterr().err


def test_out_is_never_the_input_nor_an_existing_file(trained, tmp_path, monkeypatch, capsys) -> None:
    new = tmp_path / "new.csv"
    shutil.copy(NEW, new)
    (tmp_path / "link.csv").symlink_to(new)
    old = tmp_path / "old.csv"
    old.write_text("an earlier result\n")
    monkeypatch.chdir(tmp_path)
    refused = {
        f"out={new}": f"out={new}: is the input file data.path={new}, which the predictions would overwrite",
        "out=new.csv": "out=new.csv: is the input file",  # relative to the current directory
        "out=link.csv": "out=link.csv: is the input file",  # a symlink to it
        f"out={old}": f"out={old}: the file already exists, and mtlrun predict never overwrites a result",
    }
    for out, message in refused.items():
        assert predict.main([f"run={trained}", f"data.path={new}", out]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert new.read_bytes() == NEW.read_bytes() and old.read_text() == "an earlier result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "new.csv", "old.csv"]

    folder = copy_run(trained, tmp_path / "run")  # the default out, once written, is not written again
    predict_ok(f"run={folder}", f"data.path={new}", capsys=capsys)
    written = (folder / "predictions" / "new.csv").read_bytes()
    assert predict.main([f"run={folder}", f"data.path={new}", "keep=[impression_id]"]) == 1
    assert "predictions/new.csv: the file already exists" in capsys.readouterr().err
    assert (folder / "predictions" / "new.csv").read_bytes() == written


def test_write_table_creates_the_file_or_refuses(tmp_path) -> None:
    table = pd.DataFrame({"id": [1, 2], "click": [0.25, 0.5]})
    predict.write_table(table, tmp_path / "sub" / "p.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "sub" / "p.parquet"), table)
    out = tmp_path / "p.csv"
    predict.write_table(table, out)
    pd.testing.assert_frame_equal(pd.read_csv(out), table)
    with pytest.raises(ConfigError, match="p.csv: the file already exists"):  # appeared since the check
        predict.write_table(table.head(1), out)
    pd.testing.assert_frame_equal(pd.read_csv(out), table)


# ----------------------------------------------------------------------------------------- units


def test_columns_of_each_kind_by_hand() -> None:
    estimate = np.array([[0.2, 0.7, 0.1], [0.5, 0.25, 0.25]], dtype=np.float32)
    mood = Task("mood", "multiclass", "mood", num_classes=3, classes=["sad", "ok", "glad"])
    assert predict.task_columns(mood, estimate)["mood"].tolist() == ["ok", "sad"]
    assert list(predict.task_columns(mood, estimate)) == ["mood", "mood_p_sad", "mood_p_ok", "mood_p_glad"]
    digit = Task("digit", "multiclass", "digit", num_classes=3)  # no labels known: class indices
    assert predict.task_columns(digit, estimate)["digit"].tolist() == [1, 0]
    topics = Task("topics", "multilabel", "topics", columns=["sport", "tech", "food"])
    columns = predict.task_columns(topics, estimate)
    assert list(columns) == ["topics_p_sport", "topics_p_tech", "topics_p_food"]
    assert columns["topics_p_tech"].tolist() == pytest.approx([0.7, 0.25])
    dwell = Task("dwell", "regression", "dwell").with_fitted(target_scale=(10.0, 2.0))
    assert predict.task_columns(dwell, np.array([[0.5], [-1.0]]))["dwell"].tolist() == [11.0, 8.0]
    raw = Task("raw", "regression", "raw")  # not standardised: values as they are
    assert predict.task_columns(raw, np.array([[0.5]]))["raw"].tolist() == [0.5]
    click = Task("click", "binary", "click")
    assert predict.task_columns(click, np.array([[0.25]]))["click"].tolist() == [0.25]


def test_arguments() -> None:
    options = predict.parse_args(
        ["run=r", "data.path=f.csv", "keep=['id', b]", "batch_size=8", "out=o.parquet"]
    )
    assert (options.run, options.path, options.keep, options.batch_size) == (
        Path("r"),
        "f.csv",
        ["id", "b"],
        8,
    )
    assert (options.checkpoint, options.device, options.out) == ("best", "auto", Path("o.parquet"))
    assert predict.parse_list("a,b,a") == ["a", "b"] and predict.parse_list("[]") == []
    with pytest.raises(ConfigError, match="given twice"):
        predict.parse_args(["run=r", "run=s", "data.path=f.csv"])
    with pytest.raises(ConfigError, match="device: 'gpu' is not one of auto, cpu, cuda"):
        predict.parse_args(["run=r", "data.path=f.csv", "device=gpu"])


def test_help(capsys) -> None:
    assert predict.main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: mtlrun predict run=PATH data.path=FILE")
    assert all(f"  {key}=" in printed for key in predict.KEYS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictions_on_cuda_match_the_cpu(trained, tmp_path, capsys) -> None:
    tables = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.csv"
        predict_ok(f"run={trained}", f"data.path={NEW}", f"device={device}", f"out={out}", capsys=capsys)
        tables[device] = pd.read_csv(out)
    assert (tables["cpu"].reaction == tables["cuda"].reaction).mean() > 0.99  # near-ties may flip
    numbers = ["click", "purchase", "dwell_seconds", *COLUMNS[5:]]
    np.testing.assert_allclose(tables["cuda"][numbers], tables["cpu"][numbers], rtol=1e-3, atol=1e-4)
