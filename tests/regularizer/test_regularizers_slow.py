"""The regularisers through the real `mtlrun` command, and a resumed run with one equal to an uninterrupted
run (the regulariser's state is in the checkpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_cfg
from interruptions import interrupted_and_resumed, metrics
from omegaconf import OmegaConf

from mtlrun.regularizer.relationship import correlations
from mtlrun.trainer import runner

pytestmark = pytest.mark.slow

# the files each option rewrites and a diagnostic row it writes at each evaluation
EXPECTED = {
    "group_lasso": (["group_norms.csv"], "regularizer/features_in_use"),
    "task_clustering": (["task_clusters.csv"], "regularizer/cluster/sum"),
    "relationship": (["task_relationship.csv", "task_relationship.png"], "regularizer/corr/left~sum"),
}


def test_every_regularizer_through_the_cli(tmp_path: Path) -> None:
    """One sweep over the three options (one process): each run has the `model/regularizer` train row, its
    diagnostic rows at each evaluation, finite values, and its files."""
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrun",
            "-m",
            f"regularizer={','.join(EXPECTED)}",
            "debug=smoke",
            "trainer.plots=true",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for job in range(len(EXPECTED)):
        folder = sweep / str(job)
        option = OmegaConf.load(folder / "config.yaml").regularizer._target_.split(".")[-2]  # the module
        files, diagnostic = EXPECTED[option]
        rows = pd.read_csv(folder / "metrics.csv")
        model = rows[rows.task == "model"]
        assert model.value.notna().all() and (model.value.abs() < 1e6).all(), option
        assert len(model[(model.split == "train") & (model.metric == "regularizer")]) == 2, option
        assert len(model[(model.split == "val") & (model.metric == diagnostic)]) == 2, option
        for name in files:
            assert (folder / name).stat().st_size > 0, (option, name)
            if name.endswith(".csv"):
                assert len(pd.read_csv(folder / name)) > 0, (option, name)


@pytest.mark.parametrize("option", ["relationship", "task_clustering"])
def test_resumed_run_equals_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option
) -> None:
    """Stopped after step 5 (between two updates every 4 steps) and resumed: the same metrics table, the
    same final task covariance or clusters, as a run that never stopped."""
    overrides = ["debug=smoke", "trainer.epochs=3", f"regularizer={option}", "regularizer.update_every=4"]
    full, resumed = interrupted_and_resumed(tmp_path, monkeypatch, overrides, stop_after=5)
    pd.testing.assert_frame_equal(metrics(resumed), metrics(full))
    name = EXPECTED[option][0][0]
    assert (resumed / name).read_text() == (full / name).read_text()


def test_run_logs_rows_and_writes_files(tmp_path: Path) -> None:
    """One in-process smoke run with the relationship regulariser: train rows `model/regularizer`, evaluation
    rows of the correlations, task_relationship.csv, and the state in the checkpoint."""
    runner.run(
        compose_cfg(["regularizer=relationship", "debug=smoke", "regularizer.update_every=2"]), tmp_path
    )
    rows = pd.read_csv(tmp_path / "metrics.csv")
    model = rows[rows.task == "model"]
    assert len(model[(model.split == "train") & (model.metric == "regularizer")]) == 2
    corr = model[(model.split == "val") & model.metric.str.startswith("regularizer/corr/")]
    assert sorted(corr.metric.unique()) == [
        "regularizer/corr/left~right",
        "regularizer/corr/left~sum",
        "regularizer/corr/right~sum",
    ]
    assert (
        model.value.notna().all()
        and json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    )
    table = pd.read_csv(tmp_path / "task_relationship.csv", index_col="task")
    assert table.shape == (3, 3)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["regularizer"]
    assert torch.allclose(correlations(saved["omega"]), torch.tensor(table.values))
