"""`mtlrun report` over run folders that cannot be read (mtlrun/report/collect.py): the good runs are reported
with their numbers, each bad one is named (one warning line, a section "Unreadable runs" in summary.md, a row
in summary.csv); a metrics.csv cut off mid-row is read without its last row; interrupted runs are listed
with their signal. The fake runs are those of test_report.py (task a: accuracy, task b: mae)."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report import write_run

from mtlrun.errors import DataError
from mtlrun.report.cli import main, make_report
from mtlrun.report.collect import load_run, read_metrics, read_runs
from mtlrun.report.markdown import render

GOOD = [(0, 0.80, 2.0), (1, 0.84, 2.4)]  # seed, accuracy, mae of the two readable runs: mean 0.82, 2.2

# job folder -> (what is written over one of its files, the problem the report names)
BAD = {
    "binary_metrics": ("metrics.csv", bytes(range(256)), "metrics.csv: not a CSV text file"),
    "garbled_metrics": (
        "metrics.csv",
        b"epoch,step,split,task,metric,value\n1,3,train,a,loss,0.5\n1,3,train,a,loss,0.5,7,8\n",
        "metrics.csv: not a valid CSV table",
    ),
    "truncated_summary": ("summary.json", b'{"status": "completed", "te', "summary.json: not valid JSON"),
    "binary_summary": (
        "summary.json",
        b"\x80\x04\x95" + bytes(range(128, 256)),
        "summary.json: not a text file",
    ),
    "list_summary": ("summary.json", b"[1, 2, 3]", "summary.json: holds a JSON list, not the object"),
    "string_tasks": (
        "summary.json",
        json.dumps({"status": "completed", "tasks": "a,b"}).encode(),
        "summary.json: 'tasks' holds a str",
    ),
}


def sweep_with_bad_runs(folder: Path) -> Path:
    for seed, accuracy, mae in GOOD:
        write_run(folder / f"good{seed}", "hard_sharing", "equal", seed, accuracy, mae)
    for job, (name, content, _) in BAD.items():
        run = write_run(folder / job, "hard_sharing", "equal", 9, 0.1, 9.0)  # numbers that must not show
        (run / name).write_bytes(content)
    return folder


def test_the_good_runs_are_reported_and_each_bad_one_is_named(tmp_path: Path, capsys) -> None:
    sweep = sweep_with_bad_runs(tmp_path / "sweep")
    assert main([str(sweep), "--no-plots"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == len(BAD)  # one line per bad run, nothing else
    for job, (name, _, problem) in BAD.items():
        (line,) = [w for w in warnings if f"{sweep / job / name}:" in w]
        assert line.startswith("warning: ") and problem in line and "left out of the report" in line
    csv = pd.read_csv(sweep / "summary.csv")
    completed = csv[csv.status == "completed"]
    assert completed.n_seeds.tolist() == [2] and completed.seeds.tolist() == ["0,1"]
    assert completed["a/accuracy_mean"].item() == pytest.approx(0.82)
    assert completed["b/mae_mean"].item() == pytest.approx(2.2)
    assert sorted(csv[csv.status == "unreadable"].path) == sorted(str(sweep / job) for job in BAD)
    markdown = (sweep / "summary.md").read_text()
    assert markdown.count("\n## Unreadable runs\n") == 1
    section = markdown.split("## Unreadable runs")[1]
    for job, (_, _, problem) in BAD.items():
        assert f"- {sweep / job}/{problem}" in section  # the problem starts with the file's name
    counts = f"2 run(s): 2 completed in 1 configuration(s), 0 failed or incomplete. {len(BAD)} more could not"
    assert counts in markdown
    assert "0.82 ± 0.028" in markdown  # accuracy of the good runs: sample std of (0.80, 0.84)


def test_an_unreadable_baseline_run_is_named_too(tmp_path: Path) -> None:
    write_run(tmp_path / "mtl" / "0", "hard_sharing", "equal", 0, 0.9, 1.0)
    write_run(tmp_path / "stl" / "0", "single_task", "equal", 0, 0.8, 2.0)
    bad = write_run(tmp_path / "stl" / "1", "single_task", "equal", 1, 0.1, 9.0)
    (bad / "summary.json").write_text("{")
    report = make_report([tmp_path / "mtl"], baseline=[tmp_path / "stl"])
    assert [u.path for u in report.unreadable] == [bad.resolve()]
    assert report.baseline.values == {"toy": pytest.approx({"a/accuracy": 0.8, "b/mae": 2.0})}  # run 0 alone


def test_no_readable_run_is_an_error_after_one_warning_per_run(tmp_path: Path, capsys) -> None:
    for job in ("0", "1"):
        run = write_run(tmp_path / "sweep" / job, "hard_sharing", "equal", 0, 0.8, 2.0)
        (run / "metrics.csv").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    assert main([str(tmp_path / "sweep"), "--no-plots"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["warning", "warning", "error"]
    assert "none of its 2 run folder(s) could be read" in lines[2]
    assert not (tmp_path / "sweep" / "summary.md").exists()


def write_metrics(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text(text, newline="")
    return folder


HEADER = "epoch,step,split,task,metric,value\n"
ROWS = "1,3,train,all,time_per_step_s,0.010\n2,6,train,all,time_per_step_s,0.030\n"


def test_a_last_row_cut_off_mid_write_is_dropped(tmp_path: Path) -> None:
    # the run was killed while writing epoch 3's row: "0.0" is the start of 0.050 and must not count
    folder = write_metrics(tmp_path / "cut", HEADER + ROWS + "3,9,train,all,time_per_step_s,0.0")
    metrics = read_metrics(folder)
    assert metrics.value.tolist() == [0.010, 0.030] and metrics.epoch.tolist() == [1, 2]
    # in a whole run: the time per step is the mean of the complete rows
    run = write_run(tmp_path / "run", "hard_sharing", "equal", 0, 0.8, 2.0, times=(0.010, 0.030))
    with (run / "metrics.csv").open("a") as handle:
        handle.write("3,9,train,all,time_per_step_s,0.0")
    assert load_run(run).time_per_step() == pytest.approx(0.020)
    report = make_report([run])
    assert report.table.time_per_step_s.item() == pytest.approx(0.020) and not report.unreadable


def test_complete_files_keep_every_row(tmp_path: Path) -> None:
    crlf = write_metrics(tmp_path / "crlf", (HEADER + ROWS).replace("\n", "\r\n"))  # the csv module's default
    assert read_metrics(crlf).value.tolist() == [0.010, 0.030]
    cut_in_header = write_metrics(tmp_path / "header", "epoch,step,spl")
    assert read_metrics(cut_in_header) is None  # no complete line yet: no metrics, like a missing file
    not_mtlrun = write_metrics(tmp_path / "other", "a,b\n1,2\n")
    with pytest.raises(DataError, match="not an mtlrun metrics table .*no column epoch, step, split"):
        read_metrics(not_mtlrun)
    text_value = write_metrics(tmp_path / "text", HEADER + "1,3,train,a,loss,0.5\n1,3,train,a,weight,high\n")
    with pytest.raises(DataError, match="line 3 holds the value 'high', not a number"):
        read_metrics(text_value)


def test_interrupted_and_running_runs_are_listed_with_their_status(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "hard_sharing", "equal", 0, 0.8, 2.0)
    stopped = {
        "1": {"status": "interrupted", "signal": "SIGTERM", "error": None},
        "2": {"status": "interrupted", "signal": "SIGINT", "error": "Interrupted: stopped by SIGINT"},
        "3": {"status": "running", "error": None},  # a process holds its lock: still training
        "4": {"status": "running", "error": None},  # no process holds it: killed (kill -9 leaves "running")
    }
    for job, fields in stopped.items():
        run = write_run(tmp_path / job, "hard_sharing", "equal", int(job), 0.8, 2.0)
        summary = json.loads((run / "summary.json").read_text()) | fields
        (run / "summary.json").write_text(json.dumps(summary))
    lock = os.open(tmp_path / "3" / ".mtlrun.lock", os.O_CREAT | os.O_WRONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        runs, unreadable = read_runs([tmp_path])
        assert len(runs) == 5 and unreadable == []
        report = make_report([tmp_path])
    finally:
        os.close(lock)
    failed = report.failed.set_index("seeds")
    assert failed.status.to_dict() == {"1": "interrupted", "2": "interrupted", "3": "running", "4": "killed"}
    assert failed.error.to_dict() == {
        "1": "stopped by SIGTERM",
        "2": "Interrupted: stopped by SIGINT",
        "3": "",
        "4": "",
    }
    assert report.table.n_seeds.tolist() == [1]
    assert re.search(r"\| interrupted +\| 1 +\| stopped by SIGTERM +\|", render(report))
