"""The real `mtlrun` command in a subprocess, as a user runs it: files, tables, sweeps, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_cfg, file_data_overrides

SMOKE = ["debug=smoke"]
RUN_FILES = ["config.yaml", "mtlrun.log", "metrics.csv", "summary.json", "checkpoint.pt", "best_model.pt"]


def mtlrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, cwd=cwd, timeout=240
    )


def run_in(folder: Path, *overrides: str) -> subprocess.CompletedProcess:
    return mtlrun(*SMOKE, f"hydra.run.dir={folder}", *overrides)


def without_timing(table: pd.DataFrame) -> pd.DataFrame:
    """Every row but the wall-clock ones (time per step), which no two runs share."""
    return table[table.metric != "time_per_step_s"].reset_index(drop=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "run"
    result = run_in(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_smoke_run_writes_every_file(smoke_run: Path) -> None:
    for name in RUN_FILES:
        assert (smoke_run / name).is_file(), name
    assert (smoke_run / ".hydra" / "overrides.yaml").is_file()
    assert "results at epoch" in (smoke_run / "mtlrun.log").read_text()


def test_metrics_csv_is_long_format_with_every_row(smoke_run: Path) -> None:
    table = pd.read_csv(smoke_run / "metrics.csv")
    assert list(table.columns) == ["epoch", "step", "split", "task", "metric", "value"]
    assert sorted(table.epoch.unique()) == [1, 2]
    assert set(table.split) == {"train", "val", "test"}
    assert set(table.task) == {"left", "right", "sum", "all"}
    train = table[(table.split == "train") & (table.task != "all")]
    assert set(train.metric) == {"loss", "weight"}
    assert len(train) == 2 * 3 * 2  # epochs x tasks x (loss, weight)
    every = table[table.task == "all"]  # per epoch: time per step, each parameter group's learning rate
    assert set(every.metric) == {"time_per_step_s", "lr/shared", "lr/heads"} and len(every) == 2 * 3
    assert (every[every.metric == "time_per_step_s"].value > 0).all()
    lr = every[every.metric == "lr/shared"].value.tolist()
    assert 3e-3 > lr[0] > lr[1] == pytest.approx(0.0)  # optim.optimizer.lr 3e-3, cosine decay to 0 at the end
    assert (train[train.metric == "weight"].value == 1.0).all()  # equal weighting
    for split in ("val", "test"):
        rows = table[table.split == split]
        assert set(rows[rows.task == "left"].metric) == {"loss", "accuracy", "f1_macro"}
        assert set(rows[rows.task == "sum"].metric) == {"loss", "mae", "rmse"}
    assert table.value.notna().all()
    assert table.step.max() == 6  # 2 epochs x 3 steps (debug=smoke)


def test_summary_records_selection_timing_and_parameters(smoke_run: Path) -> None:
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["error"] is None
    assert summary["best_epoch"] in (1, 2)
    assert set(summary["val"]) == set(summary["test"]) == {"left", "right", "sum"}
    assert 0.0 <= summary["test"]["left"]["accuracy"] <= 1.0
    assert summary["wall_time_s"] > 0 and summary["time_per_step_s"] > 0
    assert summary["steps"] == 6
    params = summary["parameters"]
    assert params["total"] == params["shared"] + params["mixing"] + sum(
        v for k, v in params.items() if k.startswith("task.")
    )
    assert {g["name"] for g in summary["param_groups"]} == {"shared", "heads"}
    assert summary["backward_passes_per_step"] == 1
    table = pd.read_csv(smoke_run / "metrics.csv")
    best = table[(table.epoch == summary["best_epoch"]) & (table.split == "test")]
    value = best[(best.task == "left") & (best.metric == "accuracy")].value.item()
    assert value == pytest.approx(summary["test"]["left"]["accuracy"])


def test_multirun_makes_one_folder_per_job_and_the_same_seed_gives_identical_metrics(
    tmp_path: Path, smoke_run: Path
) -> None:
    result = mtlrun("-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("0", "1"):
        summary = json.loads((tmp_path / job / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["seed"] == int(job)
        assert (tmp_path / job / "metrics.csv").is_file()
    # job 0 repeats the single run (seed 0) in another process, after nothing: the same numbers exactly
    single = without_timing(pd.read_csv(smoke_run / "metrics.csv"))
    pd.testing.assert_frame_equal(without_timing(pd.read_csv(tmp_path / "0" / "metrics.csv")), single)
    other = without_timing(pd.read_csv(tmp_path / "1" / "metrics.csv"))
    assert not other.value.equals(single.value)  # another seed, other numbers


def test_failed_job_in_a_sweep_keeps_the_others_and_exits_nonzero(tmp_path: Path) -> None:
    result = mtlrun("-m", *SMOKE, "trainer.monitor=loss,nonsense", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0
    good = json.loads((tmp_path / "0" / "summary.json").read_text())
    bad = json.loads((tmp_path / "1" / "summary.json").read_text())
    assert good["status"] == "completed"
    assert bad["status"] == "failed" and "trainer.monitor" in bad["error"]
    assert "trainer.monitor" in (tmp_path / "1" / "mtlrun.log").read_text()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("weighting=nope", "nope"),  # unknown option of a group
        ("trainer.epoch=3", "epoch"),  # unknown key (typo of epochs)
        ("+trainer.epoch=3", "trainer.epoch"),  # a typo added with +, which Hydra lets through
        ("trainer.epochs=abc", "epochs"),  # wrong type
        ("trainer.device=tpu", "device"),  # value outside an enum
        # these fail after torch is imported (~6 s of process start each): two stay in the fast tier
        ("+data.train_pair=5", "train_pair"),  # unknown option of the chosen data class
        pytest.param(
            "data.offset=1.5", "data.offset", marks=pytest.mark.slow
        ),  # wrong type for the data class
        ("tasks.left.num_classes=5", "out of range"),  # labels that do not fit the task
        pytest.param("optim.groups.heads.lr=fast", "lr", marks=pytest.mark.slow),  # wrong type in a group
    ],
)
def test_bad_override_fails_with_a_message_naming_it(tmp_path: Path, override: str, named: str) -> None:
    result = run_in(tmp_path / "bad", override)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert named in output
    assert "Traceback" not in output


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_table(tmp_path: Path) -> None:
    folder = tmp_path / "nan"
    result = run_in(folder, "optim.optimizer.lr=1e12", "trainer.limit_train_batches=20", "trainer.epochs=3")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "learning rate" in output and "Traceback" not in output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed" and "TrainingError" in summary["error"]
    assert list(pd.read_csv(folder / "metrics.csv").columns)[0] == "epoch"


def test_an_occupied_output_folder_is_refused(smoke_run: Path) -> None:
    before = (smoke_run / "metrics.csv").read_text()
    result = run_in(smoke_run)
    assert result.returncode != 0
    assert "already holds files" in result.stdout + result.stderr
    assert (smoke_run / "metrics.csv").read_text() == before


def test_help_and_cfg_job_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['mtlrun', '--cfg', 'job']\n"
        "from mtlrun.cli import main\n"
        "main()\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "torch imported: False" in result.stdout
    assert "_target_: mtlrun.architecture.hard_sharing.HardSharing" in result.stdout
    help_text = mtlrun("--help")
    assert help_text.returncode == 0
    assert (
        "weighting: aligned_mtl, cagrad" in help_text.stdout
        and "== Configuration groups ==" in help_text.stdout
    )


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_trains_at_smoke_size(tmp_path: Path, experiment: str) -> None:
    """In-process (the runner the CLI calls, without a ~7 s interpreter and import start per preset); the
    slow tier runs each preset through the real command."""
    from mtlrun.trainer.runner import run

    files = file_data_overrides([f"experiment={experiment}"])  # presets on the user's files read tiny ones
    cfg = compose_cfg([f"experiment={experiment}", *SMOKE, *files])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 6


@pytest.mark.slow  # one `mtlrun` process per preset (~8 s each); the fast tier trains them in-process above
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_runs_through_the_cli(tmp_path: Path, experiment: str) -> None:
    files = file_data_overrides([f"experiment={experiment}"])
    result = run_in(tmp_path / experiment, f"experiment={experiment}", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / experiment / "summary.json").read_text())["status"] == "completed"


def weighting_options(gradient_based: bool | None = None) -> list[str]:
    """Every conf/weighting option; with gradient_based, only the options of that family."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from mtlrun.weighting.base import GradientWeighting

    options = []
    for path in sorted((Path(__file__).parents[2] / "conf" / "weighting").glob("*.yaml")):
        cls = get_class(OmegaConf.load(path)._target_)
        if gradient_based is None or issubclass(cls, GradientWeighting) == gradient_based:
            options.append(path.stem)
    return options


