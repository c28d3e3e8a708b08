"""Multi-Task Attention Network, MTAN (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019).

One shared backbone (one encoder) computes u_k, the output of stage k. Each task t has one soft-attention
module per stage, which selects the features it needs from the shared ones:

    a_{t,0} = m_{t,0}(u_0)                     â_{t,0} = a_{t,0} ⊙ u_0
    a_{t,k} = m_{t,k}([u_k ; f_k(â_{t,k-1})])   â_{t,k} = a_{t,k} ⊙ u_k      (k = 1 .. K-1)

and task t's head reads â_{t,K-1}. The mask a_{t,k} ∈ (0, 1) has u_k's shape; [· ; ·] concatenates along
features/channels.

* m_{t,k} (task t's attention module): for feature maps, conv1x1 → BN → ReLU → conv1x1 → BN → sigmoid, hidden
  width = the stage's channels, as in the paper; for vectors (MLP stages, the CNN's last, flattening stage),
  Linear → ReLU → Linear → sigmoid (no batch norm, like the MLP encoder). Weights are Xavier-normal, biases
  zero, as in the authors' code.
* f_k (the paper's shared feature extractor f, a 3x3 conv followed by pooling to the next block's size):
  stage k of a second encoder built by the same factory, which maps stage k-1's shape to stage k's. For the
  CNN encoder that is exactly conv3x3 → BN → ReLU → max-pool (and, for the last stage, flatten → linear);
  for the MLP encoder it is the next Linear layer. f_k is shared by all tasks, as in the paper.
* At this scale a stage is one layer, so the mask reads the stage output it multiplies (the paper's
  SegNet reads a block's first conv and multiplies its second).

When every mask is 1, each task's features are the backbone's output: MTAN then reduces to hard sharing.

Roles: the backbone and the f_k are shared (part ``trunk``, task None, group ``shared``): every task's loss
reaches them. Task t's attention modules are reached only by task t's loss, so task t owns them; they are
sigmoid gates that select features, the role MMoE's gates play, so their part is ``mixing`` (group
``mixing``, whose lr defaults to the optimizer's and can be tuned apart from the trunk).

There is no shared representation (``has_representation`` False): tasks read attended features, which
depend on every stage's output through the masks, so no single tensor carries all the shared gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


def attention_module(in_width: int, shape: tuple[int, ...]) -> nn.Sequential:
    """A soft-attention mask generator from ``in_width`` features/channels to a mask of ``shape``."""
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
    """A shared backbone and, per task, one attention module per stage that masks the shared features.
    No shared representation (``has_representation`` False): see the module docstring."""

    has_representation = False

    def __init__(self, encoder: EncoderFactory, tasks: Mapping[str, Task], heads: Mapping) -> None:
        super().__init__(tasks)
        self.backbone = encoder()
        self.stage_shapes: list[tuple[int, ...]] = [tuple(s) for s in self.backbone.stage_shapes]
        if not self.stage_shapes:
            raise ConfigError("architecture=mtan: the encoder has no stages to attend to")
        self.adapters = nn.ModuleList(list(encoder().stages)[1:])  # f_1 .. f_{K-1}; stage 0 has no f
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
        """Per task, the mean attention mask of each stage over the evaluation pass (``mask_stage<k>``)."""
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
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)
