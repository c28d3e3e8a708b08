"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert 2016, "Cross-stitch Networks for Multi-task
Learning", CVPR): one encoder column per task; after chosen stages, a learned linear mix of the tasks'
activations feeds every column's next stage.

**The unit.** With x_s the output of a stage in task s's column, a cross-stitch unit computes, for
every task t,

- `mode: scalar` (the paper's unit; α is a T×T matrix): x̃_t = Σ_s α[t, s] · x_s;
- `mode: channel` (one α per channel c; α is T×T×C): x̃_t[:, c] = Σ_s α[t, s, c] · x_s[:, c], where
  c is the convolution channel of a CNN stage [N, C, H, W] or the feature of an MLP stage [N, C];

and column t's next stage (after the last stage: task t's head) reads x̃_t.

**Config keys.**

- `after_stages`: the stages followed by a unit: `all`, or a list of indices into the encoder's
  `stages` (negative ones count from the end).
- `mode`: `scalar` or `channel`, as above.
- `init_self`: α[t, t] at the start, in [0, 1]; the rest of each row, 1 − `init_self`, is shared out
  equally over the other T − 1 tasks, so every row sums to 1 and each x̃_t starts as a convex
  combination of the columns with the scale of its inputs (the paper's argument for initialising in
  [0, 1]; (0.9, 0.1) was its best setting for two tasks). `init_self: 1.0` starts from independent
  columns. With a single task, α = [[1]].

**Parameter roles.** The α of every unit: part `mixing`, shared by all tasks (every task's loss moves
them). The paper found that α needs a learning rate 10² to 10³ times the base one (under plain SGD);
α trains in the `mixing` optimizer group, so `optim.groups.mixing.lr` sets it apart from the columns'.
The columns: part `trunk` (optimizer group `shared`), shared rather than owned by their task, because
through α task t's loss reaches the earlier stages of every column s wherever α[t, s] ≠ 0 upstream;
gradient-based weighting methods must treat them as shared. The heads: part `head`, owned by their
task.

There is no single shared representation: each task reads its own stitched features
(`has_representation` is false), so gradient methods use `grad_source=shared_params`. `diagnostics()`
reports each unit's mean self-weight α[t, t] (how task-specific each depth stays) as
`stitch<i>_self_weight`.

**Departures from the paper.** Misra et al. stitch two AlexNets after every pooling and fully
connected layer except the output layer (pool1, pool2, pool5, fc6, fc7). Here the encoder's stages
end in a pooling layer (CNN) or a fully connected layer (MLP) and the heads play the output layer's
part, so `after_stages: all` stitches after every stage, the last one (the features each head reads)
included. The paper writes the unit for two tasks; here it mixes any number T. `mode: scalar` is the
unit the paper evaluates; `channel` gives every channel its own α.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import convex_init
from mtlrun.encoder.stages import encoder_stages, select_stages
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

MODES = ("scalar", "channel")


class CrossStitchUnit(nn.Module):
    """Mixes the T columns' activations, stacked as [T, N, C, ...]; `channels` None means one α per pair
    of tasks, else one per pair and channel (dimension 2 of the stacked activations). Rows of α start as
    `convex_init(T, init_self)`."""

    def __init__(self, num_tasks: int, init_self: float, channels: int | None = None) -> None:
        super().__init__()
        alpha = convex_init(num_tasks, init_self)
        if channels is not None:
            alpha = alpha.unsqueeze(-1).repeat(1, 1, channels)
        self.alpha = nn.Parameter(alpha)

    def forward(self, h: Tensor) -> Tensor:
        alpha = self.alpha.to(h.dtype)
        if alpha.ndim == 2:
            return torch.einsum("ts,s...->t...", alpha, h)
        return torch.einsum("tsc,snc...->tnc...", alpha, h)

    def self_weight(self) -> float:
        """Mean of α[t, t] over tasks (and channels)."""
        return float(self.alpha.detach().diagonal(0, 0, 1).mean())


class CrossStitch(MTLModel):
    """Task columns mixed by cross-stitch units after chosen stages (module docstring)."""

    has_representation = False

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        after_stages: str | list[int] = "all",
        mode: str = "scalar",
        init_self: float = 0.9,
    ) -> None:
        super().__init__(tasks)
        check_choice("architecture.mode", mode, MODES)
        if not 0.0 <= init_self <= 1.0:
            raise ConfigError(
                f"architecture.init_self: {init_self} lies outside [0, 1]; rows of α start as convex "
                "combinations (0.9 in the paper, 1.0 = independent columns)"
            )
        self.columns = nn.ModuleDict({name: encoder() for name in self.tasks})
        first = next(iter(self.columns.values()))
        stages = encoder_stages(first, "architecture")
        self.num_stages = len(stages)
        chosen = select_stages(after_stages, self.num_stages, "architecture.after_stages")
        self.stitch = nn.ModuleDict(
            {
                str(i): CrossStitchUnit(
                    len(self.tasks), init_self, first.stage_shapes[i][0] if mode == "channel" else None
                )
                for i in chosen
            }
        )
        self.heads = TaskHeads(first.out_dim, self.tasks, heads)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        columns = list(self.columns.values())
        h = [batch["x"] for _ in columns]
        for i in range(self.num_stages):
            h = [column.stages[i](x) for column, x in zip(columns, h, strict=True)]
            if str(i) in self.stitch:
                h = list(self.stitch[str(i)](torch.stack(h)).unbind(0))
        return self.heads(dict(zip(self.tasks, h, strict=True)))

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"columns": ParamRole("trunk"), "stitch": ParamRole("mixing")}
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))

    def diagnostics(self) -> dict[str, dict[str, float]]:
        return {"model": {f"stitch{i}_self_weight": unit.self_weight() for i, unit in self.stitch.items()}}
