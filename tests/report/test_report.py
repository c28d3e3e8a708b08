"""The comparison report on run folders the test writes, with values computed by hand.

The fake sweep: data set ``toy`` with task ``a`` (binary, accuracy: higher is better) and task ``b``
(regression, mae: lower is better).

    job  architecture  weighting  seed  a/accuracy  b/mae  time_per_step_s rows  wall_time_s
    0    hard_sharing  equal      0     0.80        2.0    0.010, 0.012          10
    1    hard_sharing  equal      1     0.84        2.2    0.013, 0.013          11
    2    hard_sharing  equal      2     0.82        2.4    0.014, 0.016          12
    3    hard_sharing  pcgrad     0     0.90        1.8    0.020, 0.020          20
    4    hard_sharing  pcgrad     1     0.86        2.2    0.030, 0.030          22
    5    hard_sharing  pcgrad     2     failed (TrainingError), no metrics.csv
    6    single_task   equal      0     0.75        2.0    0.005, 0.005          5
    7    single_task   equal      1     0.85        2.0    0.005, 0.005          6
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mtlrun.report.baseline import baseline_from
from mtlrun.report.cli import main, make_report
from mtlrun.report.collect import find_run_dirs, load_run, load_runs
from mtlrun.report.configs import group_configurations
from mtlrun.report.markdown import comparison_table, render
from mtlrun.report.plots import plot_run
from mtlrun.report.table import sample_std

DIRECTIONS = {"a/accuracy": True, "b/mae": False}
TASKS = {"a": {"kind": "binary", "metrics": ["accuracy"]}, "b": {"kind": "regression", "metrics": ["mae"]}}
JOBS = [
    # architecture, weighting, seed, accuracy, mae, time rows, wall time
    ("hard_sharing", "equal", 0, 0.80, 2.0, (0.010, 0.012), 10.0),
    ("hard_sharing", "equal", 1, 0.84, 2.2, (0.013, 0.013), 11.0),
    ("hard_sharing", "equal", 2, 0.82, 2.4, (0.014, 0.016), 12.0),
    ("hard_sharing", "pcgrad", 0, 0.90, 1.8, (0.020, 0.020), 20.0),
    ("hard_sharing", "pcgrad", 1, 0.86, 2.2, (0.030, 0.030), 22.0),
    ("hard_sharing", "pcgrad", 2, None, None, (), 1.0),  # failed
    ("single_task", "equal", 0, 0.75, 2.0, (0.005, 0.005), 5.0),
    ("single_task", "equal", 1, 0.85, 2.0, (0.005, 0.005), 6.0),
]
EQUAL, PCGRAD, SINGLE = (
    "architecture=hard_sharing weighting=equal",
    "architecture=hard_sharing weighting=pcgrad",
    "architecture=single_task weighting=equal",
)


def write_run(
    folder: Path,
    architecture: str,
    weighting: str,
    seed: int,
    accuracy: float | None,
    mae: float | None,
    times: tuple[float, ...] = (0.01, 0.01),
    wall: float = 1.0,
    data: str = "toy",
    extra_config: dict | None = None,
    weights: tuple[float, float] = (1.0, 1.0),
    directions: bool = True,
) -> Path:
    """A run folder as mtlrun writes it; ``accuracy=None`` makes a job that failed before its first epoch."""
    (folder / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "name": f"job-{folder.name}",  # differs per run; must not split configurations
        "data": {"_target_": f"mtlrun.data.{data}.Data", "seed": 0},
        "architecture": {"_target_": f"mtlrun.architecture.{architecture}.X"},
        "weighting": {"_target_": f"mtlrun.weighting.{weighting}.X"},
        "optim": {"lr": 0.001},
        "trainer": {"epochs": 2, "progress": seed == 0},  # progress differs too; it changes nothing
    } | (extra_config or {})
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    choices = {"data": data, "architecture": architecture, "weighting": weighting, "hydra/launcher": "basic"}
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    overrides = [f"architecture={architecture}", f"weighting={weighting}", f"seed={seed}"]
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary: dict = {
        "status": "completed",
        "error": None,
        "seed": seed,
        "data": {"name": data},
        "tasks": TASKS,
        "independent_tasks": architecture == "single_task",  # what the architecture declares
        "weighting": {"adaptive": weighting not in ("equal", "static")},
    }
    if directions:
        summary["higher_is_better"] = DIRECTIONS
    if accuracy is None:
        summary |= {"status": "failed", "error": "TrainingError: loss of task b is NaN at epoch 1, step 3"}
    else:
        test = {"a": {"loss": 0.5, "accuracy": accuracy}, "b": {"loss": 4.0, "mae": mae}}
        val = {"a": {"loss": 0.5, "accuracy": 0.5}, "b": {"loss": 4.0, "mae": 3.0}}
        summary |= {"best_epoch": 2, "val": val, "test": test, "wall_time_s": wall}
        rows = []
        for epoch, seconds in enumerate(times, start=1):
            rows += [
                (epoch, 3 * epoch, "train", "a", "loss", 0.7 / epoch),
                (epoch, 3 * epoch, "train", "a", "weight", weights[0]),
                (epoch, 3 * epoch, "train", "b", "loss", 5.0 / epoch),
                (epoch, 3 * epoch, "train", "b", "weight", weights[1]),
                (epoch, 3 * epoch, "train", "all", "time_per_step_s", seconds),
                (epoch, 3 * epoch, "val", "a", "accuracy", 0.4 + 0.05 * epoch),
                (epoch, 3 * epoch, "val", "b", "mae", 4.0 - 0.5 * epoch),
                (epoch, 3 * epoch, "test", "a", "accuracy", accuracy),
                (epoch, 3 * epoch, "test", "b", "mae", mae),
            ]
        columns = ["epoch", "step", "split", "task", "metric", "value"]
        pd.DataFrame(rows, columns=columns).to_csv(folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    for job, spec in enumerate(JOBS):
        write_run(folder / str(job), *spec[:6], wall=spec[6])
    return folder


def row(table: pd.DataFrame, label: str) -> pd.Series:
    (index,) = table.index[table.label == label]
    return table.loc[index]


def test_run_folders_are_found_in_job_order_and_bad_paths_are_named(sweep: Path, tmp_path: Path) -> None:
    assert [p.name for p in find_run_dirs([sweep])] == [str(i) for i in range(8)]
    assert find_run_dirs([sweep / "3", sweep]) == find_run_dirs([sweep])  # a run and its sweep: no duplicate
    with pytest.raises(Exception, match="no such file"):
        find_run_dirs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no run"):
        find_run_dirs([tmp_path / "empty"])


def test_means_stds_seeds_delta_m_and_ranks_by_hand(sweep: Path) -> None:
    report = make_report([sweep])
    table = report.table
    assert list(table.label) == [EQUAL, PCGRAD, SINGLE]
    assert report.settings == ["architecture", "weighting"]
    equal, pcgrad, single = row(table, EQUAL), row(table, PCGRAD), row(table, SINGLE)
    assert (equal.n_seeds, equal.seeds) == (3, "0,1,2")
    assert (pcgrad.n_seeds, pcgrad.seeds) == (2, "0,1")  # the failed seed 2 is not counted

    # equal: accuracy (0.80 + 0.84 + 0.82) / 3 = 0.82, deviations -0.02, 0.02, 0: sample var 0.0008 / 2
    assert equal["a/accuracy_mean"] == pytest.approx(0.82)
    assert equal["a/accuracy_std"] == pytest.approx(math.sqrt(0.0008 / 2))
    # mae (2.0 + 2.2 + 2.4) / 3 = 2.2, deviations -0.2, 0, 0.2: var 0.08 / 2, std 0.2
    assert equal["b/mae_mean"] == pytest.approx(2.2)
    assert equal["b/mae_std"] == pytest.approx(0.2)
    # pcgrad: accuracy (0.90 + 0.86) / 2 = 0.88, std sqrt(2 * 0.02^2 / 1); mae 2.0, std sqrt(2 * 0.2^2)
    assert pcgrad["a/accuracy_mean"] == pytest.approx(0.88)
    assert pcgrad["a/accuracy_std"] == pytest.approx(math.sqrt(0.0008))
    assert pcgrad["b/mae_mean"] == pytest.approx(2.0)
    assert pcgrad["b/mae_std"] == pytest.approx(math.sqrt(0.08))

    # B (single-task, both seeds): accuracy (0.75 + 0.85) / 2 = 0.80, mae 2.0
    assert report.baseline.values == {"toy": pytest.approx({"a/accuracy": 0.80, "b/mae": 2.0})}
    # Δm% per run = mean(-(acc - 0.8) / 0.8 * 100, (mae - 2) / 2 * 100):
    #   equal:  seed 0: (0 + 0) / 2 = 0; seed 1: (-5 + 10) / 2 = 2.5; seed 2: (-2.5 + 20) / 2 = 8.75
    #           mean 3.75; deviations -3.75, -1.25, 5: var (14.0625 + 1.5625 + 25) / 2 = 20.3125
    #   pcgrad: seed 0: (-12.5 - 10) / 2 = -11.25; seed 1: (-7.5 + 10) / 2 = 1.25; mean -5, var 2 * 6.25^2
    #   single: seed 0: (6.25 + 0) / 2 = 3.125; seed 1: -3.125; mean 0, var 2 * 3.125^2
    assert equal.delta_m_mean == pytest.approx(3.75)
    assert equal.delta_m_std == pytest.approx(math.sqrt(20.3125))
    assert pcgrad.delta_m_mean == pytest.approx(-5.0)
    assert pcgrad.delta_m_std == pytest.approx(math.sqrt(2 * 6.25**2))
    assert single.delta_m_mean == pytest.approx(0.0)
    assert single.delta_m_std == pytest.approx(math.sqrt(2 * 3.125**2))

    # ranks: accuracy (higher better) pcgrad 0.88 -> 1, equal 0.82 -> 2, single 0.80 -> 3;
    #        mae (lower better) pcgrad 2.0 and single 2.0 tie -> 1.5 each, equal 2.2 -> 3
    assert equal.mean_rank == pytest.approx((2 + 3) / 2)
    assert pcgrad.mean_rank == pytest.approx((1 + 1.5) / 2)
    assert single.mean_rank == pytest.approx((3 + 1.5) / 2)

    # time per step: mean over seeds of each run's mean row: equal (0.011 + 0.013 + 0.015) / 3 = 0.013
    assert equal.time_per_step_s == pytest.approx(0.013)
    assert pcgrad.time_per_step_s == pytest.approx(0.025)
    assert single.time_per_step_s == pytest.approx(0.005)
    # wall time: the sum over seeds
    assert (equal.wall_time_s_sum, pcgrad.wall_time_s_sum, single.wall_time_s_sum) == (33.0, 42.0, 11.0)

    # best marks: pcgrad best accuracy, Δm% and rank; mae tied between pcgrad and single; single fastest
    assert pcgrad.best_in.split(";") == ["a/accuracy", "b/mae", "delta_m", "mean_rank"]
    assert single.best_in.split(";") == ["b/mae", "time_per_step_s"]
    assert equal.best_in == ""


def test_failed_job_is_listed_with_its_error_and_the_others_are_complete(sweep: Path) -> None:
    report = make_report([sweep])
    assert report.n_runs == 8
    assert sum(report.table.n_seeds) == 7
    (failed,) = report.failed.itertuples()
    assert failed.status == "failed" and failed.seeds == "2"
    assert failed.error == "TrainingError: loss of task b is NaN at epoch 1, step 3"
    assert failed.label == "architecture=hard_sharing weighting=pcgrad seed=2"
    markdown = render(report)
    assert "## Failed jobs" in markdown and "loss of task b is NaN" in markdown


def test_markdown_bolds_the_best_and_shows_mean_plus_minus_std(sweep: Path) -> None:
    table = comparison_table(make_report([sweep])).splitlines()
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:4] == ["configuration", "n", "a/accuracy ↑", "b/mae ↓"]
    assert "Δm% ↓" in header and "mean rank ↓" in header
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[2:]
    }
    assert cells[PCGRAD][2] == "**0.88 ± 0.028**"  # std sqrt(0.0008) = 0.02828 to 2 significant digits
    assert cells[EQUAL][2] == "0.82 ± 0.02"
    assert cells[PCGRAD][header.index("Δm% ↓")] == "**-5.00 ± 8.84**"
    assert cells[EQUAL][header.index("Δm% ↓")] == "+3.75 ± 4.51"


def test_one_seed_has_no_std_and_no_baseline_means_no_delta_column(tmp_path: Path) -> None:
    write_run(tmp_path / "s" / "0", "hard_sharing", "equal", 0, 0.8, 2.0)
    write_run(tmp_path / "s" / "1", "hard_sharing", "pcgrad", 0, 0.9, 1.0)
    report = make_report([tmp_path / "s"])
    assert "delta_m_mean" not in report.table and report.baseline is None
    assert report.table["a/accuracy_std"].isna().all()
    assert "Δm%" not in comparison_table(report)
    assert "0.8 ±" not in comparison_table(report)
    assert math.isnan(sample_std([0.5])) and sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2))


def test_config_values_split_configurations_but_seed_and_name_do_not(tmp_path: Path) -> None:
    for i, (seed, lr) in enumerate([(0, 0.001), (1, 0.001), (0, 0.01), (1, 0.01)]):
        write_run(
            tmp_path / str(i), "hard_sharing", "equal", seed, 0.8, 2.0, extra_config={"optim": {"lr": lr}}
        )
    configurations = group_configurations(load_runs([tmp_path]))
    assert [c.label for c in configurations] == ["optim.lr=0.001", "optim.lr=0.01"]
    assert [c.seeds for c in configurations] == [[0, 1], [0, 1]]


def test_baseline_is_matched_by_data_set(tmp_path: Path) -> None:
    write_run(tmp_path / "0", "hard_sharing", "equal", 0, 0.9, 1.0, data="toy")
    write_run(tmp_path / "1", "hard_sharing", "equal", 0, 0.6, 3.0, data="other")
    write_run(tmp_path / "2", "single_task", "equal", 0, 0.8, 2.0, data="toy")
    write_run(tmp_path / "3", "single_task", "equal", 0, 0.5, 4.0, data="other")
    table = make_report([tmp_path]).table
    # toy: (-(0.9 - 0.8) / 0.8 * 100 + (1 - 2) / 2 * 100) / 2 = (-12.5 - 50) / 2 = -31.25
    # other: (-(0.6 - 0.5) / 0.5 * 100 + (3 - 4) / 4 * 100) / 2 = (-20 - 25) / 2 = -22.5
    assert row(table, "data=toy architecture=hard_sharing").delta_m_mean == pytest.approx(-31.25)
    assert row(table, "data=other architecture=hard_sharing").delta_m_mean == pytest.approx(-22.5)


def test_explicit_baseline_and_val_split(tmp_path: Path) -> None:
    write_run(tmp_path / "mtl" / "0", "hard_sharing", "equal", 0, 0.9, 1.0)
    write_run(tmp_path / "stl" / "0", "single_task", "equal", 0, 0.8, 2.0)
    report = make_report([tmp_path / "mtl"], baseline=[tmp_path / "stl"])
    assert report.table.delta_m_mean.iloc[0] == pytest.approx(-31.25)  # as in the data-set test above
    # on val every run has accuracy 0.5 and mae 3.0, so the run equals its baseline
    val = make_report([tmp_path / "mtl"], baseline=[tmp_path / "stl"], split="val")
    assert val.table["a/accuracy_mean"].iloc[0] == 0.5 and val.table.delta_m_mean.iloc[0] == 0.0


def test_directions_missing_from_an_old_summary_come_from_the_task_kinds(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "0", "hard_sharing", "equal", 0, 0.8, 2.0, directions=False))
    assert run.directions() == DIRECTIONS
    assert baseline_from([run], "test", "x") is None  # not a single-task run


def test_cli_writes_tables_and_plots_into_the_sweep(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert PCGRAD in printed and "## Failed jobs" in printed
    csv = pd.read_csv(sweep / "summary.csv")
    assert list(csv.status) == ["completed"] * 3 + ["failed"]
    assert csv.loc[csv.label == PCGRAD, "delta_m_mean"].item() == pytest.approx(-5.0)
    assert csv["a/accuracy_mean"].dtype == float and csv.n_seeds.iloc[:3].tolist() == [3, 2, 2]
    for name in ("summary.md", "val_curves.png", "task_weights.png", "tradeoff.png"):
        assert (sweep / name).stat().st_size > 0, name
    assert "![tradeoff](tradeoff.png)" in (sweep / "summary.md").read_text()
    assert not (sweep / "cosines.png").exists()  # no grad_cosine rows: no plot of them


def test_cli_out_baseline_no_plots_and_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "mtl" / "0", "hard_sharing", "equal", 0, 0.9, 1.0)
    write_run(tmp_path / "stl" / "0", "single_task", "equal", 0, 0.8, 2.0)
    out = tmp_path / "out"
    args = [str(tmp_path / "mtl"), "--baseline", str(tmp_path / "stl"), "--out", str(out), "--no-plots"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "summary.csv", "summary.md"]
    assert pd.read_csv(out / "summary.csv").delta_m_mean.item() == pytest.approx(-31.25)
    capsys.readouterr()
    assert main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere: no such file or folder" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "holds no run" in capsys.readouterr().err


def test_optuna_best_trial_is_shown(sweep: Path) -> None:
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"optim.lr": 0.003}, "best_value": 0.91})
    )
    markdown = render(make_report([sweep]))
    assert (
        "## Optuna: best trial" in markdown
        and "best value: 0.91" in markdown
        and "`optim.lr=0.003`" in markdown
    )


def test_run_curves_png(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run", "hard_sharing", "uncertainty", 0, 0.8, 2.0, weights=(0.7, 1.3))
    assert plot_run(folder) == folder / "curves.png" and (folder / "curves.png").stat().st_size > 0
    failed = write_run(tmp_path / "failed", "hard_sharing", "equal", 0, None, None)
    assert plot_run(failed) is None  # no metrics.csv: nothing to draw


def test_static_weights_form_the_front_in_the_tradeoff_plot(tmp_path: Path) -> None:
    for i, (w, acc, mae) in enumerate([(0.2, 0.7, 1.5), (0.5, 0.8, 2.0), (0.8, 0.9, 2.5)]):
        extra = {"weighting": {"_target_": "mtlrun.weighting.static.Static", "weights": {"a": w, "b": 1 - w}}}
        write_run(tmp_path / str(i), "hard_sharing", "static", 0, acc, mae, extra_config=extra)
    write_run(tmp_path / "3", "hard_sharing", "pcgrad", 0, 0.85, 1.9)
    report = make_report([tmp_path])
    assert [c.label for c in report.configurations][:2] == [
        "weighting=static weighting.weights.a=0.2",
        "weighting=static weighting.weights.a=0.5",
    ]
    from mtlrun.report.plots import plot_tradeoff

    assert plot_tradeoff(report, tmp_path / "t.png") == tmp_path / "t.png"


def test_a_plotting_error_in_the_runner_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mtlrun.report import plots
    from mtlrun.trainer import runner

    def broken(run_dir: Path) -> None:
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "plot_run", broken)
    runner._plot_curves(tmp_path)  # must not raise
    assert "could not draw" in caplog.text and "no display" in caplog.text


def test_sweep_callback_keeps_failed_jobs_when_the_report_fails(
    sweep: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from omegaconf import OmegaConf

    from mtlrun import callbacks
    from mtlrun.report import cli

    monkeypatch.setattr(callbacks, "FAILED_JOBS", [])
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "trainer": {"plots": False}})
    callbacks.SweepStatus().on_multirun_end(config)
    failed_jobs = callbacks.FAILED_JOBS  # what makes `mtlrun -m` exit 1
    assert failed_jobs == [str(sweep / "5")]
    assert (sweep / "summary.csv").is_file() and not (sweep / "val_curves.png").exists()  # plots off

    def broken(paths: list) -> None:
        raise ValueError("corrupt table")

    monkeypatch.setattr(cli, "make_report", broken)
    monkeypatch.setattr(callbacks, "FAILED_JOBS", [])
    callbacks.SweepStatus().on_multirun_end(config)
    failed_jobs = callbacks.FAILED_JOBS  # what makes `mtlrun -m` exit 1
    assert failed_jobs == [str(sweep / "5")]
    assert "could not write the sweep report" in caplog.text and "corrupt table" in caplog.text


def test_several_inputs_without_out_go_to_a_new_reports_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(tmp_path / "a" / "0", "hard_sharing", "equal", 0, 0.9, 1.0)
    write_run(tmp_path / "b" / "0", "single_task", "equal", 0, 0.8, 2.0)
    monkeypatch.chdir(tmp_path)
    assert main(["a", "b", "--no-plots"]) == 0
    (written,) = (tmp_path / "outputs" / "reports").glob("*/*/summary.csv")
    assert list(pd.read_csv(written).label) == ["architecture=hard_sharing", "architecture=single_task"]


def test_the_static_front_keeps_the_points_no_other_beats_in_order_of_x():
    from mtlrun.report.plots import pareto_front

    # lower is better on both: (1, 5), (2, 3), (4, 1) trade off; (3, 4) is beaten by (2, 3)
    xs, ys = [4.0, 1.0, 3.0, 2.0], [1.0, 5.0, 4.0, 3.0]
    assert pareto_front(xs, ys, x_up=False, y_up=False) == [1, 3, 0]
    # higher is better on x: (4, 1) beats everything it is not worse than on y
    assert pareto_front(xs, ys, x_up=True, y_up=False) == [0]


def test_single_task_runs_with_fixed_weights_are_not_points_of_the_static_front(tmp_path):
    from mtlrun.report.plots import _is_static

    static = write_run(tmp_path / "s", "hard_sharing", "static", 0, 0.8, 2.0)
    single = write_run(tmp_path / "t", "single_task", "equal", 0, 0.8, 2.0)
    adaptive = write_run(tmp_path / "u", "hard_sharing", "uncertainty", 0, 0.8, 2.0)
    assert [_is_static([load_run(p)]) for p in (static, single, adaptive)] == [True, False, False]
