"""Low-level tasks supervised at lower layers (Søgaard & Goldberg 2016, "Deep multi-task learning with low
level tasks supervised at lower layers", ACL): one shared encoder, the trunk, and each task's head attached at
a depth of its own, so a low-level task is predicted from an early stage and the later stages serve only the
tasks above it.

**The design.** The encoder is a sequence of stages s_0 … s_(K−1) (`mtlrun.encoder`); the output of the
last one is what hard sharing's heads read. With hᵏ = s_k(hᵏ⁻¹), h⁻¹ = x, and task t attached at stage d_t,

```text
y_t = head_t(pool(h^(d_t)))
```

so task t's prediction depends only on stages 0 … d_t: its loss trains those and its head, and the stages
above d_t get gradient only from tasks attached higher. With every task at the last stage the design is hard
sharing. The trunk keeps and runs only stages 0 … max_t d_t: stages above the deepest attachment are never
built into the model. A stage's output that is a feature map [N, C, H, W] (the CNN encoder's convolution
stages) is turned into the head's input by `pool`.

**Config keys.**

- `depths`: {task: stage index}, the stage whose output the task's head reads; negative indices count
  from the end (−1 is the last stage); tasks not listed read the last stage. An unknown task or a stage the
  encoder does not have is a config error.
- `pool`: for feature maps, `flatten` (every position's channels, C·H·W features: positions stay apart,
  which tasks like MultiDigits' left and right digit need) or `mean` (global average pooling, C features).
  Vectors pass through either way.

**Parameter roles.** The trunk's stages: part `trunk`, shared by all tasks (stage k is reached by the losses
of the tasks at stage k or above). The heads: part `head`, owned by their task.

**Shared representation.** Only when every task reads one stage: then that stage's (pooled) output is the
tensor every head reads, through views of its own as in hard sharing (`representation_views`). With tasks at
different stages there is no one tensor through which every shared parameter reaches every loss, so
`has_representation` is False and gradient methods need `weighting.grad_source=shared_params`.

**Departures from the paper.** The paper's trunk is a three-layer bidirectional RNN tagger and each task's
output layer is a linear softmax on the chosen layer's states; here the stages are the injected encoder's
and the heads are the configurable task heads (`heads.hidden=[]` gives the paper's linear output layer). The
paper trains on separate data sets per task, picking a task and one of its examples at random at each step;
here every example is labelled for every task and each step combines all tasks' losses on the batch by the
weighting method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.encoder.stages import encoder_stages, select_stages
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

POOLS = ("flatten", "mean")


class LowSupervision(MTLModel):
    """A shared trunk of encoder stages; each task's head reads the stage its config names (module
    docstring)."""

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        depths: Mapping[str, int] | None = None,
        pool: str = "flatten",
    ) -> None:
        super().__init__(tasks)
        check_choice("architecture.pool", pool, POOLS)
        self.pool = pool
        encoder_module = encoder()
        stages = encoder_stages(encoder_module, "architecture.depths")
        depths = dict(depths or {})
        unknown = sorted(set(depths) - set(self.tasks))
        if unknown:
            raise ConfigError(
                f"architecture.depths.{unknown[0]}: not a task; the tasks are {', '.join(self.tasks)}"
            )
        self.depths = {
            name: select_stages([depths.get(name, -1)], len(stages), f"architecture.depths.{name}")[0]
            for name in self.tasks
        }
        deepest = max(self.depths.values())
        self.trunk = nn.ModuleList(stages[: deepest + 1])  # the stages no head reads are left out
        self.stage_shapes = [tuple(s) for s in encoder_module.stage_shapes[: deepest + 1]]
        self.read_stages = sorted(set(self.depths.values()))
        self.has_representation = len(self.read_stages) == 1
        widths = {name: self.feature_width(self.stage_shapes[k]) for name, k in self.depths.items()}
        self.heads = TaskHeads(widths, self.tasks, heads)

    def feature_width(self, shape: tuple[int, ...]) -> int:
        """The width of a stage's output of `shape` (no batch dimension) after pooling."""
        return shape[0] if self.pool == "mean" else math.prod(shape)

    def pooled(self, h: Tensor) -> Tensor:
        if h.ndim <= 2:
            return h
        return h.mean(dim=tuple(range(2, h.ndim))) if self.pool == "mean" else h.flatten(1)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        h = batch["x"]
        read: dict[int, Tensor] = {}
        for k, stage in enumerate(self.trunk):
            h = stage(h)
            if k in self.read_stages:
                read[k] = self.pooled(h)
        if self.has_representation:
            self.shared_representation = read[self.read_stages[0]]
            return self.heads(self.shared_representation)
        return self.heads({name: read[k] for name, k in self.depths.items()})

    def representation_views(self) -> dict[str, Tensor]:
        return self.heads.views if self.has_representation and self.heads.separable else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        return self.roles_by_prefix({"trunk": ParamRole("trunk")} | self.heads.roles("heads"))
