"""A run interrupted after epoch 2 and resumed from its checkpoint ends exactly where an uninterrupted run
ends: same metrics table, same selected epoch and results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from mtlrun import schema
from mtlrun.cli import config_dir
from mtlrun.errors import ConfigError
from mtlrun.trainer import checkpoint, runner

OVERRIDES = ["debug=smoke", "trainer.epochs=4", "weighting=uncertainty", "heads.dropout=0.1"]


def make_cfg(*extra: str):
    schema.register()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=[*OVERRIDES, *extra])


def without_timing(table: pd.DataFrame) -> pd.DataFrame:
    """Every row but the wall-clock ones (time per step), which no two runs share."""
    return table[table.metric != "time_per_step_s"].reset_index(drop=True)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = tmp_path / "full"
    full.mkdir()
    runner.run(make_cfg(), full)

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    save = checkpoint.save

    def save_then_stop(path, model, weighting, optimizer, scheduler, shuffle, state):
        save(path, model, weighting, optimizer, scheduler, shuffle, state)
        if state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        runner.run(make_cfg(), interrupted)
    monkeypatch.setattr(checkpoint, "save", save)
    assert json.loads((interrupted / "summary.json").read_text())["status"] == "interrupted"

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    summary = runner.run(make_cfg(f"resume={interrupted}"), resumed)

    expected = without_timing(pd.read_csv(full / "metrics.csv"))
    pd.testing.assert_frame_equal(without_timing(pd.read_csv(resumed / "metrics.csv")), expected)
    reference = json.loads((full / "summary.json").read_text())
    assert summary["best_epoch"] == reference["best_epoch"]
    assert summary["test"] == reference["test"]
    assert summary["weighting_state"] == reference["weighting_state"]
    assert summary["steps"] == reference["steps"] == 12


def test_resume_from_a_mismatched_run_is_a_config_error(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    runner.run(make_cfg("trainer.epochs=1"), first)
    second = tmp_path / "second"
    second.mkdir()
    with pytest.raises(ConfigError, match="does not fit this config"):
        runner.run(make_cfg(f"resume={first}", "architecture=single_task"), second)


def test_resume_from_a_missing_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        runner.run(make_cfg(f"resume={tmp_path / 'nowhere'}"), tmp_path)


WEIGHTING_OPTIONS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "weighting").glob("*.yaml"))


@pytest.mark.parametrize("weighting", WEIGHTING_OPTIONS)
def test_every_weighting_method_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weighting: str
) -> None:
    """Method state (loss histories, logits, EMA targets, learned weights, RNG draws) survives a resume."""
    overrides = ["debug=smoke", "data=kendall_toy", "trainer.epochs=5", f"weighting={weighting}"]

    def cfg(*extra: str):
        schema.register()
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("config", overrides=[*overrides, *extra])

    save = checkpoint.save

    def save_then_stop(path, *args):
        save(path, *args)
        if args[-1].epoch == 3:
            raise KeyboardInterrupt

    for name in ("full", "interrupted", "resumed"):
        (tmp_path / name).mkdir()
    runner.run(cfg(), tmp_path / "full")
    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg(), tmp_path / "interrupted")
    monkeypatch.setattr(checkpoint, "save", save)
    runner.run(cfg(f"resume={tmp_path / 'interrupted'}"), tmp_path / "resumed")
    full, resumed = (
        without_timing(pd.read_csv(tmp_path / name / "metrics.csv")) for name in ("full", "resumed")
    )
    pd.testing.assert_frame_equal(resumed, full)
