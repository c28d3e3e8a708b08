"""A multilayer perceptron encoder for vector (or flattened) inputs."""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import mlp


class MLPEncoder(nn.Module):
    def __init__(
        self, in_shape: tuple[int, ...], hidden: list[int], activation: str = "ReLU", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = mlp(math.prod(in_shape), list(hidden), activation, dropout)
        self.out_dim = hidden[-1] if hidden else math.prod(in_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))
