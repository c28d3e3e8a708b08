"""Single-task learning: one independent network (encoder + head) per task, the baseline for Delta-m%.

Nothing is shared, so there is no shared representation and no shared parameter: every task's encoder is
owned by that task (its optimizer group is still ``shared``, the trunk group, so a single-task baseline
trains its encoders with the same learning rate as a shared trunk would).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.tasks import Task


class SingleTask(MTLModel):
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
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)
