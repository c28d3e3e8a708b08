"""``mtlrun resume=<folder>``: continue a run from its last checkpoint, with the config it was started with.

What it continues: the run the folder describes, from its saved ``config.yaml``, not the config the command
line would compose today. An override on the command line must leave the saved value as it is (a requeued
job repeats its own overrides) or be one of `CHANGEABLE`; any other is an error that names the key.

Where it continues (`plan`):

* an unfinished run (status interrupted or failed, or killed: "running" with no process left) continues in
  its own folder: the metrics rows its checkpoint covers stay, later ones are trained again;
* a completed run is never modified: with more epochs (``trainer.epochs=N``) it continues into a new
  folder, which starts with a copy of its rows and best model;
* ``hydra.run.dir=<new folder>`` continues any run there, leaving the original folder as it is.

A run killed before its first checkpoint starts again from its saved config. A folder that another process
still writes is refused. This module must not import torch: the CLI plans a resume before anything runs.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtlrun import rundir
from mtlrun.errors import ConfigError
from mtlrun.schema import MtlrunConfig

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
HYDRA_CONFIG_FILE = ".hydra/config.yaml"  # the composed config Hydra saves before the run starts
# keys a resumed run may change: how long it trains and where and how it shows progress, never what it learns
CHANGEABLE = (
    "trainer.epochs",
    "trainer.device",
    "trainer.num_threads",  # CPU threads: how fast it trains, like the device (sums may differ in the last bits)
    "trainer.progress",
    "trainer.plots",
    "trainer.checkpoint_every",
    "trainer.checkpoint_minutes",
    "logger",  # where the run is also reported (trackers change no number)
)


@dataclass
class Plan:
    source: Path  # the run folder being continued
    in_place: bool  # continue in ``source`` itself (else in a new folder)
    cfg: DictConfig  # the saved config with the allowed changes


def source_folder(resume: str) -> Path:
    """The run folder ``resume=`` names (a run folder, or its checkpoint.pt)."""
    path = Path(resume).expanduser()
    return path.parent if path.name == "checkpoint.pt" else path


def saved_config(folder: Path) -> DictConfig:
    """The config a run folder was trained with: its config.yaml, or, for a run killed before it wrote one,
    the config Hydra saved when it started (.hydra/config.yaml). A missing or broken file is a ConfigError."""
    if not folder.is_dir():
        raise ConfigError(
            f"resume={folder}: no such run folder; pass the folder of a run (it holds {CONFIG_FILE})"
        )
    path = next((p for p in (folder / CONFIG_FILE, folder / HYDRA_CONFIG_FILE) if p.exists()), None)
    if path is None:
        raise ConfigError(
            f"resume={folder}: the folder has no {CONFIG_FILE}, so it is not a run mtlrun can continue; "
            "pass the folder of a run (outputs/runs/<date>/<time>, or a job folder of a sweep)"
        )
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(
            f"resume={folder}: {path} is not a readable config ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); restore it from .hydra/config.yaml or start the run again"
        ) from None
    if not isinstance(cfg, DictConfig) or "trainer" not in cfg:
        raise ConfigError(f"resume={folder}: {path} is not an mtlrun run config; start the run again")
    try:  # typed like a composed config (enums); a key the saved file lacks stays ??? (see continued_config)
        return OmegaConf.merge(OmegaConf.structured(MtlrunConfig), cfg)
    except Exception as err:
        raise ConfigError(f"resume={folder}: {path} does not fit mtlrun's config schema ({err})") from None


def continued_config(cfg: DictConfig, base: DictConfig) -> DictConfig:
    """The saved config of ``cfg.resume``'s run, changed where the command line changes it.

    ``cfg`` is the config the command line composed; ``base`` the one it composes without its overrides.
    Every value that differs between the two was set on the command line: it must equal the saved value or
    be one of `CHANGEABLE`, which then takes it.
    """
    source = source_folder(cfg.resume)
    saved = saved_config(source)
    for key in OmegaConf.missing_keys(
        saved
    ):  # a key added to mtlrun after the run was saved: today's default
        OmegaConf.update(saved, key, OmegaConf.select(base, key), merge=False)
    wanted, default = _leaves(cfg), _leaves(base)
    saved_leaves = _leaves(saved)
    changes = {}
    for key in sorted(set(wanted) | set(default)):
        if key == "resume" or wanted.get(key, _MISSING) == default.get(key, _MISSING):
            continue  # not set on the command line
        new, old = wanted.get(key, _MISSING), saved_leaves.get(key, _MISSING)
        if new is _MISSING and any(k.startswith(f"{key}.") for k in wanted):
            continue  # an empty mapping that the command line filled: its new leaves are the changes
        if new == old:
            continue  # set, but to the value the run has (a requeued job repeats its overrides)
        if not any(key == k or key.startswith(f"{k}.") for k in CHANGEABLE):
            raise ConfigError(
                f"{key}: cannot change when resuming (the run was trained with {_show(old)}, the command line "
                f"asks for {_show(new)}); resume continues the run as it was configured, and may change only "
                f"{', '.join(CHANGEABLE)}. To train with other settings, start a new run"
            )
        changes[key] = new
    for key, value in changes.items():
        OmegaConf.update(saved, key, value, merge=False)
    saved.resume = str(source)
    return saved


def plan(cfg: DictConfig, base: DictConfig, run_dir: Path | None) -> Plan:
    """Check that ``cfg.resume``'s run can continue, and where: in its own folder when it is unfinished and
    ``run_dir`` (a folder the user chose) is None or that folder; otherwise in ``run_dir`` or a new one."""
    continued = continued_config(cfg, base)
    source = source_folder(cfg.resume)
    summary = rundir.read_summary(source) or {}
    status = rundir.status(source, summary)
    if rundir.is_live(source):
        raise ConfigError(
            f"resume={source}: the run is still training (pid {summary.get('pid', '?')}); two processes never "
            "write one run: wait for it to end, or stop it first (kill -TERM <pid> checkpoints it)"
        )
    done = int(summary.get("epochs_completed") or 0)
    if status == "completed" and continued.trainer.epochs <= done:
        raise ConfigError(
            f"resume={source}: the run already completed all {done} epochs; to train it further set "
            f"trainer.epochs above {done} (it continues into a new folder, the finished one stays as it is)"
        )
    check_checkpoint(source / CHECKPOINT_FILE)
    same = run_dir is not None and run_dir.resolve() == source.resolve()
    if status == "completed" and same:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: that is the completed run being resumed, and a finished result is never "
            "modified; leave hydra.run.dir out (a new folder) or choose another one"
        )
    return Plan(source=source, in_place=status != "completed" and (run_dir is None or same), cfg=continued)


def check_checkpoint(path: Path) -> None:
    """A checkpoint that is there must be whole: torch writes a zip archive, whose checksums tell a truncated
    or damaged file without loading it (and without torch). No checkpoint is fine: the run starts over."""
    if not path.exists():
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        damaged = str(err)
    if damaged is not None:
        raise ConfigError(
            f"resume: {path} is damaged ({damaged}); it may have been cut short by a full disk or a copy. "
            "Start the run again, or resume from a copy of the folder with a good checkpoint.pt"
        )


_MISSING = object()


def _leaves(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: value} of every leaf of a config (resolved; ``hydra`` left out)."""
    container = {key: OmegaConf.select(cfg, key) for key in cfg if key != "hydra"}
    container = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
    leaves: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            leaves[prefix.rstrip(".")] = getattr(node, "value", node)  # enums (typed configs) as their values

    walk(container, "")
    return leaves


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value) if isinstance(value, str) else str(value)
