"""A multilayer perceptron encoder for vector (or flattened) inputs."""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import mlp


class MLPEncoder(nn.Module):
    """One stage per hidden width: Linear -> activation (-> dropout).

    ``stages`` and ``stage_shapes`` (each stage's output shape, without the batch dimension) let column
    architectures (cross-stitch, sluice, soft sharing) act between stages; ``forward`` runs them in order.
    """

    def __init__(
        self, in_shape: tuple[int, ...], hidden: list[int], activation: str = "ReLU", dropout: float = 0.0
    ) -> None:
        super().__init__()
        width = math.prod(in_shape)
        self.stages = nn.ModuleList()
        self.stage_shapes: list[tuple[int, ...]] = []
        for h in hidden:
            self.stages.append(mlp(width, [h], activation, dropout))
            self.stage_shapes.append((h,))
            width = h
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for stage in self.stages:
            x = stage(x)
        return x
