"""A run stopped by a signal and resumed from its checkpoint ends exactly where an uninterrupted run ends
(same metrics table, same selected epoch and results), wherever it stopped: during setup, in the middle of an
epoch at an awkward step, or at an epoch's end; for every weighting method (with ``update_every`` and
gradient-cosine sampling off their defaults) and every architecture.

The signal is real: the process sends itself SIGTERM after a chosen training step, and the runner's handler
stops the run at the next step boundary. The CLI-level behaviour (kill -9, resume's config rules, folders
left untouched) is in tests/cli/test_faults.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
from conftest import architecture_overrides, compose_cfg, options
from hydra.utils import get_class
from interruptions import interrupted_and_resumed, metrics, summary

from mtlrun import signals
from mtlrun.errors import ConfigError
from mtlrun.trainer import runner
from mtlrun.trainer import setup as setup_steps  # where the loop's train_step is looked up

SMOKE = ["debug=smoke", "trainer.epochs=3"]  # 3 epochs x 3 steps


@pytest.mark.parametrize("stop_after", [0, 4, 6], ids=["during-setup", "mid-epoch", "epoch-end"])
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_after: int
) -> None:
    overrides = [*SMOKE, "weighting=uncertainty", "heads.dropout=0.1"]  # learnable weights, random dropout
    full, resumed = interrupted_and_resumed(tmp_path, monkeypatch, overrides, stop_after)
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))
    reference, result = summary(full), summary(resumed)
    assert result["status"] == "completed" and result["signal"] is None
    for key in ("best_epoch", "val", "test", "weighting_state", "steps", "backward_passes_per_step"):
        assert result[key] == reference[key], key
    assert result["steps"] == 9
    assert [r["step"] for r in result["resumes"]] == [stop_after]


def weighting_overrides(option: str) -> list[str]:
    """``update_every=4`` for methods that can reuse their weights, so a resume at step 5 falls between
    two updates; gradient cosines sampled every 3 steps (the engine's counters must survive)."""
    target = compose_cfg([f"weighting={option}"]).weighting._target_
    reuse = getattr(get_class(target), "direction_is_weighted_sum", False)
    return [
        f"weighting={option}",
        "trainer.grad_cosine_every=3",
        "trainer.grad_cosine_for_loss_based=true",
    ] + (["++weighting.update_every=4"] if reuse else [])


@pytest.mark.parametrize("weighting", options("weighting"))
def test_every_weighting_method_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weighting: str
) -> None:
    """Method state (loss histories, logits, learned weights, RNG draws) and the engine's step counter
    survive a resume at step 5, between two ``update_every`` updates and cosine samples."""
    overrides = [*SMOKE, "data=kendall_toy", "trainer.epochs=4", *weighting_overrides(weighting)]
    full, resumed = interrupted_and_resumed(tmp_path, monkeypatch, overrides, stop_after=5)
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))
    assert (metrics(full).metric == "grad_cosine").any()


@pytest.mark.parametrize("architecture", options("architecture"))
def test_every_architecture_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, architecture: str
) -> None:
    overrides = [*SMOKE, *architecture_overrides(architecture, "mmoe_synthetic"), "data.n_train=96"]
    full, resumed = interrupted_and_resumed(tmp_path, monkeypatch, overrides, stop_after=4)
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))


def test_a_second_signal_stops_at_once_and_resume_continues_from_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    full.mkdir()
    stopped.mkdir()
    runner.run(compose_cfg(SMOKE), full)
    original = setup_steps.train_step
    count = itertools.count(1)

    def two_signals_in_step_five(*args, **kwargs):
        if next(count) == 5:  # the second arrives before the step ends: nothing of step 5 is kept
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(setup_steps, "train_step", two_signals_in_step_five)
    monkeypatch.setattr(signals, "DUPLICATE_WITHIN_S", 0.0)  # a person's second Ctrl-C, not a duplicate
    with pytest.raises(signals.Interrupted) as stop:
        runner.run(compose_cfg(SMOKE), stopped)
    monkeypatch.setattr(setup_steps, "train_step", original)
    assert stop.value.at_once and stop.value.exit_code == 130
    assert summary(stopped)["status"] == "interrupted" and summary(stopped)["signal"] == "SIGINT"
    assert summary(stopped)["epochs_completed"] == 1  # the last checkpoint: end of epoch 1
    runner.run(compose_cfg([*SMOKE, f"resume={stopped}"]), stopped)
    pd.testing.assert_frame_equal(metrics(stopped), metrics(full))


