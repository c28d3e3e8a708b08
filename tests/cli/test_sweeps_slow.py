"""Real sweeps through the `mtlrun` command (slow tier, `make test-all`, which installs the extras): the parallel
(more in tests/cli/test_parallel_launcher.py) and submitit launchers, Optuna studies (one with a failing trial),
and a comparison preset at smoke size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

SMOKE = ["debug=smoke"]


def mtlrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, env=env, timeout=600
    )


def summary(job: Path) -> dict:
    return json.loads((job / "summary.json").read_text())


def log_span(job: Path) -> tuple[datetime, datetime]:
    """Times of the first and last line of a job's mtlrun.log ("[2026-11-23 10:00:00,123][mtlrun]...")."""
    stamps = [
        datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
        for line in (job / "mtlrun.log").read_text().splitlines()
        if line.startswith("[20")
    ]
    return stamps[0], stamps[-1]


def test_parallel_launcher_runs_two_jobs_at_the_same_time(tmp_path: Path) -> None:
    result = mtlrun(
        "-m",
        *SMOKE,
        "seed=0,1",
        "trainer.epochs=3",
        "trainer.limit_train_batches=10",  # a few seconds per job, so overlap cannot be a rounding accident
        "hydra/launcher=parallel",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Launching 2 jobs, 2 at a time" in result.stdout
    (start0, end0), (start1, end1) = log_span(tmp_path / "0"), log_span(tmp_path / "1")
    # run one after another, the second job would start after the first ended
    assert start1 < end0 and start0 < end1, ((start0, end0), (start1, end1))
    assert summary(tmp_path / "0")["status"] == summary(tmp_path / "1")["status"] == "completed"


def test_submitit_local_launcher_runs_every_job_in_its_own_process(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = mtlrun("-m", *SMOKE, "seed=0,1", "hydra/launcher=slurm_local", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job in ("0", "1"):
        assert summary(tmp_path / job)["status"] == "completed"
        assert summary(tmp_path / job)["seed"] == int(job)
    # submitit's own folder: one subfolder per job process (named by its pid), with its pickled result
    results = list((tmp_path / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2 and len({p.parent for p in results}) == 2
    assert (tmp_path / "summary.csv").is_file()  # the end-of-sweep report ran in the launching process


def trial_values(sweep: Path) -> dict[str, float]:
    """{job folder name: the objective it returned}, read back from each job's summary (validation loss)."""
    return {
        job.name: summary(job)["monitor_value"] for job in sweep.iterdir() if (job / "summary.json").is_file()
    }


def test_optuna_study_writes_its_best_trial(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = mtlrun(
        "-m", "hparams_search=lrs", *SMOKE, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path}"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    values = trial_values(tmp_path)
    assert len(values) == 3 and all(math.isfinite(v) for v in values.values())
    assert best["name"] == "optuna"
    assert best["best_value"] == pytest.approx(min(values.values()))  # minimize: the smallest validation loss
    best_job = min(values, key=values.get)
    chosen = dict(
        o.split("=", 1)
        for o in yaml.safe_load((tmp_path / best_job / ".hydra" / "overrides.yaml").read_text())
    )
    assert set(best["best_params"]) == {
        "optim.groups.shared.lr",
        "optim.groups.heads.lr",
        "optim.optimizer.weight_decay",
    }
    for key, value in best["best_params"].items():
        assert float(chosen[key]) == pytest.approx(value)


def test_optuna_study_completes_when_a_trial_fails(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    # One categorical axis, two trials, one per batch: TPE's random start with seed 0 draws `nonsense` (not a
    # validation quantity: the trial fails) and then `loss` (optuna 2.10, pinned by the `sweep` extra). A batch
    # whose only trial failed has failure rate 1.0, which max_failure_rate=1.0 tolerates. (Not GridSampler:
    # hydra-optuna-sweeper 1.3.0 crashes when the last grid point fails, see docs/sweeps.md, Optuna.)
    result = mtlrun(
        "-m",
        "hydra/sweeper=optuna_study",
        *SMOKE,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.seed=0",
        "trainer.monitor=choice(loss,nonsense)",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # a job failed: exit 1 ...
    jobs = {summary(job)["status"]: job for job in tmp_path.iterdir() if (job / "summary.json").is_file()}
    assert set(jobs) == {"completed", "failed"}
    assert jobs["failed"].name == "0"  # the first trial failed; the study still ran the second
    assert "trainer.monitor" in summary(jobs["failed"])["error"]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())  # ... but the study finished
    assert best["best_params"] == {"trainer.monitor": "loss"}
    assert best["best_value"] == pytest.approx(summary(jobs["completed"])["monitor_value"])


def test_compare_weighting_preset_at_smoke_size_reports_delta_m(tmp_path: Path) -> None:
    result = mtlrun(
        "-m",
        "experiment=compare_weighting",
        *SMOKE,
        "seed=0",
        'hydra.sweeper.variants.multi_task.weighting="equal,pcgrad"',  # quoted: a value, not a sweep
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "summary.csv")
    assert sorted(table.label) == [
        "architecture=hard_sharing weighting=equal",
        "architecture=hard_sharing weighting=pcgrad",
        "architecture=single_task weighting=equal",
    ]
    assert table.delta_m_mean.notna().all()
    single = table[table.architecture == "single_task"]
    assert single.delta_m_mean.iloc[0] == pytest.approx(0.0, abs=1e-9)  # the baseline against itself


def test_a_preempted_submitit_job_is_requeued_and_resumes_to_the_uninterrupted_table(tmp_path: Path) -> None:
    """SIGUSR2 (what SLURM and submitit send a preempted job) to a running job: it checkpoints, submitit
    requeues it, and the requeued job resumes in its own folder and writes the uninterrupted run's table."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import signal
    import time

    from test_faults import RUN as run  # 30 short epochs, each with a checkpoint

    reference = mtlrun(*run, f"hydra.run.dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "mtlrun",
        "-m",
        *run,
        "hydra/launcher=slurm_local",
        f"hydra.sweep.dir={sweep}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    job = sweep / "0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # a few epochs in: its metrics.csv has rows of epoch 3
        if (job / "metrics.csv").exists() and "\n3," in (job / "metrics.csv").read_text():
            break
        time.sleep(0.01)
    os.kill(summary(job)["pid"], signal.SIGUSR2)
    output = process.communicate(timeout=600)[0]
    assert process.returncode == 0, output[-3000:]
    state = summary(job)
    assert state["status"] == "completed" and state["steps"] == 300
    assert [entry["from"] for entry in state["resumes"]] == [str(job)]
    expected, resumed = (pd.read_csv(folder / "metrics.csv") for folder in (tmp_path / "reference", job))
    pd.testing.assert_frame_equal(
        resumed[resumed.metric != "time_per_step_s"].reset_index(drop=True),
        expected[expected.metric != "time_per_step_s"].reset_index(drop=True),
    )
