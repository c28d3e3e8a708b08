"""Single-task learning: one independent network per task, a fresh encoder (the task's column) and the
task's head.

Nothing is shared: no parameter, no representation (`has_representation` is false). The tasks do not
interact at all (`independent_tasks`), so a run of this architecture is the single-task baseline that
the report computes Δm% against.

**Config keys.** None besides the encoder (`encoder=...`) and the heads (`heads`).

**Parameter roles.** Column t: part `trunk`, owned by task t. Its optimizer group is still `shared`
(the trunk's group), so the baseline trains its encoders with the learning rate a shared trunk would
get. Head t: part `head`, owned by task t. Gradient-based weighting methods see no shared parameter
and fall back to the plain sum of the losses.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.tasks import Task


class SingleTask(MTLModel):
    """One independent encoder and head per task (module docstring)."""

    has_representation = False
    independent_tasks = True

    def __init__(self, encoder: EncoderFactory, tasks: Mapping[str, Task], heads: Mapping) -> None:
        super().__init__(tasks)
        self.columns = nn.ModuleDict({name: encoder() for name in self.tasks})
        out_dim = next(iter(self.columns.values())).out_dim
        self.heads = TaskHeads(out_dim, self.tasks, heads)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return self.heads({name: column(batch["x"]) for name, column in self.columns.items()})

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {f"columns.{t}": ParamRole("trunk", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))
