"""The TensorBoard and MLflow trackers with the real packages, read back with their own readers
(TensorBoard's EventAccumulator, MLflow's client): every metrics.csv value is there under its name and
step, the config and the overrides are kept, and the run's end is recorded as it happened.

One real `mtlrun -m` sweep of two jobs serves most checks (each mtlrun process costs seconds); failed,
interrupted and resumed runs go through the runner in process; a missing package is a one-line error.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_cfg
from omegaconf import OmegaConf

from mtlrun import signals
from mtlrun.errors import ConfigError, TrainingError
from mtlrun.loggers import RunInfo, build_loggers
from mtlrun.loggers.base import flat_config
from mtlrun.trainer import runner

# `make test` installs both (extras tensorboard, mlflow); a bare `pytest` without them skips this file, saying so
pytest.importorskip(
    "tensorboard", reason="the tensorboard extra is not installed: pip install -e '.[tensorboard]'"
)
pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mtlrun.loggers.mlflow import RUN_ID_FILE, MLflowLogger, metric_name, param_value  # noqa: E402
from mtlrun.loggers.tensorboard import TensorBoardLogger  # noqa: E402

BOTH = "logger=[tensorboard,mlflow]"


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def csv_rows(folder: Path) -> list[tuple[str, int, float]]:
    """(``<split>/<task>/<metric>``, step, value) of every row of the run's metrics.csv."""
    table = pd.read_csv(folder / "metrics.csv")
    return [(f"{r.split}/{r.task}/{r.metric}", int(r.step), float(r.value)) for r in table.itertuples()]


def assert_tensorboard_holds_metrics_csv(folder: Path) -> EventAccumulator:
    acc = events(folder)
    rows = csv_rows(folder)
    scalars = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"] if not tag.startswith("best/")}
    assert set(scalars) == {tag for tag, _, _ in rows}
    assert sum(len(v) for v in scalars.values()) == len(rows)  # each row once
    held = {(tag, e.step): e.value for tag, es in scalars.items() for e in es}
    for tag, step, value in rows:  # event files keep float32
        assert held[tag, step] == float(np.float32(value)), (tag, step)
    return acc


def assert_mlflow_holds_metrics_csv(client: MlflowClient, run_id: str, folder: Path) -> None:
    rows = csv_rows(folder)
    histories: dict[str, dict[int, float]] = {}
    for tag, step, value in rows:
        key = metric_name(tag)
        if key not in histories:
            history = client.get_metric_history(run_id, key)
            histories[key] = {m.step: m.value for m in history}
            assert len(history) == len(histories[key]), key  # one value per step
        assert histories[key][step] == value, (key, step)
    assert sum(len(h) for h in histories.values()) == len(rows)


