"""`hydra/launcher=parallel` (hydra_plugins/mtlrun_parallel_launcher/): real sweeps through the `mtlrun` command.
A job whose process is killed is one failed job: the others run, the sweep report lists it, `mtlrun` exits 1.
SIGTERM to `mtlrun -m` stops the running jobs, starts no new one and exits 143."""

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

SMOKE = ["debug=smoke"]


def start_sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """`mtlrun -m` on the parallel launcher (2 jobs at a time) into ``tmp_path/sweep``, output to a file (a
    pipe nobody reads while the test polls could fill up and block the sweep)."""
    out = (tmp_path / "mtlrun.out").open("w")
    command = [sys.executable, "-m", "mtlrun", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    return subprocess.Popen(
        [*command, f"hydra.sweep.dir={tmp_path / 'sweep'}", *SMOKE, *overrides],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(sweep: subprocess.Popen, tmp_path: Path, timeout: float = 240) -> str:
    """Wait for the sweep to end; its output."""
    try:
        sweep.wait(timeout=timeout)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    return (tmp_path / "mtlrun.out").read_text()


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def wait_for(
    job: Path, sweep: subprocess.Popen, tmp_path: Path, epochs: int = 0, timeout: float = 60
) -> dict:
    """Poll ``job``'s summary.json until it says "running" with at least ``epochs`` epochs done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sweep.poll() is None, f"the sweep ended first:\n{finish(sweep, tmp_path)[-3000:]}"
        try:
            state = summary(job)
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        if state.get("status") == "running" and state.get("epochs_completed", 0) >= epochs:
            return state
        assert state.get("status") in (None, "running"), state
        time.sleep(0.05)
    sweep.kill()
    pytest.fail(f"{job} did not start training in {timeout} s:\n{finish(sweep, tmp_path)[-3000:]}")


def kill_while_training(tmp_path: Path, job: str, *overrides: str) -> str:
    """Run the sweep, kill job ``job``'s process (SIGKILL) once it trains; the sweep's output."""
    sweep = start_sweep(tmp_path, *overrides)
    os.kill(wait_for(tmp_path / "sweep" / job, sweep, tmp_path)["pid"], signal.SIGKILL)
    output = finish(sweep, tmp_path)
    assert sweep.returncode == 1, output[-3000:]  # failed jobs: exit 1, after the sweep report
    return output


def test_a_killed_job_and_a_failing_job_do_not_stop_the_sweep(tmp_path: Path) -> None:
    # job 0 completes; job 1 fails (epochs=0 is out of range); job 2 would train for minutes: it is killed
    output = kill_while_training(tmp_path, "2", "trainer.epochs=2,0,500")
    sweep = tmp_path / "sweep"
    assert summary(sweep / "0")["status"] == "completed"
    assert summary(sweep / "1")["status"] == "failed" and "trainer.epochs" in summary(sweep / "1")["error"]
    killed = summary(sweep / "2")
    assert killed["status"] == "failed"
    assert killed["error"] == "job 2 (debug=smoke trainer.epochs=500): its process was killed by SIGKILL"
    assert killed["error"] in output  # logged by the launcher too
    report = (sweep / "summary.md").read_text()
    failed = report.split("## Failed jobs")[1]
    assert str(sweep / "1") in failed and str(sweep / "2") in failed and "SIGKILL" in failed
    assert str(sweep / "0") not in failed


@pytest.mark.slow
def test_twenty_jobs_with_three_failing_and_one_killed_complete_the_other_sixteen(tmp_path: Path) -> None:
    # 16 jobs train 1..16 epochs; epochs 0, -1 and -2 fail their range check; job 2 (1000 epochs) is killed
    epochs = [1, 2, 1000, 3, 0, 4, 5, 6, -1, 7, 8, 9, 10, -2, 11, 12, 13, 14, 15, 16]
    kill_while_training(tmp_path, "2", f"trainer.epochs={','.join(map(str, epochs))}")
    sweep = tmp_path / "sweep"
    statuses = {int(job.name): summary(job)["status"] for job in sweep.iterdir() if job.name.isdigit()}
    failed = {2, 4, 8, 13}
    assert statuses == {num: "failed" if num in failed else "completed" for num in range(20)}
    assert "SIGKILL" in summary(sweep / "2")["error"]
    table = pd.read_csv(sweep / "summary.csv")
    assert sorted(table[table.status == "failed"].path) == sorted(str(sweep / str(num)) for num in failed)
    assert (sweep / "summary.md").read_text().count("| failed") == 4


def test_sigterm_stops_the_running_jobs_starts_no_new_one_and_exits_143(tmp_path: Path) -> None:
    sweep = start_sweep(tmp_path, "seed=0,1,2", "trainer.epochs=500")
    jobs = tmp_path / "sweep"
    for job in ("0", "1"):
        wait_for(jobs / job, sweep, tmp_path, epochs=1)  # both train (job 2 waits for a free slot)
    sweep.send_signal(signal.SIGTERM)
    output = finish(sweep, tmp_path, timeout=120)
    assert sweep.returncode == 143, output[-3000:]
    assert "sweep stopped by SIGTERM: 0 job(s) finished, 2 interrupted, 1 never started" in output
    for job in ("0", "1"):  # each job finished its step, wrote a checkpoint and recorded the signal
        state = summary(jobs / job)
        assert (state["status"], state["signal"]) == ("interrupted", "SIGTERM"), state
        assert (jobs / job / "checkpoint.pt").is_file()
    assert not (jobs / "2").exists()
