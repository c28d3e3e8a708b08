"""A small convolutional encoder for image inputs [N, C, H, W]."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import activation as make_activation
from mtlrun.errors import ConfigError


class CNNEncoder(nn.Module):
    """One stage per entry of `channels`: Conv(3x3) -> BatchNorm -> activation -> MaxPool(2); then a last
    stage that flattens and projects to `out_dim` features.

    `stages` and `stage_shapes` (each stage's output shape, without the batch dimension) let column
    and attention architectures act between stages; `forward` runs them in order.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        channels: list[int],
        out_dim: int = 128,
        activation: str = "ReLU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(
                f"encoder: the CNN encoder needs image inputs [C, H, W]; this data set gives {list(in_shape)} "
                "(use encoder=mlp)"
            )
        self.in_shape = tuple(in_shape)
        self.stages = nn.ModuleList()
        self.stage_shapes: list[tuple[int, ...]] = []
        width = in_shape[0]
        probe = torch.zeros(1, *in_shape)
        for c in channels:
            stage = nn.Sequential(
                nn.Conv2d(width, c, 3, padding=1),
                nn.BatchNorm2d(c),
                make_activation(activation),
                nn.MaxPool2d(2, ceil_mode=True),
            )
            with torch.no_grad():
                probe = stage(probe)
            self.stages.append(stage)
            self.stage_shapes.append(tuple(probe.shape[1:]))
            width = c
        self.stages.append(
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(probe[0].numel(), out_dim),
                make_activation(activation),
                nn.Dropout(dropout),
            )
        )
        self.stage_shapes.append((out_dim,))
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x