# ------------------------------------------------------------------------------------ one real sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """`mtlrun -m` with both trackers and seeds 0 and 1, started in its own folder, the MLflow store left at
    its default (outputs/mlflow.db there); returns that folder."""
    home = tmp_path_factory.mktemp("trackers")
    result = subprocess.run(
        [sys.executable, "-m", "mtlrun", "-m", "debug=smoke", BOTH, "seed=0,1", "hydra.sweep.dir=sweep"],
        capture_output=True,
        text=True,
        cwd=home,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed in" not in result.stdout + result.stderr  # no tracker was left out
    return home


def test_tensorboard_event_files_hold_every_row_of_each_job(sweep: Path) -> None:
    for job in ("0", "1"):
        folder = sweep / "sweep" / job
        assert list(folder.glob("events.out.tfevents.*")), "event files go into the run folder"
        acc = assert_tensorboard_holds_metrics_csv(folder)
        config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"seed: {job}" in config and "epochs: 2" in config
        status = acc.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode()
        assert status == "completed"
        summary = json.loads((folder / "summary.json").read_text())
        best = acc.Scalars("best/test/left/accuracy")
        assert [(e.step, e.value) for e in best] == [
            (6, float(np.float32(summary["test"]["left"]["accuracy"])))
        ]
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_mlflow_sweep_is_one_experiment_with_a_run_per_job(sweep: Path) -> None:
    client = MlflowClient(f"sqlite:///{sweep}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name("mtlrun/sweep")  # the sweep folder, from where it started
    assert experiment is not None
    assert experiment.artifact_location == (sweep / "outputs" / "mlartifacts").as_uri()
    runs = {r.data.tags["override.seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]
    for seed, run in runs.items():
        folder = sweep / "sweep" / seed
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert (folder / RUN_ID_FILE).read_text().strip() == run_id
        tags = run.data.tags
        assert tags["override.debug"] == "smoke" and tags["override.logger"] == "[tensorboard,mlflow]"
        assert tags["mtlrun.folder"] == str(folder.resolve()) and tags["mtlrun.job"] == seed
        assert tags["mlflow.runName"] == f"#{seed} debug=smoke seed={seed}"
        config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
        expected = {key: param_value(value) for key, value in flat_config(config).items()}
        assert run.data.params == expected  # the resolved config, flattened
        assert run.data.params["trainer.epochs"] == "2" and run.data.params["seed"] == seed
        assert_mlflow_holds_metrics_csv(client, run_id, folder)
        summary = json.loads((folder / "summary.json").read_text())
        assert run.data.metrics["best/test/left/accuracy"] == summary["test"]["left"]["accuracy"]
        assert run.data.metrics["best/val/sum/mae"] == summary["val"]["sum"]["mae"]
        assert run.data.metrics["best/epoch"] == summary["best_epoch"]
        assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "summary.json"}


# ------------------------------------------------------------------------------ runs through the runner


def both_loggers(tmp_path: Path) -> list[str]:
    return [BOTH, f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]


def only_run(tmp_path: Path) -> tuple[MlflowClient, object]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mtlrun")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def test_a_failed_run_is_marked_failed(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    overrides = ["debug=smoke", "optim.optimizer.lr=1e12"]
    with pytest.raises(TrainingError):
        runner.run(compose_cfg([*overrides, *both_loggers(tmp_path)]), folder)
    _, run = only_run(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["mtlrun.status"] == "failed" and "TrainingError" in run.data.tags["mtlrun.error"]
    acc = events(folder)
    assert acc.Tensors("status/text_summary")[0].tensor_proto.string_val[0].decode().startswith("failed")


@pytest.mark.slow  # two runs in process, about 2 s; the fast tier maps "interrupted" in a unit test below
def test_an_interrupted_run_is_killed_and_its_resume_continues_the_same_mlflow_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlrun.trainer import setup as setup_steps

    folder = tmp_path / "run"
    folder.mkdir()
    overrides = ["debug=smoke", "trainer.epochs=3", *both_loggers(tmp_path)]
    original, count = setup_steps.train_step, iter(range(1, 100))

    def step_then_signal(*args, **kwargs):
        result = original(*args, **kwargs)
        if next(count) == 4:  # in the middle of epoch 2
            signal.raise_signal(signal.SIGTERM)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(setup_steps, "train_step", step_then_signal)
        with pytest.raises(signals.Interrupted):
            runner.run(compose_cfg(overrides), folder)
    client, run = only_run(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["mtlrun.status"] == "interrupted"
    run_id = run.info.run_id

    runner.run(compose_cfg([*overrides, "trainer.plots=true", f"resume={folder}"]), folder)
    client, run = only_run(tmp_path)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert_mlflow_holds_metrics_csv(client, run_id, folder)
    assert {"curves.png", "summary.json", "config.yaml"} <= {a.path for a in client.list_artifacts(run_id)}
    assert_tensorboard_holds_metrics_csv(folder)


def test_tensorboard_drops_the_steps_a_resumed_run_trains_again(tmp_path: Path) -> None:
    """Rows written after the last checkpoint of a killed run are trained again: the newer values count."""
    first = TensorBoardLogger(tmp_path)
    first.start(RunInfo(tmp_path, "x", {"seed": 0}))
    for step, value in ((3, 1.0), (6, 2.0)):
        first.log_rows(1, step, "train", {"left": {"loss": value}})
    first.writer.flush()  # killed: no finish
    again = TensorBoardLogger(tmp_path)
    again.start(RunInfo(tmp_path, "x", {"seed": 0}, resumed_from=tmp_path, resumed_at_step=3))
    again.log_rows(2, 6, "train", {"left": {"loss": 5.0}})
    again.finish("completed", {"steps": 6}, [])
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("train/left/loss")] == [(3, 1.0), (6, 5.0)]


def test_a_tracker_that_starts_at_a_resume_first_gets_the_rows_metrics_csv_kept(tmp_path: Path) -> None:
    """Resumed into a new folder (or with the tracker added), the run's record starts with the kept rows."""
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,split,task,metric,value\n1,3,train,left,loss,0.5\n1,3,val,left,accuracy,0.25\n"
    )
    run = RunInfo(tmp_path, "x", {"seed": 0}, resumed_from=tmp_path / "elsewhere", resumed_at_step=3)
    trackers = [TensorBoardLogger(tmp_path), MLflowLogger(tmp_path, tracking_uri=f"{tmp_path}/m.db")]
    for tracker in trackers:
        tracker.start(run)
        tracker.log_rows(2, 6, "train", {"left": {"loss": 0.125}})
        tracker.finish("completed", {"steps": 6}, [])
    assert [(e.step, e.value) for e in events(tmp_path).Scalars("train/left/loss")] == [(3, 0.5), (6, 0.125)]
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    history = client.get_metric_history(trackers[1].run_id, "train/left/loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5), (6, 0.125)]
    assert [m.value for m in client.get_metric_history(trackers[1].run_id, "val/left/accuracy")] == [0.25]


def test_mlflow_names_statuses_and_limits(tmp_path: Path) -> None:
    logger = MLflowLogger(tmp_path, tracking_uri=str(tmp_path / "store.db"), experiment="mine")
    config = {"seed": 3, "note": "x" * 10_000, "heads": {"hidden": [64], "dropout": None}}
    logger.start(RunInfo(tmp_path, "trial", config, overrides=["+heads.dropout=0.1", "seed=3"]))
    logger.log_rows(1, 3, "train", {"a~b": {"grad_cosine": -0.25}, "all": {"lr/shared": 1e-3}})
    logger.finish("interrupted", {"steps": 3, "status": "interrupted"}, [])
    client = MlflowClient(f"sqlite:///{tmp_path}/store.db")
    run = client.get_run(logger.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "mine"
    assert run.info.status == "KILLED" and run.info.run_name == "trial +heads.dropout=0.1 seed=3"
    assert run.data.metrics == {"train/a-b/grad_cosine": -0.25, "train/all/lr/shared": 1e-3}
    assert run.data.params["heads.hidden"] == "[64]" and run.data.params["heads.dropout"] == "null"
    assert len(run.data.params["note"]) <= 6000 and run.data.params["note"].endswith("...")
    assert run.data.tags["override.heads.dropout"] == "0.1" and run.data.tags["override.seed"] == "3"


# ---------------------------------------------------------------------------------------- missing packages


@pytest.mark.parametrize(
    ("option", "modules", "message"),
    [
        (
            "tensorboard",
            ["torch.utils.tensorboard"],
            "logger=tensorboard needs the tensorboard package: pip install 'mtlrun[tensorboard]'",
        ),
        (
            "mlflow",
            ["mlflow", "mlflow.tracking"],
            "logger=mlflow needs the mlflow package: pip install 'mtlrun[mlflow]'",
        ),
    ],
)
def test_a_missing_package_is_one_line_with_the_pip_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, modules: list[str], message: str
) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(ConfigError) as error:
        build_loggers(compose_cfg([f"logger={option}"]).logger, tmp_path)
    assert str(error.value) == message


def test_mtlrun_imports_no_tracker_package_until_one_is_chosen() -> None:
    code = (
        "import sys, mtlrun.cli, mtlrun.loggers\n"  # what the runner imports of the trackers
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'mlflow'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
