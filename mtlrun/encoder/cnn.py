"""A small convolutional encoder for image inputs [N, C, H, W]."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.encoder.layers import activation as make_activation
from mtlrun.errors import ConfigError


class CNNEncoder(nn.Module):
    """Conv(3x3) -> BatchNorm -> activation -> MaxPool(2) per entry of ``channels``; then a linear layer to
    ``out_dim`` features."""

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
        layers: list[nn.Module] = []
        width = in_shape[0]
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), make_activation(activation)]
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            width = c
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *in_shape)).shape[1]
        self.project = nn.Sequential(
            nn.Linear(flat, out_dim), make_activation(activation), nn.Dropout(dropout)
        )
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x))
