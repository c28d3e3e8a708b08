"""A multilayer perceptron encoder for vector (or flattened) inputs."""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import mlp


class FlatteningStage(nn.Sequential):
    """The first stage: flattens whatever input shape it gets, so every stage can be run on its own."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.flatten(1))


class MLPEncoder(nn.Module):
    """One stage per hidden width: Linear -> activation (-> dropout).

    `stages` and `stage_shapes` (each stage's output shape, without the batch dimension) let column
    architectures (cross-stitch, sluice, soft sharing) act between stages; `forward` runs them in order.
    """

    def __init__(
        self, in_shape: tuple[int, ...], hidden: list[int], activation: str = "ReLU", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        width = math.prod(in_shape)
        self.stages = nn.ModuleList()
        self.stage_shapes: list[tuple[int, ...]] = []
        for i, h in enumerate(hidden):
            stage = mlp(width, [h], activation, dropout)
            self.stages.append(FlatteningStage(*stage) if i == 0 else stage)
            self.stage_shapes.append((h,))
            width = h
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1) if not self.stages else x  # no hidden layer: the flattened input is the output
        for stage in self.stages:
            x = stage(x)
        return x
