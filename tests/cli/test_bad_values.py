"""The catalogue of bad values, through the real `mtlrun` command: each gets a short error that names the key
(or the file) and what would work, a non-zero exit, no traceback, and nothing trained.

A new option's bad values are tested by adding a line to ``CASES``. In ``argv``, ``{tmp}`` stands for the
case's own empty folder (``files`` writes what the case reads into it). Training commands (``training=True``)
get ``debug=smoke hydra.run.dir={tmp}/run`` appended. The commands run side by side (see ``outcomes``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # the arguments after `mtlrun`
    expect: tuple[str, ...]  # every one of these appears in the error (the key, the valid range, the fix)
    files: Callable[[Path], None] | None = None  # writes the files the case needs into {tmp}
    training: bool = True  # a training command: smoke-sized, into {tmp}/run


ROOT = Path(__file__).resolve().parents[2]
FEED = ROOT / "mtlrun" / "examples" / "feed" / "feed.csv"  # the table experiment=tabular_example reads


def feed_lines(n: int) -> list[str]:
    """The header and the first ``n`` rows of the example feed (its columns are what the preset declares)."""
    return FEED.read_text().splitlines()[: n + 1]


def write_bytes(name: str, content: bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content)

    return write


def write_duplicated_csv(tmp: Path) -> None:
    """The feed with a second ``click`` column at the end (pandas would read it as ``click.1``)."""
    header, *rows = feed_lines(40)
    (tmp / "dup.csv").write_text("\n".join([f"{header},click", *(f"{row},1" for row in rows)]) + "\n")


def write_duplicated_parquet(tmp: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["x", "x"]), tmp / "dup.parquet"
    )


def write_checkpoint_as_csv(tmp: Path) -> None:
    import torch

    torch.save({"model": {"w": torch.zeros(3)}}, tmp / "weights.csv")


def write_parquet_as_csv(tmp: Path) -> None:
    import pandas as pd

    pd.read_csv(FEED, nrows=20).to_parquet(tmp / "feed.csv")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def fake_run(tmp: Path) -> None:
    """A folder `mtlrun predict` takes for a run (config.yaml, best_model.pt) and a file to predict on:
    the refusals of ``out`` come before either is read."""
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text("seed: 0\n")
    (tmp / "run" / "best_model.pt").write_bytes(b"")
    (tmp / "new.csv").write_text("\n".join(feed_lines(5)) + "\n")


def fake_run_and_symlink(tmp: Path) -> None:
    fake_run(tmp)
    (tmp / "link.csv").symlink_to(tmp / "new.csv")


def fake_run_and_old_result(tmp: Path) -> None:
    fake_run(tmp)
    (tmp / "old.csv").write_text("click\n0.5\n")


def unreadable_sweep(tmp: Path) -> None:
    """A sweep of two runs, neither readable: summary.json cut off mid-write, and one that is a JSON list."""
    for job, text in (("0", '{"status": "compl'), ("1", "[1, 2]")):
        (tmp / "sweep" / job).mkdir(parents=True)
        (tmp / "sweep" / job / "summary.json").write_text(text)


def task_named(name: str) -> Callable[[Path], None]:
    """An experiment file {tmp}/conf/experiment/named.yaml adding a task ``name`` (the command line cannot
    spell ``~`` or ``/`` in a key)."""

    def write(tmp: Path) -> None:
        (tmp / "conf" / "experiment").mkdir(parents=True)
        text = f"# @package _global_\ntasks:\n  {name}:\n    kind: regression\n    target: sum\n"
        (tmp / "conf" / "experiment" / "named.yaml").write_text(text)

    return write


TABLE = ("experiment=tabular_example",)
RESERVED = ("rename the task", "Reserved names: all, model")

CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ trainer settings and seed
    "epochs zero": Case(("trainer.epochs=0",), ("trainer.epochs", ">= 1")),
    "epochs missing": Case(
        ("trainer.epochs=???",), ("trainer.epochs: no value", "conf/trainer/default.yaml")
    ),
    "epochs negative": Case(("trainer.epochs=-3",), ("trainer.epochs", ">= 1")),
    "batch size zero": Case(("trainer.batch_size=0",), ("trainer.batch_size", ">= 1")),
    "eval batch size zero": Case(("trainer.eval_batch_size=0",), ("trainer.eval_batch_size", ">= 1")),
    "eval every zero": Case(("trainer.eval_every=0",), ("trainer.eval_every", ">= 1")),
    "limit train batches zero": Case(
        ("trainer.limit_train_batches=0",), ("trainer.limit_train_batches", ">= 1", "null")
    ),
    "limit eval batches zero": Case(
        ("trainer.limit_eval_batches=0",), ("trainer.limit_eval_batches", ">= 1", "null")
    ),
    "grad clip zero": Case(("trainer.grad_clip=0",), ("trainer.grad_clip", "> 0", "null")),
    "cosine sampling negative": Case(
        ("trainer.grad_cosine_every=-1",), ("trainer.grad_cosine_every", ">= 0")
    ),
    "checkpoint every zero": Case(("trainer.checkpoint_every=0",), ("trainer.checkpoint_every", ">= 1")),
    "checkpoint minutes zero": Case(
        ("trainer.checkpoint_minutes=0",), ("trainer.checkpoint_minutes", "> 0", "null")
    ),
    "seed negative": Case(("seed=-1",), ("seed", ">= 0")),
    "epochs not a number": Case(("trainer.epochs=many",), ("trainer.epochs",)),
    # ------------------------------------------------------------------ learning rates
    "lr zero": Case(("optim.optimizer.lr=0",), ("optim.optimizer.lr", "> 0")),
    "lr negative": Case(("optim.optimizer.lr=-0.1",), ("optim.optimizer.lr", "> 0")),
    "group lr zero": Case(("optim.groups.heads.lr=0",), ("optim.groups.heads.lr", "> 0")),
    "task group lr negative": Case(
        ("+optim.groups.heads.sum.lr=-1e-3",), ("optim.groups.heads.sum.lr", "> 0")
    ),
    # ------------------------------------------------------------------ table files (data=tabular)
    "table empty file": Case(
        (*TABLE, "data.path={tmp}/empty.csv"),
        ("empty.csv", "the file is empty (0 bytes)", "data.path"),
        files=write_bytes("empty.csv", b""),
    ),
    "table header without rows": Case(
        (*TABLE, "data.path={tmp}/header.csv"),
        ("header.csv", "a header but no rows", "add the rows"),
        files=lambda tmp: (tmp / "header.csv").write_text(feed_lines(0)[0] + "\n"),
    ),
    "table duplicated column csv": Case(
        (*TABLE, "data.path={tmp}/dup.csv"),
        ("dup.csv", "column 'click' appears 2 times in the header (columns 12, 17)", "rename or remove"),
        files=write_duplicated_csv,
    ),
    "table duplicated column parquet": Case(
        (*TABLE, "data.path={tmp}/dup.parquet"),
        ("dup.parquet", "column 'x' appears 2 times in the header (columns 1, 2)", "rename or remove"),
        files=write_duplicated_parquet,
    ),
    "table random bytes as csv": Case(
        (*TABLE, "data.path={tmp}/random.csv"),
        ("random.csv", "not a CSV text file", "binary data", "data.path", "CSV (UTF-8 text) or Parquet"),
        files=write_bytes("random.csv", bytes(range(256)) * 8),
    ),
    "table png as csv": Case(
        (*TABLE, "data.path={tmp}/image.csv"),
        ("image.csv", "not a CSV text file, it holds a PNG image", "data.path"),
        files=write_bytes("image.csv", PNG),
    ),
    "table torch checkpoint as csv": Case(
        (*TABLE, "data.path={tmp}/weights.csv"),
        ("weights.csv", "not a CSV text file", "torch .pt checkpoint"),
        files=write_checkpoint_as_csv,
    ),
    "table parquet named csv": Case(
        (*TABLE, "data.path={tmp}/feed.csv"),
        ("feed.csv", "a Parquet file (name it .parquet)"),
        files=write_parquet_as_csv,
    ),
    # ------------------------------------------------------------------ predict: never overwrite
    "predict out is its input": Case(
        ("predict", "run={tmp}/run", "data.path={tmp}/new.csv", "out={tmp}/new.csv"),
        ("out=", "new.csv: is the input file data.path=", "pick another out=FILE", "new_predictions.csv"),
        files=fake_run,
        training=False,
    ),
    "predict out is its input by a relative path": Case(
        ("predict", "run={tmp}/run", "data.path={tmp}/new.csv", "out=./new.csv"),
        ("out=new.csv: is the input file",),
        files=fake_run,
        training=False,
    ),
    "predict out is a symlink to its input": Case(
        ("predict", "run={tmp}/run", "data.path={tmp}/new.csv", "out={tmp}/link.csv"),
        ("link.csv: is the input file",),
        files=fake_run_and_symlink,
        training=False,
    ),
    "predict out exists": Case(
        ("predict", "run={tmp}/run", "data.path={tmp}/new.csv", "out={tmp}/old.csv"),
        ("old.csv: the file already exists", "pick another name", "delete it first"),
        files=fake_run_and_old_result,
        training=False,
    ),
    # ------------------------------------------------------------------ report: no readable run
    "report every run unreadable": Case(
        ("report", "{tmp}/sweep"),
        (
            "sweep/0/summary.json: not valid JSON",
            "sweep/1/summary.json: holds a JSON list",
            "none of its 2 run folder(s) could be read",
        ),
        files=unreadable_sweep,
        training=False,
    ),
    # ------------------------------------------------------------------ reserved task names
    "task named all": Case(
        ("+tasks.all.kind=regression", "+tasks.all.target=sum"), ("tasks.all", "'all' is reserved", *RESERVED)
    ),
    "task named model": Case(
        ("architecture=soft_sharing", "+tasks.model.kind=regression", "+tasks.model.target=sum"),
        ("tasks.model", "'model' is reserved", *RESERVED),
    ),
    "task name with a tilde": Case(
        ("--config-dir", "{tmp}/conf", "experiment=named"),
        ("tasks.a~b", "contains '~'", *RESERVED),
        files=task_named("a~b"),
    ),
    "task name with a slash": Case(
        ("--config-dir", "{tmp}/conf", "experiment=named"),
        ("tasks.a/b", "contains '/'", *RESERVED),
        files=task_named("a/b"),
    ),
    # ------------------------------------------------------------------ files and folders of runs
    "config dir with a yaml syntax error": Case(
        ("--config-dir", "{tmp}/conf", "experiment=broken"),
        ("broken.yaml", "not valid YAML", "line 3, column 1", "fix the file"),
        files=write_bytes("conf/experiment/broken.yaml", b"# @package _global_\ntrainer: {epochs: [1,\n"),
    ),
    "output folder that cannot be written": Case(
        ("debug=smoke", "hydra.run.dir={tmp}/a_file/run"),
        ("hydra.run.dir", "cannot write into", "a_file/run", "Not a directory", "choose a folder"),
        files=write_bytes("a_file", b"not a folder\n"),
        training=False,
    ),
    "resume of a folder that does not exist": Case(
        ("resume={tmp}/nowhere",), ("resume=", "nowhere: no such run folder"), training=False
    ),
    "resume of a folder that is not a run": Case(
        ("resume={tmp}",), ("resume=", "has no config.yaml", "pass the folder of a run"), training=False
    ),
    "resume with a corrupted checkpoint": Case(
        ("resume={tmp}/run",),
        ("checkpoint.pt is damaged", "Start the run again"),
        files=lambda tmp: interrupted_run(tmp / "run", checkpoint=b"PK\x03\x04 cut short"),
        training=False,
    ),
    "resume with a corrupted config": Case(
        ("resume={tmp}/run",),
        ("config.yaml is not a readable config", "start the run again"),
        files=lambda tmp: interrupted_run(tmp / "run", config="trainer: {epochs: [1,\n"),
        training=False,
    ),
}


def interrupted_run(folder: Path, config: str | None = None, checkpoint: bytes | None = None) -> None:
    """A run folder as a SIGTERM leaves it (its config, status interrupted), with ``config`` or ``checkpoint``
    as the bytes of a damaged file."""
    from conftest import compose_cfg
    from omegaconf import OmegaConf

    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        config or OmegaConf.to_yaml(compose_cfg(["debug=smoke"]), resolve=True)
    )
    (folder / "summary.json").write_text('{"status": "interrupted", "signal": "SIGTERM"}\n')
    if checkpoint is not None:
        (folder / "checkpoint.pt").write_bytes(checkpoint)


def mtlrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, cwd=cwd, timeout=240
    )


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{case: (its folder, the finished `mtlrun` process)} for every selected case. The files are written
    first, then the commands run side by side: each process spends ~2 s importing torch."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_bad_value_is_refused_with_a_message" and hasattr(item, "callspec")
    ]
    commands = {}
    for name in selected:
        case, folder = CASES[name], tmp_path_factory.mktemp("case")
        if case.files is not None:
            case.files(folder)
        argv = [arg.format(tmp=folder) for arg in case.argv]
        if case.training:
            argv += ["debug=smoke", f"hydra.run.dir={folder / 'run'}"]
        commands[name] = (folder, argv)
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        results = pool.map(lambda command: mtlrun(*command[1], cwd=command[0]), commands.values())
        return {name: (commands[name][0], result) for name, result in zip(commands, results, strict=True)}


@pytest.mark.parametrize("name", CASES)
def test_bad_value_is_refused_with_a_message(name: str, outcomes: dict) -> None:
    case = CASES[name]
    folder, result = outcomes[name]
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for text in case.expect:
        assert text in output, f"{text!r} not in:\n{output}"
    assert len(output.strip().splitlines()) <= 6, f"not a short message:\n{output}"
    if case.training:
        assert not (folder / "run" / "metrics.csv").exists(), "it trained"
