"""Per-group learning rates: config rules map every trainable parameter to exactly one optimizer group.

``optim.groups`` (see conf/optim/adamw.yaml)::

    shared:    {lr: ..., weight_decay: ...}   # trunk parameters (encoders, experts, task columns)
    heads:     {lr: ..., <task>: {lr: ...}}   # every head; a task entry makes its own group heads.<task>
    weighting: {lr: ...}                      # learnable weighting parameters (uncertainty log-variances)
    mixing:    {lr: ...}                      # mixing units and gates of soft-sharing designs

The most specific entry wins (``heads.<task>`` over ``heads``); a setting left null falls back to the
optimizer's own value. A parameter that no entry covers is an error, never a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch.nn as nn

from mtlrun.architecture.base import MTLModel
from mtlrun.errors import ConfigError

GROUP_NAMES = ("shared", "heads", "weighting", "mixing")
SETTINGS = ("lr", "weight_decay")
PART_TO_GROUP = {"trunk": "shared", "head": "heads", "mixing": "mixing"}


@dataclass
class ParamGroup:
    name: str
    settings: dict
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def parse_rules(groups_cfg: Mapping, task_names: list[str]) -> dict[str, dict]:
    """Flatten ``optim.groups`` into {group name: settings}, checking every key."""
    rules: dict[str, dict] = {}
    for group, entry in dict(groups_cfg or {}).items():
        if group not in GROUP_NAMES:
            raise ConfigError(f"optim.groups.{group}: unknown group; use {', '.join(GROUP_NAMES)}")
        if entry is None:
            continue
        settings = {}
        for key, value in dict(entry).items():
            if key in SETTINGS:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    raise ConfigError(f"optim.groups.{group}.{key}: expected a number, got {value!r}")
                settings[key] = value
            elif group == "heads" and key in task_names:
                task_settings = dict(value or {})
                bad = set(task_settings) - set(SETTINGS)
                if bad:
                    raise ConfigError(
                        f"optim.groups.heads.{key}: unknown setting(s) {sorted(bad)}; use lr, weight_decay"
                    )
                rules[f"heads.{key}"] = task_settings
            else:
                hint = f" or a task name ({', '.join(task_names)})" if group == "heads" else ""
                raise ConfigError(f"optim.groups.{group}.{key}: unknown key; use lr, weight_decay{hint}")
        rules[group] = settings
    for name in [n for n in rules if n.startswith("heads.")]:
        rules[name] = {**rules.get("heads", {}), **rules[name]}
    return rules


def build_param_groups(model: MTLModel, weighting: nn.Module, groups_cfg: Mapping) -> list[ParamGroup]:
    """Assign every trainable parameter of the model and the weighting to one group."""
    rules = parse_rules(groups_cfg, list(model.tasks))
    groups: dict[str, ParamGroup] = {}

    def add(param_name: str, param: nn.Parameter, candidates: list[str]) -> None:
        name = next((c for c in candidates if c in rules), None)
        if name is None:
            raise ConfigError(
                f"parameter '{param_name}' belongs to group '{candidates[-1]}', which optim.groups does not "
                f"declare; add optim.groups.{candidates[-1]}: {{lr: ...}}"
            )
        group = groups.setdefault(
            name, ParamGroup(name, {k: v for k, v in rules[name].items() if v is not None})
        )
        group.params.append(param)
        group.names.append(param_name)

    roles = model.parameter_roles()
    for param_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = roles[param_name]
        group = PART_TO_GROUP[role.part]
        candidates = [f"heads.{role.task}", "heads"] if role.part == "head" else [group]
        add(f"model.{param_name}", param, candidates)
    for param_name, param in weighting.named_parameters():
        if param.requires_grad:
            add(f"weighting.{param_name}", param, ["weighting"])
    return list(groups.values())


def optimizer_param_groups(groups: list[ParamGroup]) -> list[dict]:
    """The list of dicts a torch optimizer takes."""
    return [{"params": g.params, "name": g.name, **g.settings} for g in groups]
