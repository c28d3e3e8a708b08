"""The runner's side of the tracker contract (mtlrun/loggers/base.py), with a tracker that records its calls:
it is started once with the run's description, sees exactly the rows of metrics.csv, and is told how the run
ended; a tracker that raises is left out with a warning and the run goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_cfg

from mtlrun.errors import TrainingError
from mtlrun.loggers import Logger
from mtlrun.trainer import runner

CALLS: list[tuple] = []  # what the Recorder of the current test was told


class Recorder(Logger):
    def __init__(self, run_dir: Path) -> None:
        CALLS.append(("init", run_dir))

    def start(self, run):
        CALLS.append(("start", run))

    def log_rows(self, epoch, step, split, rows):
        CALLS.extend(("row", epoch, step, split, t, m, v) for t, ms in rows.items() for m, v in ms.items())

    def finish(self, status, summary, artifacts):
        CALLS.append(("finish", status, dict(summary), list(artifacts)))


class Broken(Logger):
    def __init__(self, run_dir: Path) -> None:
        pass

    def log_rows(self, epoch, step, split, rows):
        raise RuntimeError("the tracking server went away")


def with_trackers(*names: str) -> list[str]:
    targets = {"rec": f"{__name__}.Recorder", "broken": f"{__name__}.Broken"}
    return [f"+logger.{name}._target_={targets[name]}" for name in names]


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()


def test_a_tracker_is_started_once_sees_the_rows_of_metrics_csv_and_hears_the_end(tmp_path: Path) -> None:
    cfg = compose_cfg(["debug=smoke", "trainer.plots=true", *with_trackers("rec")])
    runner.run(cfg, tmp_path)
    kinds = [call[0] for call in CALLS]
    assert kinds[:2] == ["init", "start"] and kinds[-1] == "finish" and kinds.count("start") == 1
    run = CALLS[1][1]
    assert run.folder == tmp_path and run.config["trainer"]["epochs"] == 2 and not run.resumed
    table = pd.read_csv(tmp_path / "metrics.csv")
    written = {(int(r.epoch), int(r.step), r.split, r.task, r.metric): r.value for r in table.itertuples()}
    seen = {call[1:6]: call[6] for call in CALLS if call[0] == "row"}
    assert seen == pytest.approx(written)  # every row, and only those
    assert {key[4] for key in written if key[3] == "all"} >= {"time_per_step_s", "lr/shared", "lr/heads"}
    _, status, summary, artifacts = CALLS[-1]
    assert status == "completed" and summary["status"] == "completed"
    assert tmp_path / "curves.png" in artifacts  # drawn before the end is told


def test_a_failed_run_tells_its_trackers_it_failed(tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["debug=smoke", "optim.optimizer.lr=1e12", "trainer.limit_train_batches=20", *with_trackers("rec")]
    )
    with pytest.raises(TrainingError):
        runner.run(cfg, tmp_path)
    _, status, summary, _ = CALLS[-1]
    assert status == "failed" and "TrainingError" in summary["error"]


def test_a_tracker_that_raises_is_left_out_and_the_run_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_cfg(["debug=smoke", *with_trackers("broken", "rec")])
    with caplog.at_level(logging.WARNING, logger="mtlrun"):
        summary = runner.run(cfg, tmp_path)
    assert summary["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if "logger broken failed" in r.getMessage()]
    assert len(warnings) == 1 and "the tracking server went away" in warnings[0]  # once, not every epoch
    assert CALLS[-1][1] == "completed"  # the other tracker still hears everything


def test_a_resume_may_change_the_trackers(tmp_path: Path) -> None:
    from mtlrun.resume import continued_config

    runner.run(compose_cfg(["debug=smoke"]), tmp_path)
    continued = continued_config(compose_cfg([f"resume={tmp_path}", *with_trackers("rec")]), compose_cfg([]))
    assert "rec" in continued.logger
