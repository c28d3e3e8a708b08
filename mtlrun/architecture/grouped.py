"""Task groups: one hard-shared network per group of tasks, and one head per task.

The architecture that trains a grouping such as `mtlrun groups` suggests, after Fifty, Amid, Zhao, Yu, Anil &
Finn (2021), "Efficiently Identifying Task Groupings for Multi-Task Learning" (NeurIPS; TAG), and Standley,
Zamir, Chen, Guibas, Malik & Savarese (2020), "Which Tasks Should Be Learned Together in Multi-task
Learning?" (ICML): the tasks are split into groups G_1 … G_k, every task in exactly one, and each group
trains its own hard-sharing network. With groups G, group g's trunk f_g (a fresh encoder) and task t's head
h_t, task t ∈ G_g predicts h_t(f_g(x)). Groups never interact: one run is k independent hard-sharing
models trained side by side on the same batches.

The two ends are the usual baselines: one group of every task is hard sharing (`architecture=hard_sharing`),
one group per task is single-task learning (`architecture=single_task`). So a single sweep over the
`groups` key compares a suggestion with both:

```bash
mtlrun -m architecture=grouped 'architecture.groups=null,[[a,b],[c]],[[a],[b],[c]]'
```

With one group, every task reads one tensor, the shared representation (`has_representation`); with
several, there is none. With one task per group the tasks do not interact (`independent_tasks`), and the
report takes such runs as its single-task baseline.

**Config keys.**

- `groups`: a list of lists of task names, every task in exactly one group, e.g. `[[a,b],[c]]`; null puts
  every task in one group (hard sharing).

**Parameter roles.** Group g's trunk: part `trunk`, shared by no single task when the group has several
(task None: gradient methods balance the tasks of each group on it), owned by the group's task when it has
one. Both go to the optimizer group `shared`. Head t: part `head`, owned by task t.

**Departures from the papers.** The papers train each group as a separate run; here the groups train in
one run, on the same batches, with one optimizer and one weighting method over all tasks (with
weighting=equal, the same as separate runs with the same seed for the batches). TAG also lets a task sit in
several groups (it is then served by its best one); here each task is in exactly one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


def check_groups(groups: Sequence[Sequence[str]] | None, tasks: Sequence[str]) -> list[list[str]]:
    """The groups as lists of task names (null: one group of every task); a ConfigError naming the fix
    unless every task is in exactly one non-empty group."""
    tasks = list(tasks)
    if groups is None:
        return [tasks]
    example = (
        "e.g. 'architecture.groups=[["
        + ",".join(tasks[:2])
        + "]"
        + "".join(f",[{t}]" for t in tasks[2:])
        + "]'"
    )
    if isinstance(groups, str) or not all(isinstance(g, Sequence) and not isinstance(g, str) for g in groups):
        raise ConfigError(
            f"architecture.groups: must be a list of lists of task names, {example}; got {groups!r}"
        )
    groups = [[str(t) for t in g] for g in groups]
    if not groups or any(not g for g in groups):
        raise ConfigError(
            f"architecture.groups: every group needs at least one task, {example}; got {groups}"
        )
    flat = [t for g in groups for t in g]
    unknown = sorted({t for t in flat if t not in tasks})
    if unknown:
        raise ConfigError(
            f"architecture.groups: unknown task(s) {unknown}; the tasks are {', '.join(tasks)}, {example}"
        )
    twice = sorted({t for t in flat if flat.count(t) > 1})
    if twice:
        raise ConfigError(
            f"architecture.groups: task(s) {twice} in more than one group; put each in exactly one"
        )
    missing = [t for t in tasks if t not in flat]
    if missing:
        raise ConfigError(
            f"architecture.groups: task(s) {missing} in no group; put every task in exactly one group "
            f"(a task alone: [{missing[0]}]), {example}"
        )
    return groups


class Grouped(MTLModel):
    """One hard-sharing trunk per group of tasks and one head per task (module docstring)."""

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        groups: Sequence[Sequence[str]] | None = None,
    ) -> None:
        super().__init__(tasks)
        self.groups = check_groups(groups, list(self.tasks))
        self.trunks = nn.ModuleList([encoder() for _ in self.groups])
        self.heads = TaskHeads(self.trunks[0].out_dim, self.tasks, heads)
        # instance attributes: what the groups make of the design
        self.has_representation = len(self.groups) == 1
        self.independent_tasks = all(len(g) == 1 for g in self.groups)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        outputs = [trunk(batch["x"]) for trunk in self.trunks]
        if self.has_representation:
            self.shared_representation = outputs[0]
            return self.heads(outputs[0])
        return self.heads({t: z for group, z in zip(self.groups, outputs, strict=True) for t in group})

    def representation_views(self) -> dict[str, Tensor]:
        return self.heads.views if self.has_representation and self.heads.separable else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        trunks = {
            f"trunks.{g}": ParamRole("trunk", group[0] if len(group) == 1 else None)
            for g, group in enumerate(self.groups)
        }
        return self.roles_by_prefix(trunks | self.heads.roles("heads"))
