"""Start-up of the real `mtlrun` command: what `--help`, `--cfg job` and a refused config import (never torch),
what `--help` lists (every group and option of conf/), and ``trainer.num_threads``: its range, the count a run
records in summary.json, the parallel launcher's share it overrides, and a resume that changes it.

Each command runs in a wrapper that writes, as the process exits, which heavy modules it had imported: a check
of ``sys.modules`` itself, whatever imported them (``-X importtime`` output would have to be parsed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONF, compose_cfg
from omegaconf import OmegaConf

from mtlrun import threads
from mtlrun.resume import continued_config

HEAVY = ("torch", "torchmetrics", "pandas", "sklearn", "matplotlib", "scipy")
WRAPPER = (
    "import atexit, json, os, sys\n"
    "heavy = json.loads(os.environ['MTLRUN_TEST_HEAVY'])\n"
    "def record():\n"
    "    with open(os.environ['MTLRUN_TEST_MODULES'], 'w') as file:\n"
    "        json.dump(sorted(m for m in heavy if m in sys.modules), file)\n"
    "atexit.register(record)\n"
    "sys.argv = ['mtlrun', *sys.argv[1:]]\n"
    "from mtlrun.cli import main\n"
    "main()\n"
)


def mtlrun(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`mtlrun args` in a subprocess (working folder ``tmp_path``); its result and the heavy modules (`HEAVY`)
    it had imported when it exited."""
    modules = tmp_path / "modules.json"
    env = {**os.environ, "MTLRUN_TEST_HEAVY": json.dumps(HEAVY), "MTLRUN_TEST_MODULES": str(modules)}
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    assert modules.exists(), result.stdout + result.stderr
    return result, json.loads(modules.read_text())


def shipped_groups() -> dict[str, list[str]]:
    """{group: options} as the files of conf/ declare them (Hydra's view: a folder of .yaml files is a group,
    nested ones as parent/child; hydra/ is Hydra's own and not in the app's help)."""
    groups = {}
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and group.split("/")[0] != "hydra":
            groups[group] = options
    return groups


def test_help_lists_every_group_and_option_of_conf_without_importing_torch(tmp_path: Path) -> None:
    result, heavy = mtlrun(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert heavy == [], f"--help imported {heavy}"
    text = result.stdout
    assert text.startswith("mtlrun: a config-driven experiment runner")  # conf/config.yaml's header
    groups_part, _, config_part = text.partition("== Configuration groups ==")[2].partition("== Config ==")
    listed = {}
    for line in groups_part.splitlines():
        group, sep, rest = line.partition(": ")
        if sep and " " not in group:
            options, _, in_use = rest.partition("  (in use: ")
            listed[group] = (options.split(", "), in_use.rstrip(")") or None)
    expected = shipped_groups()
    assert {g: options for g, (options, _) in listed.items()} == expected
    chosen = {g: in_use for g, (_, in_use) in listed.items() if in_use}
    assert chosen["data"] == "multidigits" and chosen["weighting"] == "equal" and "debug" not in chosen
    assert "Override anything in the config (foo.bar=value)" in config_part
    assert OmegaConf.to_yaml(compose_cfg([])) in config_part  # the default composition, every key
    assert "Documentation:" in text  # the footer


def test_help_shows_the_config_its_overrides_compose(tmp_path: Path) -> None:
    result, heavy = mtlrun(tmp_path, "weighting=pcgrad", "trainer.num_threads=1", "--help")
    assert result.returncode == 0 and heavy == [], result.stderr
    assert "(in use: pcgrad)" in result.stdout and "  num_threads: 1\n" in result.stdout
    assert "_target_: mtlrun.weighting.pcgrad.PCGrad" in result.stdout


REFUSED = {  # argv -> what the one-line error says
    "out of range": (["trainer.epochs=0"], "trainer.epochs=0 is out of range"),
    "unknown key": (["trainer.epoch=3"], "trainer.epoch: unknown key"),
    "added unknown key": (["+trainer.foo=1"], "trainer.foo: unknown key"),
    "wrong type": (["trainer.epochs=many"], "trainer.epochs: Value 'many'"),
    "unknown option": (["weighting=nope"], "Could not find 'weighting/nope'"),
    "resume of nothing": (["resume={tmp}/nowhere"], "no such run folder"),
    "threads zero": (["trainer.num_threads=0"], "trainer.num_threads=0 is out of range: use an integer >= 1"),
    "threads negative": (["trainer.num_threads=-1"], "trainer.num_threads=-1 is out of range"),
    "threads a string": (["trainer.num_threads=all"], "trainer.num_threads: Value 'all' of type 'str'"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_config_is_one_line_and_imports_no_torch(tmp_path: Path, case: str) -> None:
    argv, expected = REFUSED[case]
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    result, heavy = mtlrun(tmp_path, *argv, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if case != "unknown option":  # Hydra's own message lists the group's options, one a line
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert heavy == [], f"{case}: imported {heavy}"
    assert not (tmp_path / "run").exists()


def test_cfg_job_imports_no_torch(tmp_path: Path) -> None:
    result, heavy = mtlrun(tmp_path, "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert heavy == [] and "num_threads: null" in result.stdout


@pytest.mark.parametrize("count", [1, 3])
def test_num_threads_is_the_count_summary_json_records(tmp_path: Path, count: int) -> None:
    """3 is more than this machine may have: the setting, not the machine, decides."""
    result, _ = mtlrun(
        tmp_path, "debug=smoke", f"trainer.num_threads={count}", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["provenance"]["threads"] == count


def test_a_parallel_sweep_gives_each_job_its_share_unless_num_threads_says_otherwise(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    command = [sys.executable, "-m", "mtlrun", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=1"]
    overrides = ["debug=smoke", "trainer.num_threads=null,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run([*command, *overrides], capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = [
        json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["provenance"]["threads"]
        for job in ("0", "1")
    ]
    assert recorded == [threads.share(1), 1]


def test_use_threads_sets_the_count_and_none_leaves_it() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.use_threads(None) == before
        assert threads.use_threads(2) == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert threads.share(10**6) == 1 and threads.share(1) == threads.available_cores()


def test_a_resume_may_change_num_threads(tmp_path: Path) -> None:
    """A speed setting like trainer.device: the resumed run takes the new count. A run saved before the key
    existed continues with the shipped default (null)."""
    saved = OmegaConf.to_container(compose_cfg(["debug=smoke"]), resolve=True)
    del saved["trainer"]["num_threads"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    base = compose_cfg([])
    assert continued_config(compose_cfg([f"resume={tmp_path}"]), base).trainer.num_threads is None
    changed = continued_config(compose_cfg([f"resume={tmp_path}", "trainer.num_threads=1"]), base)
    assert changed.trainer.num_threads == 1 and changed.trainer.epochs == 2  # the run's own values stay
