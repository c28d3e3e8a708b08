"""Faults through the real `mtlrun` command: a run killed (SIGTERM, SIGKILL) during start-up, mid-epoch or
while it writes a checkpoint leaves tables that parse and the right status, and `mtlrun resume=<folder>`
finishes it with the table an uninterrupted run writes. Resume continues the run its folder describes; a
rejected command leaves every folder as it was; runs started at the same moment get folders of their own; a
disk that refuses a write ends the run with one line, its status recorded where the disk allows.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from mtlrun import rundir

# 30 epochs x 10 steps of a small MLP whose 4 MB checkpoint is written every epoch: checkpoint writes take a
# good part of the run, so a kill can be aimed at one.
RUN = [
    "data=kendall_toy",
    "encoder.hidden=[512,512]",
    "trainer.batch_size=10",
    "trainer.epochs=30",
    "trainer.progress=false",
    "trainer.plots=false",
]


def mtlrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, cwd=cwd, timeout=240
    )


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtlrun", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def without_timing(table: pd.DataFrame) -> pd.DataFrame:
    return table[table.metric != "time_per_step_s"].reset_index(drop=True)


def read_summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll ``condition`` (every millisecond) until it holds; False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("the run never reached the moment to kill it")


def epochs_written(folder: Path) -> int:
    try:
        return int(pd.read_csv(folder / "metrics.csv").epoch.max())
    except Exception:
        return 0


# the moment of the kill -> the condition that announces it
MOMENTS: dict[str, Callable[[Path], bool]] = {
    "start-up": lambda run: (run / "summary.json").exists(),  # written before the data and model are built
    "mid-epoch": lambda run: epochs_written(run) >= 3,
    "checkpoint-write": lambda run: any(run.glob(".checkpoint.pt.*.tmp")),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run's table."""
    folder = tmp_path_factory.mktemp("reference")
    done = mtlrun(*RUN, f"hydra.run.dir={folder / 'run'}", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    return without_timing(pd.read_csv(folder / "run" / "metrics.csv"))


@pytest.mark.parametrize(
    "signum,moment",
    [
        (signal.SIGTERM, "mid-epoch"),
        (signal.SIGKILL, "checkpoint-write"),
        pytest.param(signal.SIGTERM, "start-up", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, "checkpoint-write", marks=pytest.mark.slow),
        pytest.param(signal.SIGKILL, "start-up", marks=pytest.mark.slow),
        pytest.param(signal.SIGKILL, "mid-epoch", marks=pytest.mark.slow),
    ],
    ids=lambda v: signal.Signals(v).name if isinstance(v, int) else v,
)
def test_killed_run_resumes_to_the_uninterrupted_table(
    tmp_path: Path, reference: pd.DataFrame, signum: int, moment: str
) -> None:
    run = tmp_path / "run"
    process = start(*RUN, f"hydra.run.dir={run}", cwd=tmp_path)
    hit = wait_for(lambda: MOMENTS[moment](run), process)
    assert hit, f"the run ended before the {moment} moment:\n{process.communicate()[0]}"
    process.send_signal(signum)
    output = process.communicate(timeout=120)[0]

    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + signum, output  # 143
        assert "Traceback" not in output, output
        assert f"mtlrun resume={run}" in output
    if (run / "metrics.csv").exists():  # the tables parse, whenever the kill fell
        pd.read_csv(run / "metrics.csv")
    if (run / "summary.json").exists():
        state = read_summary(run)
        if signum == signal.SIGKILL:
            assert state["status"] == "running" and rundir.status(run) == "killed"
        else:
            assert state["status"] == "interrupted" and state["signal"] == "SIGTERM"

    resumed = mtlrun(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_summary(run)["status"] == "completed"
    pd.testing.assert_frame_equal(without_timing(pd.read_csv(run / "metrics.csv")), reference)
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A completed smoke run (2 epochs)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    done = mtlrun("debug=smoke", f"hydra.run.dir={folder}", cwd=folder.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@pytest.mark.parametrize(
    "args,expect",
    [
        (["resume={run}"], "already completed all 2 epochs"),
        (["resume={run}", "trainer.epochs=4", "hydra.run.dir={run}"], "never modified"),
        (["resume={run}", "trainer.epochs=4", "seed=3"], "seed: cannot change when resuming"),
        (["resume={run}", "trainer.epochs=4", "weighting=pcgrad"], "weighting._target_: cannot change"),
        (["resume={run}", "trainer.epochs=4", "debug=smoke", "trainer.batch_size=8"], "trainer.batch_size"),
        (["debug=smoke", "hydra.run.dir={run}"], "already holds files"),
    ],
    ids=["completed", "into-itself", "seed", "weighting", "batch-size", "new-run-into-it"],
)
def test_rejected_commands_leave_a_finished_run_untouched(
    finished: Path, args: list[str], expect: str
) -> None:
    before = snapshot(finished)
    result = mtlrun(*(a.format(run=finished) for a in args), cwd=finished.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert expect in output and "Traceback" not in output, output
    assert snapshot(finished) == before


def test_more_epochs_continue_a_finished_run_into_a_new_folder(finished: Path, tmp_path: Path) -> None:
    before = snapshot(finished)
    result = mtlrun(f"resume={finished}", "trainer.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert snapshot(finished) == before
    (new,) = (p.parent for p in (tmp_path / "outputs" / "runs").glob("*/*/summary.json"))
    table, old = pd.read_csv(new / "metrics.csv"), without_timing(pd.read_csv(finished / "metrics.csv"))
    pd.testing.assert_frame_equal(without_timing(table[table.epoch <= 2]), old)
    assert table.epoch.max() == 3
    state = read_summary(new)
    assert state["status"] == "completed" and state["epochs_completed"] == 3
    assert state["resumes"][-1]["from"] == str(finished) and state["resumes"][-1]["epoch"] == 2


def interrupted_copy(finished: Path, folder: Path) -> Path:
    """A copy of the finished run, recorded as interrupted (as a SIGTERM after its last checkpoint leaves it)."""
    shutil.copytree(finished, folder)
    (folder / rundir.LOCK_FILE).unlink()
    state = read_summary(folder) | {"status": "interrupted", "signal": "SIGTERM"}
    (folder / "summary.json").write_text(json.dumps(state))
    return folder


def test_resume_uses_the_saved_config_not_todays_defaults(finished: Path, tmp_path: Path) -> None:
    """The run was 2 epochs x 3 steps (debug=smoke): resumed with no override, it completes as that, not as
    today's default of 20 epochs x 40 steps."""
    run = interrupted_copy(finished, tmp_path / "run")
    result = mtlrun(f"resume={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    state = read_summary(run)
    assert (state["status"], state["steps"], state["epochs_completed"]) == ("completed", 6, 2)
    assert state["resumes"][-1] | {"time": None} == {"from": str(run), "epoch": 2, "step": 6, "time": None}


@pytest.mark.parametrize("broken", ["checkpoint.pt", "config.yaml"])
def test_a_corrupted_file_is_named_and_the_run_left_as_it_was(
    finished: Path, tmp_path: Path, broken: str
) -> None:
    run = interrupted_copy(finished, tmp_path / "run")
    path = run / broken
    path.write_bytes(
        path.read_bytes()[: len(path.read_bytes()) // 2] if broken.endswith(".pt") else b"a: [1,\n"
    )
    before = snapshot(run)
    result = mtlrun(f"resume={run}", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert broken in output, output
    assert snapshot(run) == before


def test_a_run_still_training_is_not_resumed(finished: Path, tmp_path: Path) -> None:
    """A process holds the run's lock (as a live run does): resume refuses, naming it."""
    fd = os.open(finished / rundir.LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = mtlrun(f"resume={finished}", "trainer.epochs=4", cwd=tmp_path)
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "still training" in result.stdout + result.stderr


def test_a_folder_of_the_users_own_files_is_refused_untouched(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: notes\n")
    (mine / "summary.json").write_text("{}\n")
    before = snapshot(mine)
    result = mtlrun("debug=smoke", f"hydra.run.dir={mine}", cwd=tmp_path)
    assert result.returncode == 1 and "already holds files" in result.stdout + result.stderr
    assert snapshot(mine) == before


def test_runs_started_together_get_folders_of_their_own(tmp_path: Path) -> None:
    """Three runs started at the same moment into one clock-named folder (named by the year here, so they
    surely collide, as the default's seconds do for runs started in one second): three folders, each with
    its own complete table (the same seed: the same numbers), all exiting 0."""
    processes = [start("debug=smoke", "hydra.run.dir=runs/${now:%Y}", cwd=tmp_path) for _ in range(3)]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    folders = sorted(p.parent for p in (tmp_path / "runs").glob("*/summary.json"))
    year = time.strftime("%Y")
    assert [f.name for f in folders] == [year, f"{year}_1", f"{year}_2"]
    tables = [without_timing(pd.read_csv(folder / "metrics.csv")) for folder in folders]
    for folder, table in zip(folders, tables, strict=True):
        assert (folder / "metrics.csv").read_text().count("epoch,step") == 1
        assert read_summary(folder)["status"] == "completed"
        assert read_summary(folder)["output_dir"] == str(folder)
        pd.testing.assert_frame_equal(table, tables[0])
    assert len({read_summary(f)["pid"] for f in folders}) == 3


def mtlrun_with_files_capped_at(size: int, run: Path) -> subprocess.CompletedProcess:
    """A smoke run into ``run`` whose process cannot write a file past ``size`` bytes: such a write fails
    with EFBIG, as on a full disk (Python ignores SIGXFSZ, so the write raises instead of killing it)."""
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", "debug=smoke", f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        cwd=run.parent,
        timeout=240,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size)),
    )


def test_a_write_the_disk_refuses_fails_the_run_with_one_line_and_its_status(tmp_path: Path) -> None:
    """checkpoint.pt (1.5 MB) cannot be written, the tables can: the run says so in one line naming the
    file, records status failed with the error, and leaves no temporary file."""
    run = tmp_path / "run"
    result = mtlrun_with_files_capped_at(400_000, run)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{run / 'checkpoint.pt'} (File too large)" in errors[0], output
    state = read_summary(run)
    assert state["status"] == "failed" and "File too large" in state["error"]
    pd.read_csv(run / "metrics.csv")  # the rows written before the failure stay readable
    assert not list(run.glob(".*.tmp"))


def test_when_even_hydras_files_cannot_be_written_the_error_is_one_line(tmp_path: Path) -> None:
    result = mtlrun_with_files_capped_at(2_000, tmp_path / "run")
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and output.splitlines() == [
        "error: could not read or write (File too large); check the disk space and permissions"
    ], output


def test_a_status_the_disk_refuses_is_said_in_one_line_after_the_original_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint write fails (disk full), then so does the write of status "failed": the run raises
    the original error (which the CLI prints), and one line says the status could not be recorded."""
    from conftest import compose_cfg

    from mtlrun.trainer import runner, summary

    def disk_full(path: Path, *args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    real_write = summary.write_json
    monkeypatch.setattr(runner.checkpoint, "save", disk_full)
    monkeypatch.setattr(
        summary,
        "write_json",
        lambda path, payload: disk_full(path) if payload["status"] == "failed" else real_write(path, payload),
    )
    with pytest.raises(OSError) as err:
        runner.run(compose_cfg(["debug=smoke"]), tmp_path)
    assert err.value.filename.endswith("checkpoint.pt")
    refused = [r.getMessage() for r in caplog.records if "could not record" in r.getMessage()]
    assert refused == [
        f"could not record status 'failed' in {tmp_path / 'summary.json'} (No space left on device)"
    ]
    assert read_summary(tmp_path)["status"] == "running"  # the last status the disk took
    assert not list(tmp_path.glob(".*.tmp"))


def test_sweeps_started_together_get_folders_of_their_own(tmp_path: Path) -> None:
    """Two sweeps into one clock-named folder: the second takes <name>_1, and its jobs follow it there."""
    processes = [
        start("-m", "debug=smoke", "seed=0", "hydra.sweep.dir=sweeps/${now:%Y}", cwd=tmp_path)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    year = time.strftime("%Y")
    jobs = sorted(p.parent for p in (tmp_path / "sweeps").glob("*/0/summary.json"))
    assert [job.parent.name for job in jobs] == [year, f"{year}_1"]
    for job in jobs:
        assert read_summary(job)["status"] == "completed" and read_summary(job)["output_dir"] == str(job)
        assert (job.parent / "summary.md").is_file()  # each sweep's own report
