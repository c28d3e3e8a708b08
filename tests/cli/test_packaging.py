"""The wheel ships conf/ inside the package: installed from a wheel, `mtlrun` runs from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_runs_from_another_directory(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("mtlrun-*.whl"))
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert (site / "mtlrun" / "conf" / "config.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's copy shadows the editable install
    assert (site / "mtlrun" / "examples" / "feed" / "feed.csv").is_file()

    def mtlrun(*args: str) -> subprocess.CompletedProcess:
        code = f"import mtlrun.cli, sys; sys.argv = ['mtlrun', *{list(args)!r}]; mtlrun.cli.main()"
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300
        )

    where = subprocess.run(
        [sys.executable, "-c", "import mtlrun.paths; print(mtlrun.paths.config_dir())"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.strip() == str(site / "mtlrun" / "conf")
    run = mtlrun("debug=smoke")
    assert run.returncode == 0, run.stdout + run.stderr
    summaries = list((elsewhere / "outputs" / "runs").glob("*/*/summary.json"))
    assert len(summaries) == 1
    assert json.loads(summaries[0].read_text())["status"] == "completed"
    # every documented command works from another folder: the tabular example and its predictions
    table = mtlrun("experiment=tabular_example", "debug=smoke", "hydra.run.dir=feed")
    assert table.returncode == 0, table.stdout + table.stderr
    trained_on = OmegaConf.load(elsewhere / "feed" / "config.yaml").data.path
    assert trained_on == str(site / "mtlrun" / "examples" / "feed" / "feed.csv")
    predict = mtlrun(
        "predict", "run=feed", "data.path=${mtlrun.example:feed/feed_new.csv}", "keep=[impression_id]"
    )
    assert predict.returncode == 0, predict.stdout + predict.stderr
    assert (elsewhere / "feed" / "predictions" / "feed_new.csv").read_text().count("\n") == 501