def test_time_based_checkpoints_are_written_mid_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trainer.checkpoint_minutes``: a checkpoint between steps, without a signal or an epoch's end."""
    written: list[tuple[int, int]] = []
    save = runner.checkpoint.save

    def record(path, s, state):
        written.append((state.epoch, state.current.batches))
        save(path, s, state)

    monkeypatch.setattr(runner.checkpoint, "save", record)
    runner.run(
        compose_cfg([*SMOKE, "trainer.checkpoint_minutes=1e-9", "trainer.checkpoint_every=5"]), tmp_path
    )
    assert (0, 1) in written and (1, 2) in written  # mid-epoch: epochs completed, batches into the next
    assert written[-1] == (3, 0)  # and the last epoch's end


def test_checkpoint_every_n_epochs_and_at_each_new_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    save = runner.checkpoint.save

    def record(path, s, state):
        written.append(state.epoch)
        save(path, s, state)

    monkeypatch.setattr(runner.checkpoint, "save", record)
    overrides = [*SMOKE, "trainer.epochs=6", "trainer.checkpoint_every=4", "trainer.eval_every=100"]
    runner.run(compose_cfg(overrides), tmp_path)  # evaluation only at the last epoch
    assert written == [4, 6]
    best = runner.checkpoint.model_epoch(tmp_path / "best_model.pt")
    assert best == summary(tmp_path)["best_epoch"] == 6


def test_resume_with_fewer_epochs_than_trained_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    runner.run(compose_cfg(SMOKE), tmp_path / "first")
    second = tmp_path / "second"
    second.mkdir()
    with pytest.raises(ConfigError, match="trainer.epochs=2.*already trained 3 epochs"):
        runner.run(compose_cfg([*SMOKE, "trainer.epochs=2", f"resume={tmp_path / 'first'}"]), second)


def test_resume_from_a_mismatched_run_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    runner.run(compose_cfg([*SMOKE, "trainer.epochs=1"]), tmp_path / "first")
    second = tmp_path / "second"
    second.mkdir()
    with pytest.raises(ConfigError, match="does not fit this config"):
        runner.run(compose_cfg([*SMOKE, f"resume={tmp_path / 'first'}", "architecture=single_task"]), second)


def test_best_model_left_behind_by_a_crash_is_rewritten_from_the_checkpoint(tmp_path: Path) -> None:
    """A crash between checkpoint.pt and best_model.pt leaves best_model.pt one selection behind; resume
    rewrites it from the checkpoint, which was written at that same best epoch."""
    (tmp_path / "run").mkdir()
    runner.run(compose_cfg([*SMOKE, "trainer.epochs=2"]), tmp_path / "run")
    best = summary(tmp_path / "run")["best_epoch"]
    assert runner.checkpoint.model_epoch(tmp_path / "run" / "best_model.pt") == best == 2
    (tmp_path / "run" / "best_model.pt").unlink()  # as if the process died between the two files
    state = json.loads((tmp_path / "run" / "summary.json").read_text())
    state["status"] = "interrupted"
    (tmp_path / "run" / "summary.json").write_text(json.dumps(state))
    runner.run(compose_cfg([*SMOKE, "trainer.epochs=2", f"resume={tmp_path / 'run'}"]), tmp_path / "run")
    assert runner.checkpoint.model_epoch(tmp_path / "run" / "best_model.pt") == 2


def test_the_same_signal_twice_within_a_second_counts_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster signals every process while a launcher forwards the signal too: the job still finishes its
    step and writes a checkpoint, as for one signal."""
    original = setup_steps.train_step
    count = itertools.count(1)

    def one_stop_delivered_twice(*args, **kwargs):
        if next(count) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(setup_steps, "train_step", one_stop_delivered_twice)
    with pytest.raises(signals.Interrupted) as stop:
        runner.run(compose_cfg(SMOKE), tmp_path)
    assert not stop.value.at_once and stop.value.exit_code == 143
    assert summary(tmp_path)["status"] == "interrupted"
    assert runner.checkpoint.load(tmp_path / "checkpoint.pt")["state"]["step"] == 5  # step 5 finished


def test_a_saved_config_without_a_newer_key_resumes_with_todays_default(tmp_path: Path) -> None:
    """A run saved before a key existed (here: trainer.checkpoint_minutes removed from its config.yaml)
    continues with the shipped YAML's default for it, not with a missing value."""
    import yaml

    from mtlrun.resume import continued_config

    run = tmp_path
    runner.run(compose_cfg(SMOKE), run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["trainer"]["checkpoint_minutes"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    base = compose_cfg([])
    continued = continued_config(compose_cfg([f"resume={run}"]), base)
    assert continued.trainer.checkpoint_minutes == base.trainer.checkpoint_minutes == 10
    assert continued.trainer.epochs == 3  # the run's own values stay
