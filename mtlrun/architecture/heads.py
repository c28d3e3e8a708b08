"""Task heads: one small MLP per task, from a default spec with per-task overrides.

Config (top-level `heads`):

```yaml
heads:
  hidden: [64]               # for every task
  activation: ReLU
  dropout: 0.0
  sum: {hidden: [128, 64]}   # a per-task override (on the command line: +heads.sum.hidden=[128,64])
```

A task may read other tasks' estimates (`tasks.<b>.inputs_from: [a]`): its head then sees the features
concatenated with task a's estimate (probabilities for classifiers, values for regression), detached by
default so task b's loss never moves task a's parameters. Heads run in dependency order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import ParamRole
from mtlrun.auxiliary import GradientReversal
from mtlrun.encoder.layers import mlp
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task, topological_order

HEAD_SETTINGS = ("hidden", "activation", "dropout")


@dataclass(frozen=True)
class HeadSpec:
    hidden: tuple[int, ...] = ()
    activation: str = "ReLU"
    dropout: float = 0.0


def resolve_head_specs(heads_cfg: Mapping, tasks: Mapping[str, Task]) -> dict[str, HeadSpec]:
    """Per-task head specs: the defaults in `heads` updated by `heads.<task>` entries."""
    defaults = {}
    overrides: dict[str, dict] = {}
    for key, value in dict(heads_cfg or {}).items():
        if key in HEAD_SETTINGS:
            defaults[key] = value
        elif key in tasks:
            if value is None:
                continue
            unknown = set(dict(value)) - set(HEAD_SETTINGS)
            if unknown:
                raise ConfigError(
                    f"heads.{key}: unknown setting(s) {sorted(unknown)}; use {', '.join(HEAD_SETTINGS)}"
                )
            overrides[key] = dict(value)
        else:
            raise ConfigError(
                f"heads.{key}: neither a head setting ({', '.join(HEAD_SETTINGS)}) nor a task "
                f"({', '.join(tasks)})"
            )
    specs = {}
    for name in tasks:
        merged = {**defaults, **overrides.get(name, {})}
        merged["hidden"] = tuple(merged.get("hidden") or ())
        specs[name] = HeadSpec(**merged)
    return specs


class TaskHeads(nn.Module):
    """The heads of all tasks; `forward(features)` returns each task's raw prediction."""

    def __init__(
        self, in_dim: int | Mapping[str, int], tasks: Mapping[str, Task], heads_cfg: Mapping
    ) -> None:
        """`in_dim`: the width of the features every head reads, or each task's own (designs whose heads read
        different tensors)."""
        super().__init__()
        self.tasks = dict(tasks)
        self.order = topological_order(self.tasks)
        specs = resolve_head_specs(heads_cfg, self.tasks)
        self.heads = nn.ModuleDict()
        # each head's own view of a shared feature tensor in the last forward (see `separable`)
        self.views: dict[str, Tensor] = {}
        for name, task in self.tasks.items():
            extra = sum(self.tasks[src].feature_dim for src in task.inputs_from)
            spec = specs[name]
            width = in_dim[name] if isinstance(in_dim, Mapping) else in_dim
            self.heads[name] = mlp(
                width + extra, list(spec.hidden), spec.activation, spec.dropout, task.out_dim
            )
        # adversarial tasks (`reverse_gradient`) read the features through a gradient-reversal layer, after
        # their view: a view's gradient is then the reversed one the trunk receives (mtlrun/auxiliary.py)
        self.reversal = nn.ModuleDict(
            {name: GradientReversal.of(t) for name, t in self.tasks.items() if t.reverse_gradient is not None}
        )

    def linear_layers(self) -> list[dict[str, nn.Linear]]:
        """Entry k maps every task to its head's k-th nn.Linear (as deep as the shallowest head)."""
        per_task = {t: [m for m in head if isinstance(m, nn.Linear)] for t, head in self.heads.items()}
        depth = min(len(layers) for layers in per_task.values())
        return [{t: layers[k] for t, layers in per_task.items()} for k in range(depth)]

    def roles(self, prefix: str) -> dict[str, ParamRole]:
        """The role of each task's head, keyed by parameter-name prefix, for a model that holds these heads
        at attribute path `prefix`: every head is part `head`, owned by its task."""
        return {f"{prefix}.heads.{t}": ParamRole("head", t) for t in self.tasks}

    @property
    def separable(self) -> bool:
        """Whether each task's loss reaches the features only through its own head's view of them: no task
        reads another's estimate without a stop-gradient. Then one backward pass of the summed losses gives
        each task's gradient with respect to the features, as the gradient of its view (`views`)."""
        return not any(task.inputs_from and not task.detach for task in self.tasks.values())

    def forward(self, features: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """`features`: one tensor all heads read, or a per-task dict (designs with task columns). Each head
        reads a tensor of features through a view of its own (`views`), which costs nothing."""
        out: dict[str, Tensor] = {}
        shared = not isinstance(features, Mapping)
        self.views = {name: features.view_as(features) for name in self.tasks} if shared else {}
        for name in self.order:
            out[name] = self.predict(name, self.views[name] if shared else features[name], out)
        return {name: out[name] for name in self.tasks}

    def predict(self, name: str, h: Tensor, out: Mapping[str, Tensor]) -> Tensor:
        """Task ``name``'s prediction from its features ``h``: through the gradient reversal of an adversarial
        task, with the estimates of the tasks it reads (``inputs_from``, taken from ``out``, the predictions
        made so far) appended, by its head. Designs that order the heads themselves call it per task."""
        task = self.tasks[name]
        if name in self.reversal:
            h = self.reversal[name](h)
        if task.inputs_from:
            estimates = [self.tasks[src].estimate(out[src]) for src in task.inputs_from]
            if task.detach:
                estimates = [e.detach() for e in estimates]
            h = torch.cat([h, *[e.to(h.dtype) for e in estimates]], dim=-1)
        return task.prepare_prediction(self.heads[name](h))
