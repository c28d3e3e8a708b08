"""Building blocks of the `mixing` parameters that several architectures share: the gates of the
mixture-of-experts designs (MMoE, OMoE, PLE, CGC) and the initial mixing matrices of the column designs
(cross-stitch, sluice)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError


def convex_init(size: int, own: float) -> Tensor:
    """A [size, size] matrix with `own` on the diagonal and 1 − `own` shared out equally over the rest of
    each row, so every row sums to 1 (a single entry is 1). `own` = 1/size gives the uniform matrix."""
    if size == 1:
        return torch.ones(1, 1)
    matrix = torch.full((size, size), (1.0 - own) / (size - 1))
    matrix.fill_diagonal_(own)
    return matrix


class InputFeatures(nn.Module):
    """The raw input as a gate reads it: x flattened to [N, d], with d from the encoder's `in_shape` (the
    model is built before it sees data)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        shape = getattr(encoder, "in_shape", None)
        if shape is None:
            raise ConfigError(
                f"architecture.gate_input=input: {type(encoder).__name__} does not say its input shape "
                "(in_shape); use gate_input=experts"
            )
        self.shape = tuple(int(s) for s in shape)
        self.out_dim = math.prod(self.shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """Σ_e weights[n, e] · experts[n, e, :]: [N, E] and [N, E, D] -> [N, D]."""
    return torch.bmm(weights.unsqueeze(1).to(experts.dtype), experts).squeeze(1)


class UsageMeter:
    """Sums gate weights over evaluation examples; `pop` returns the mean weight of each expert and resets."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], Tensor] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._names: dict[tuple[str, str], list[str]] = {}

    def add(self, row: str, prefix: str, names: Sequence[str], weights: Tensor) -> None:
        key = (row, prefix)
        total = weights.detach().float().sum(0)
        self._sums[key] = total + self._sums[key] if key in self._sums else total
        self._counts[key] = self._counts.get(key, 0) + weights.shape[0]
        self._names[key] = list(names)

    def pop(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (row, prefix), total in self._sums.items():
            means = (total / max(self._counts[(row, prefix)], 1)).tolist()
            names = self._names[(row, prefix)]
            out.setdefault(row, {}).update({f"{prefix}{n}": m for n, m in zip(names, means, strict=True)})
        self._sums, self._counts, self._names = {}, {}, {}
        return out
