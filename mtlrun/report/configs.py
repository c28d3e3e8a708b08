"""Group runs into configurations: runs that differ only in their seed (or in settings that do not change
results, like the run's name) are seeds of one configuration.

Two runs belong to the same configuration when they chose the same option in every config group
(``.hydra/hydra.yaml``) and their resolved configs (``config.yaml``) are equal, leaving out ``IGNORED``.
The label of a configuration names only what tells it apart from the others: first the group options that
differ (``weighting=pcgrad``), in ``GROUP_ORDER``, then, in key order, the config values (``optim.lr=0.01``).
Each is added only if it still splits runs that the settings before it leave together, so a setting that
follows from one already in the label (``weighting._target_`` from ``weighting``, the encoder a data set
picks) is never shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtlrun.report.collect import Run

# Config keys that never define a configuration: the seed (folded into mean ± std), the run's label and
# resume folder, and switches that do not change what is trained.
IGNORED = ("seed", "name", "resume", "trainer.progress", "trainer.plots", "trainer.checkpoint")
# Groups first in a label, in this order; any other group follows alphabetically.
GROUP_ORDER = (
    "experiment",
    "data",
    "encoder",
    "architecture",
    "weighting",
    "optim",
    "optim/scheduler",
    "trainer",
)
# Shown when every run shares one configuration, so the label still says what was trained.
DEFAULT_LABEL_GROUPS = ("architecture", "weighting")
UNSET = "(unset)"  # the value of a setting that a configuration does not have (e.g. another method's option)


@dataclass
class Configuration:
    """One row of the comparison: its distinguishing settings and its runs (one per seed)."""

    label: str
    settings: dict[str, str]
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a.b.c": value as text} of a nested config; lists are one value."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = format_value(value)
    return flat


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _ignored(key: str) -> bool:
    return any(key == name or key.startswith(f"{name}.") for name in IGNORED)


def _group_rank(group: str) -> tuple[int, str]:
    return (GROUP_ORDER.index(group), "") if group in GROUP_ORDER else (len(GROUP_ORDER), group)


def settings_of(run: Run) -> dict[str, str]:
    """Everything that defines a run's configuration: ``group`` -> option and ``config.key`` -> value."""
    config = {k: v for k, v in flatten(run.config).items() if not _ignored(k)}
    return {**{g: run.choices[g] for g in sorted(run.choices, key=_group_rank)}, **config}


def distinguishing_keys(runs: Sequence[Run]) -> list[str]:
    """The settings a label needs: differing group options, then config keys that still split the runs."""
    settings = [settings_of(run) for run in runs]
    groups = sorted({g for run in runs for g in run.choices}, key=_group_rank)
    config_keys = sorted({k for s in settings for k in s} - set(groups))
    keys: list[str] = []
    blocks = _partition(settings, keys)
    for key in (
        groups + config_keys
    ):  # a key that follows from those before it (encoder from data) is left out
        if any(len({settings[i].get(key) for i in block}) > 1 for block in blocks):
            keys.append(key)
            blocks = _partition(settings, keys)
    return keys


def _partition(settings: Sequence[Mapping[str, str]], keys: Sequence[str]) -> list[list[int]]:
    blocks: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        blocks.setdefault(tuple(s.get(k) for k in keys), []).append(i)
    return list(blocks.values())


def label_of(settings: Mapping[str, str]) -> str:
    """``key=value`` of each setting, leaving out keys this configuration does not have."""
    shown = " ".join(f"{key}={value}" for key, value in settings.items() if value != UNSET)
    return shown or "(all runs)"


def group_configurations(runs: Sequence[Run]) -> list[Configuration]:
    """Configurations in the order their first run appears; runs of one configuration in input order."""
    keys = distinguishing_keys(runs)
    if not keys and runs:
        keys = [g for g in DEFAULT_LABEL_GROUPS if g in runs[0].choices]
    configurations: dict[tuple, Configuration] = {}
    for run in runs:
        s = settings_of(run)
        shown = {key: s.get(key, UNSET) for key in keys}
        identity = tuple(shown.values())
        if identity not in configurations:
            configurations[identity] = Configuration(label=label_of(shown), settings=shown)
        configurations[identity].runs.append(run)
    return list(configurations.values())
