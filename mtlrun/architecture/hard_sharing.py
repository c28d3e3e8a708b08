"""Hard parameter sharing (Caruana 1997): one shared encoder (the trunk), one head per task."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.tasks import Task


class HardSharing(MTLModel):
    """Every task reads the trunk's output, which is the shared representation."""

    has_representation = True

    def __init__(self, encoder: EncoderFactory, tasks: Mapping[str, Task], heads: Mapping) -> None:
        super().__init__(tasks)
        self.trunk = encoder()
        self.heads = TaskHeads(self.trunk.out_dim, self.tasks, heads)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        self.shared_representation = self.trunk(batch["x"])
        return self.heads(self.shared_representation)

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"trunk": ParamRole("trunk")}
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)