@pytest.mark.slow  # a catalogue-wide sweep (15-25 s); in-process catalogue tests cover the fast tier
def test_every_weighting_method_runs_through_the_cli(tmp_path: Path) -> None:
    options = weighting_options()
    result = mtlrun("-m", *SMOKE, f"weighting={','.join(options)}", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job, option in enumerate(options):
        summary = json.loads((tmp_path / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed", (option, summary.get("error"))
        table = pd.read_csv(tmp_path / str(job) / "metrics.csv")
        weights = table[(table.split == "train") & (table.metric == "weight")]
        assert len(weights) == 2 * 3 and weights.value.notna().all(), option


@pytest.mark.slow  # a catalogue-wide sweep (15-25 s); in-process catalogue tests cover the fast tier
def test_gradient_methods_run_on_the_shared_representation(tmp_path: Path) -> None:
    options = weighting_options(gradient_based=True)
    assert options, "the catalogue ships gradient-based methods"
    result = mtlrun(
        "-m",
        *SMOKE,
        f"weighting={','.join(options)}",
        "++weighting.grad_source=representation",
        "trainer.grad_cosine_every=1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job, option in enumerate(options):
        summary = json.loads((tmp_path / str(job) / "summary.json").read_text())
        assert summary["status"] == "completed", (option, summary.get("error"))
        assert summary["weighting"]["grad_source"] == "representation"
        assert summary["backward_passes_per_step"] == 1 + 1  # to the representation through the heads, trunk
        table = pd.read_csv(tmp_path / str(job) / "metrics.csv")
        cosines = table[table.metric == "grad_cosine"]
        assert set(cosines.task) == {"left~right", "left~sum", "right~sum"}, option
        assert cosines.value.between(-1, 1).all(), option


@pytest.mark.slow  # a catalogue-wide sweep (15-25 s); in-process catalogue tests cover the fast tier
def test_every_architecture_runs_through_the_cli_on_images_and_vectors(tmp_path: Path) -> None:
    options = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "architecture").glob("*.yaml"))
    # ESMM serves a binary click -> conversion chain only (its own test file runs it through the CLI on the feed)
    options = [o for o in options if o != "esmm"]
    result = mtlrun(
        "-m",
        *SMOKE,
        f"architecture={','.join(options)}",
        "data=multidigits,mmoe_synthetic",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/summary.json")]
    assert len(summaries) == 2 * len(options)
    assert all(s["status"] == "completed" for s in summaries), [s.get("error") for s in summaries]
    assert {s["data"]["name"] for s in summaries} == {"multidigits", "mmoe_synthetic"}


def test_the_tabular_example_and_its_predictions_run_from_any_folder(tmp_path: Path) -> None:
    """The example table ships inside the package (``${mtlrun.example:...}``): the documented commands
    need no file in the folder they start from."""
    trained = mtlrun("experiment=tabular_example", *SMOKE, "hydra.run.dir=feed", cwd=tmp_path)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    predicted = mtlrun(
        "predict",
        "run=feed",
        "data.path=${mtlrun.example:feed/feed_new.csv}",
        "keep=[impression_id]",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert len(pd.read_csv(tmp_path / "feed" / "predictions" / "feed_new.csv")) == 500


def test_summary_records_where_the_numbers_came_from(smoke_run: Path) -> None:
    import platform

    import torch

    import mtlrun

    summary = json.loads((smoke_run / "summary.json").read_text())
    origin = summary["provenance"]
    assert origin["mtlrun"] == mtlrun.__version__
    assert origin["python"] == platform.python_version() and origin["torch"] == torch.__version__
    assert origin["device"] == summary["device"] == "cpu" and origin["threads"] >= 1
    assert origin["command"] == f"mtlrun debug=smoke hydra.run.dir={smoke_run}"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(mtlrun.__file__).parent
    )
    if head.returncode == 0:  # run from this checkout (CI clones it): the commit, and whether it had changes
        assert origin["git"]["commit"] == head.stdout.strip() and isinstance(origin["git"]["dirty"], bool)
    assert summary["pid"] > 0 and summary["signal"] is None and summary["resumes"] == []
    assert "\r" not in (smoke_run / "metrics.csv").read_text()  # plain line ends
