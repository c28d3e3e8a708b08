"""Multi-Task Attention Network, MTAN (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
Attention", CVPR): one shared backbone and, per task, one soft-attention module per encoder stage that
selects from the shared features the ones the task needs.

**Attention.** The backbone (one encoder) computes u_k, the output of stage k (k = 0 … K − 1). With
m_t,k task t's attention module at stage k and f_k a shared feature extractor,

```text
a_t,0 = m_t,0(u_0)                    â_t,0 = a_t,0 ⊙ u_0
a_t,k = m_t,k([u_k ; f_k(â_t,k−1)])   â_t,k = a_t,k ⊙ u_k      (k = 1 … K − 1)
```

and task t's head reads â_t,K−1. The mask a_t,k lies in (0, 1) and has u_k's shape; [· ; ·]
concatenates along features (channels for feature maps). When every mask is 1, each task reads the
backbone's output: MTAN then reduces to hard sharing.

- m_t,k: for feature maps, conv1×1 → batch norm → ReLU → conv1×1 → batch norm → sigmoid, the hidden
  width being the stage's channels, as in the paper; for vectors (MLP stages, the CNN encoder's last,
  flattening stage), Linear → ReLU → Linear → sigmoid, without batch norm, like the MLP encoder.
  Weights are Xavier-normal and biases zero, as in the authors' code.
- f_k, the paper's shared feature extractor (a 3×3 convolution followed by pooling to the next
  block's size): stage k of a second encoder built by the same factory, which maps stage k − 1's shape
  to stage k's. For the CNN encoder that is exactly conv3×3 → batch norm → ReLU → max-pool (for the
  last stage, flatten → linear); for the MLP encoder, the next Linear layer. It is shared by all
  tasks, as in the paper.

**Config keys.** None besides the encoder (`encoder=...`, one with stages of vectors [D] or feature
maps [C, H, W], such as the CNN and MLP encoders) and the heads (`heads`).

**Parameter roles.** The backbone and the f_k: part `trunk`, shared (optimizer group `shared`); every
task's loss reaches them. Task t's attention modules: only task t's loss reaches them, so task t owns
them; they are sigmoid gates that select features, the role MMoE's gates play, so their part is
`mixing` (optimizer group `mixing`, whose learning rate can be tuned apart from the trunk's). The
heads: part `head`, owned by their task.

There is no shared representation (`has_representation` is false): tasks read attended features,
which depend on every stage's output through the masks, so no single tensor carries all the shared
gradient. `diagnostics()` reports, per task, the mean mask of each stage over the evaluation pass
(`mask_stage<k>`).

**Departures from the paper.** At this scale a stage is one layer, so a mask reads the stage output
it multiplies, where the paper's SegNet reads a block's first convolution and multiplies its second.
The backbone is any staged encoder rather than the paper's SegNet or Wide Residual Network.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.encoder.stages import encoder_stages
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


def attention_module(in_width: int, shape: tuple[int, ...]) -> nn.Sequential:
    """A soft-attention mask generator from `in_width` features/channels to a mask of `shape`."""
    width = shape[0]
    if len(shape) == 3:
        layers = [
            nn.Conv2d(in_width, width, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1),
            nn.BatchNorm2d(width),
            nn.Sigmoid(),
        ]
    elif len(shape) == 1:
        layers = [nn.Linear(in_width, width), nn.ReLU(), nn.Linear(width, width), nn.Sigmoid()]
    else:
        raise ConfigError(
            f"architecture=mtan: an encoder stage outputs shape {list(shape)}; attention needs vectors [D] "
            "or feature maps [C, H, W]"
        )
    module = nn.Sequential(*layers)
    for layer in module:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return module


class MTAN(MTLModel):
    """A shared backbone and, per task, one attention module per stage that masks the shared features
    (module docstring)."""

    has_representation = False

    def __init__(self, encoder: EncoderFactory, tasks: Mapping[str, Task], heads: Mapping) -> None:
        super().__init__(tasks)
        self.backbone = encoder()
        encoder_stages(self.backbone, "architecture")
        self.stage_shapes: list[tuple[int, ...]] = [tuple(s) for s in self.backbone.stage_shapes]
        self.adapters = nn.ModuleList(list(encoder().stages)[1:])  # f_1 … f_K−1; stage 0 has no f
        self.attention = nn.ModuleDict()
        for name in self.tasks:
            modules = [attention_module(self.stage_shapes[0][0], self.stage_shapes[0])]
            modules += [attention_module(2 * shape[0], shape) for shape in self.stage_shapes[1:]]
            self.attention[name] = nn.ModuleList(modules)
        self.heads = TaskHeads(self.backbone.out_dim, self.tasks, heads)
        self._mask_sums: dict[str, list[float]] = {
            name: [0.0] * len(self.stage_shapes) for name in self.tasks
        }
        self._mask_count = 0

    def forward(self, batch: dict) -> dict[str, Tensor]:
        shared, h = [], batch["x"]
        for stage in self.backbone.stages:
            h = stage(h)
            shared.append(h)
        features = {}
        for name, modules in self.attention.items():
            attended: Tensor | None = None
            for k, (module, u) in enumerate(zip(modules, shared, strict=True)):
                u_in = u if attended is None else torch.cat([u, self.adapters[k - 1](attended)], dim=1)
                mask = module(u_in)
                attended = mask * u
                if not self.training:
                    self._mask_sums[name][k] += float(mask.detach().float().mean()) * u.shape[0]
            features[name] = attended
        if not self.training:
            self._mask_count += batch["x"].shape[0]
        return self.heads(features)

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Per task, the mean attention mask of each stage over the evaluation pass (`mask_stage<k>`)."""
        if not self._mask_count:
            return {}
        stats = {
            name: {f"mask_stage{k}": s / self._mask_count for k, s in enumerate(sums)}
            for name, sums in self._mask_sums.items()
        }
        self._mask_sums = {name: [0.0] * len(self.stage_shapes) for name in self.tasks}
        self._mask_count = 0
        return stats

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The backbone's last layer with parameters (GradNorm's W): every task's features are its output
        times a mask."""
        last: list[nn.Parameter] = []
        for module in self.backbone.stages[-1].modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                last = params
        return last

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"backbone": ParamRole("trunk"), "adapters": ParamRole("trunk")}
        prefixes |= {f"attention.{t}": ParamRole("mixing", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))
