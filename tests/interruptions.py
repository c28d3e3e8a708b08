"""Runs stopped by a real signal after a chosen training step, then resumed: shared by the resume tests of the
runner, the task affinity and the regularisers.

The process sends itself the signal right after the step; the runner's handler stops the run at the next step
boundary with a checkpoint, as it does for a signal from outside.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_cfg

from mtlrun import signals
from mtlrun.trainer import runner
from mtlrun.trainer import setup as setup_steps  # where the loop's train_step is looked up


def without_timing(table: pd.DataFrame) -> pd.DataFrame:
    """Every row but the wall-clock ones (time per step), which no two runs share."""
    return table[table.metric != "time_per_step_s"].reset_index(drop=True)


def metrics(folder: Path) -> pd.DataFrame:
    return without_timing(pd.read_csv(folder / "metrics.csv"))


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def signal_after_step(monkeypatch: pytest.MonkeyPatch, step: int, signum: int = signal.SIGTERM) -> None:
    """The process sends itself ``signum`` right after training step ``step`` (0: during setup)."""
    original = setup_steps.train_step
    count = itertools.count(1)
    if step == 0:
        setup = runner.setup

        def setup_then_signal(cfg):
            built = setup(cfg)
            os.kill(os.getpid(), signum)
            return built

        monkeypatch.setattr(runner, "setup", setup_then_signal)

    def step_then_signal(*args, **kwargs):
        result = original(*args, **kwargs)
        if next(count) == step:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(setup_steps, "train_step", step_then_signal)


def interrupted_and_resumed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    stop_after: int,
    stopped: Callable[[Path], None] = lambda folder: None,
) -> tuple[Path, Path]:
    """An uninterrupted run and one stopped after step ``stop_after`` then resumed in its own folder;
    ``stopped`` sees the stopped run's folder before the resume."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir()
    resumed.mkdir()
    runner.run(compose_cfg(overrides), full)
    with monkeypatch.context() as patch:
        signal_after_step(patch, stop_after)
        with pytest.raises(signals.Interrupted) as stop:
            runner.run(compose_cfg(overrides), resumed)
    assert stop.value.signum == signal.SIGTERM and not stop.value.at_once
    state = summary(resumed)
    assert state["status"] == "interrupted" and state["signal"] == "SIGTERM"
    assert (resumed / "checkpoint.pt").is_file()
    stopped(resumed)
    runner.run(compose_cfg([*overrides, f"resume={resumed}"]), resumed)
    return full, resumed
