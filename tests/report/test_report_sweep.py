"""Real ``mtlrun -m`` sweeps leave their comparison report (summary.csv, summary.md, report.html, plots) in
the sweep folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def mtlrun(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, env=env, timeout=240
    )


def test_sweep_with_a_failing_job_reports_the_others_and_exits_nonzero(tmp_path: Path) -> None:
    # 4 jobs: hard sharing and single task, each once with a valid and once with an unknown monitor
    result = mtlrun(
        "-m",
        "debug=smoke",
        "architecture=hard_sharing,single_task",
        "trainer.monitor=loss,nonsense",
        "trainer.plots=true",
        f"hydra.sweep.dir={tmp_path}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    summary = pd.read_csv(tmp_path / "summary.csv")
    completed = summary[summary.status == "completed"]
    assert list(completed.label) == ["architecture=hard_sharing", "architecture=single_task"]
    # the single-task run is its own baseline: Δm% 0 exactly; the hard-sharing run has a finite Δm%
    assert completed.delta_m_mean.iloc[1] == 0.0 and completed.delta_m_mean.notna().all()
    failed = summary[summary.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("trainer.monitor").all()
    assert "## Failed jobs" in (tmp_path / "summary.md").read_text()
    page = (tmp_path / "report.html").read_text(encoding="utf-8")  # the same report as one page
    assert "Failed jobs" in page and "architecture=single_task" in page and 'src="data:image/png' in page
    assert "sweep summary" in output and "architecture=single_task" in output  # the table is logged
    for job in ("0", "2"):  # completed jobs drew their own curves
        assert json.loads((tmp_path / job / "summary.json").read_text())["status"] == "completed"
        assert (tmp_path / job / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_sweep_of_two_weightings_two_seeds_and_single_task(tmp_path: Path) -> None:
    overrides = ["architecture=hard_sharing,single_task", "weighting=equal,uncertainty", "seed=0,1"]
    result = mtlrun("-m", "debug=smoke", *overrides, "trainer.plots=true", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(summary.label) == [
        f"architecture={a} weighting={w}"
        for a in ("hard_sharing", "single_task")
        for w in ("equal", "uncertainty")
    ]
    assert (summary.n_seeds == 2).all() and (summary.status == "completed").all()
    assert summary.delta_m_mean.notna().all() and summary.delta_m_std.notna().all()
    assert {"left/accuracy_mean", "left/accuracy_std", "sum/mae_mean", "mean_rank"} <= set(summary.columns)
    # B pools the four single-task runs, so the two single-task rows' Δm% average to zero
    assert summary.delta_m_mean.iloc[2:].mean() == pytest.approx(0.0, abs=1e-9)
    for name in ("summary.md", "val_curves.png", "task_weights.png"):  # three tasks: no tradeoff.png
        assert (tmp_path / name).is_file(), name
    assert len(list(tmp_path.glob("*/curves.png"))) == 8
