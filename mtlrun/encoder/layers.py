"""Small building blocks shared by encoders and heads."""

from __future__ import annotations

import torch.nn as nn

from mtlrun.errors import ConfigError


def activation(name: str) -> nn.Module:
    """An activation module from its torch.nn class name (`ReLU`, `GELU`, `Tanh`, `SiLU`, ...)."""
    cls = getattr(nn, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(
            f"activation '{name}' is not a torch.nn module; use a class name such as ReLU or GELU"
        )
    return cls()


def mlp(
    in_dim: int, hidden: list[int], act: str, dropout: float, out_dim: int | None = None
) -> nn.Sequential:
    """Linear -> activation -> dropout for each hidden width, then an optional plain Linear to `out_dim`."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1); got {dropout}")
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
