"""Helpers for architectures that act between an encoder's stages (cross-stitch, sluice, MTAN, soft sharing).

An encoder is a sequence of `stages` (an `nn.ModuleList`) with each stage's output shape in `stage_shapes`
(see `mtlrun.encoder`); these helpers check that an encoder has them and turn a config's choice of stages
into indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from mtlrun.errors import ConfigError


def encoder_stages(encoder: nn.Module, key: str) -> nn.ModuleList:
    """The encoder's `stages`; a `ConfigError` naming `key` when it has none (or an empty list)."""
    stages = getattr(encoder, "stages", None)
    if not isinstance(stages, nn.ModuleList) or len(stages) == 0:
        raise ConfigError(
            f"{key}: this architecture acts between encoder stages, and {type(encoder).__name__} has none "
            "(no `stages` list, or an empty one, as an MLP encoder with no hidden layer has)"
        )
    return stages


def select_stages(spec: str | Sequence[int], num_stages: int, key: str) -> list[int]:
    """Sorted stage indices from `"all"` or a list of indices (negative ones count from the end)."""
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"{key}: expected 'all' or a list of stage indices, got '{spec}'")
        return list(range(num_stages))
    chosen = set()
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_stages <= index < num_stages:
            raise ConfigError(
                f"{key}: {index!r} is not a stage of this encoder, which has {num_stages} stages "
                f"(0..{num_stages - 1}, or negative indices from the end)"
            )
        chosen.add(index % num_stages)
    return sorted(chosen)
