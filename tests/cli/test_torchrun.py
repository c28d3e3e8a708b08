"""Data-parallel runs through the real command: ``torchrun --nproc_per_node=2 -m mtlrun ...`` is one run, in
one folder that rank 0 alone writes, with the table one process writes; a signal leaves it interrupted and
resumable, on any number of ranks; a sweep under torchrun is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

RUN = [
    "experiment=tabular_example",
    "trainer.batch_size=61",  # odd: the two ranks' shards differ in size
    "trainer.epochs=3",
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.plots=false",
]


def command(*args: str, ranks: int) -> list[str]:
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    )
    return [sys.executable, *launcher, "-m", "mtlrun", *args]


def mtlrun(*args: str, cwd: Path, ranks: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(*args, ranks=ranks), capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


def table(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "metrics.csv")
    return frame[frame.metric != "time_per_step_s"].reset_index(drop=True)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one") / "run"
    done = mtlrun(*RUN, f"hydra.run.dir={folder}", cwd=folder.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def assert_same_table(run: Path, reference: Path) -> None:
    ours, theirs = table(run), table(reference)
    pd.testing.assert_frame_equal(ours.drop(columns="value"), theirs.drop(columns="value"))
    pd.testing.assert_series_equal(ours.value, theirs.value, rtol=1e-4, atol=1e-6)


def test_two_ranks_are_one_run_with_the_one_process_table(tmp_path: Path, one_process: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = mtlrun(*RUN, cwd=tmp_path, ranks=2, env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = [p.parent for p in tmp_path.glob("outputs/runs/*/*/summary.json")]
    assert len(runs) == 1, runs  # one folder, though two processes ran
    run = runs[0]
    state = summary(run)
    assert state["status"] == "completed"
    assert state["world_size"] == 2
    assert state["batch_size"] == {"global": 61, "per_rank": 31}
    assert_same_table(run, one_process)  # training losses, and validation/test metrics gathered across ranks
    assert not list(scratch.glob("mtlrun-rank*")), "the other rank's scratch folder was left behind"
    assert (done.stdout + done.stderr).count("outputs in") == 1  # rank 0 tells the run's story, once


def test_a_signal_leaves_it_interrupted_and_it_resumes_on_one_process(
    tmp_path: Path, one_process: Path
) -> None:
    run = tmp_path / "run"
    process = subprocess.Popen(
        command(*RUN, f"hydra.run.dir={run}", ranks=2),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the first epoch is written: the run is training
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGTERM)  # what a scheduler sends torchrun; torchrun forwards it to the ranks
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    state = summary(run)
    assert state["status"] == "interrupted" and state["signal"] == "SIGTERM", output

    resumed = mtlrun(f"resume={run}", cwd=tmp_path)  # one process continues what two began
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert summary(run)["status"] == "completed"
    assert_same_table(run, one_process)


def test_a_sweep_under_torchrun_is_refused(tmp_path: Path) -> None:
    done = mtlrun("-m", *RUN, "seed=0,1", cwd=tmp_path, ranks=2)
    assert done.returncode != 0
    assert "torchrun trains one run data-parallel" in done.stderr
    assert not (tmp_path / "multirun").exists() and not list(tmp_path.glob("outputs/multiruns/*/*/*"))
