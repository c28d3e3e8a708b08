"""The auxiliary presets through the real CLI, one subprocess per family: image presets (reconstruction and the
MultiDigits hints) with the report, and the table presets (predicted input, adversary) with `mtlrun predict`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def mtlrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow  # a real CLI run; the fast tier builds and steps the model in-process
def test_digits_presets_train_and_the_report_names_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = mtlrun(
        "debug=smoke", f"hydra.run.dir={run}", "auxiliary=[reconstruction,digits_hints,digits_groups]"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert {n for n, t in summary["tasks"].items() if t.get("auxiliary")} == {
        "reconstruction",
        "sum_bins",
        "left_high",
    }
    assert summary["tasks"]["reconstruction"]["outputs"] == 100
    val = summary["val"]
    assert summary["monitor_value"] == sum(val[t]["loss"] for t in ("left", "right", "sum"))
    from mtlrun.report.cli import make_report
    from mtlrun.report.markdown import render

    report = make_report([run])
    assert report.metrics == [
        "left/accuracy",
        "left/f1_macro",
        "right/accuracy",
        "right/f1_macro",
        "sum/mae",
        "sum/rmse",
    ]
    assert (
        "Auxiliary tasks: `reconstruction` (1 run(s)), `sum_bins` (1 run(s)), `left_high` (1 run(s))"
        in render(report)
    )


@pytest.mark.slow  # a real CLI run; the fast tier builds and steps the model in-process
def test_table_presets_train_and_predict_leaves_them_out(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = mtlrun(
        "debug=smoke",
        f"hydra.run.dir={run}",
        "experiment=tabular_example",
        "auxiliary=[tabular_predict_price,tabular_adversarial_device]",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    preprocessing = json.loads((run / "preprocessing.json").read_text())
    assert (
        "item_price" not in preprocessing["feature_names"] and "device" not in preprocessing["feature_names"]
    )
    out = tmp_path / "pred.csv"
    from mtlrun.predict import main  # in this process: one subprocess per test

    assert main([f"run={run}", "data.path=${mtlrun.example:feed/feed_new.csv}", f"out={out}"]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["click", "purchase", "dwell_seconds"]
    assert not {"item_price", "device"} & set(header)
