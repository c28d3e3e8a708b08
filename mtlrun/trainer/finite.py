"""Non-finite task losses (NaN, ±inf): found, and named, without making the GPU wait at every step.

Reading a value computed on a GPU makes the host wait for the device, which costs throughput if it happens at
every step. So where the losses live on a GPU, a step only *records*, on the device, the first step whose
losses were not all finite (and those losses); the host reads that record every ``every`` steps, before any
checkpoint is written (so no checkpoint holds what such a step did to the weights), at the end of each epoch
(before its rows reach metrics.csv), and when a step raises (so the loss is named, not a later symptom).
On the CPU reading costs nothing, and every step is checked as it happens.

Either way the run stops with a `TrainingError` naming the tasks, their losses, the epoch and the step where
they first went non-finite, and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mtlrun.errors import TrainingError

CHECK_EVERY_ON_GPU = 50  # steps between host reads of the record on a GPU


class FiniteLosses:
    """The record of the first step with a non-finite task loss; `check` raises it."""

    def __init__(self, tasks: Sequence[str], device: torch.device, every: int | None = None) -> None:
        """``every``: steps between reads (default: 1 on the CPU, CHECK_EVERY_ON_GPU elsewhere)."""
        self.tasks = list(tasks)
        self.every = every or (1 if device.type == "cpu" else CHECK_EVERY_ON_GPU)
        self.epoch = torch.tensor(-1, device=device)  # of the first non-finite losses (-1: none yet)
        self.step = torch.tensor(-1, device=device)
        self.losses = torch.zeros(len(self.tasks), device=device)
        self.seen = 0

    def observe(self, losses: Tensor, epoch: int, step: int) -> None:
        """Record ``losses`` of (``epoch``, ``step``) if they are the first non-finite ones; check when due."""
        if self.every == 1:  # on the CPU: one reduction, read at once
            if not bool(torch.isfinite(losses).all()):
                self.epoch, self.step, self.losses = torch.tensor(epoch), torch.tensor(step), losses.detach()
                self.check()
            return
        first = ~torch.isfinite(losses).all() & (self.step < 0)
        # python numbers enter the kernels as scalars: no host-to-device copy, so no wait
        self.epoch = torch.where(first, epoch, self.epoch)
        self.step = torch.where(first, step, self.step)
        self.losses = torch.where(first, losses.detach().float(), self.losses)
        self.seen += 1
        if self.seen % self.every == 0:
            self.check()

    def check(self) -> None:
        step = int(self.step)
        if step < 0:
            return
        values = zip(self.tasks, self.losses.tolist(), strict=True)
        bad = {name: value for name, value in values if not math.isfinite(value)}
        raise TrainingError(
            f"loss of task(s) {list(bad)} is {list(bad.values())} at epoch {int(self.epoch)}, step {step}; "
            "lower the learning rate (optim.groups.*.lr), set trainer.grad_clip, or check the targets' scale. "
            "Results up to the previous epoch are in metrics.csv."
        )
