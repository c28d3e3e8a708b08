"""Hard parameter sharing (Caruana 1997, "Multitask Learning", Machine Learning 28): one encoder, the
trunk, shared by every task, and one head per task on top of it.

Every task reads the trunk's output, which is the shared representation (`has_representation`), so
gradient methods can differentiate against it.

**Config keys.** None besides the encoder (`encoder=...`) and the heads (`heads`).

**Parameter roles.** The trunk: part `trunk`, shared by all tasks (optimizer group `shared`). The
heads: part `head`, each owned by its task.

**Departures from the paper.** None: the paper's shared hidden layers are the injected encoder, its
task outputs the heads.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.tasks import Task


class HardSharing(MTLModel):
    """One shared encoder, the trunk, and one head per task (module docstring)."""

    has_representation = True

    def __init__(self, encoder: EncoderFactory, tasks: Mapping[str, Task], heads: Mapping) -> None:
        super().__init__(tasks)
        self.trunk = encoder()
        self.heads = TaskHeads(self.trunk.out_dim, self.tasks, heads)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        self.shared_representation = self.trunk(batch["x"])
        return self.heads(self.shared_representation)

    def representation_views(self) -> dict[str, Tensor]:
        return self.heads.views if self.heads.separable else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.roles_by_prefix({"trunk": ParamRole("trunk")} | self.heads.roles("heads"))
