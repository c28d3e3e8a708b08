"""Learning-rate schedules that scale every parameter group from its own base learning rate.

Each function returns a ``LambdaLR``: the factor it computes multiplies each group's initial lr, so the
ratios between groups (trunk, heads, weighting, mixing) hold throughout training. Stepped once per
optimizer step; ``total_steps`` is supplied by the runner.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay from 1 to ``min_factor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step(
    optimizer: torch.optim.Optimizer, total_steps: int, every_fraction: float = 0.5, gamma: float = 0.1
) -> LambdaLR:
    """Multiply by ``gamma`` each time training passes another ``every_fraction`` of ``total_steps``."""
    every = max(1, int(total_steps * every_fraction))
    return LambdaLR(optimizer, lambda s: gamma ** (s // every))


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    """No schedule: every group keeps its base learning rate."""
    return LambdaLR(optimizer, lambda s: 1.0)
