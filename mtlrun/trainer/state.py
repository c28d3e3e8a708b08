"""What the loop tracks besides modules and optimizer: the selection rule and the training state."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


@dataclass
class Monitor:
    """The validation quantity that picks the best epoch: ``loss`` (sum of the per-task validation losses of
    the tasks that are not auxiliary) or ``<task>/<metric>`` (an auxiliary task's too, with a warning: the
    epoch is then chosen for a helper task, which only a deliberate choice should do)."""

    name: str
    higher_is_better: bool
    tasks: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, name: str, tasks: Mapping[str, Task]) -> Monitor:
        if name == "loss":
            return cls(name, False, tuple(t for t, spec in tasks.items() if not spec.auxiliary))
        task, _, metric = name.partition("/")
        if task not in tasks or (metric not in tasks[task].metrics and metric != "loss"):
            choices = ["loss"] + [f"{t}/{m}" for t, spec in tasks.items() for m in ["loss", *spec.metrics]]
            raise ConfigError(
                f"trainer.monitor: '{name}' is not a validation quantity; choose one of {choices}"
            )
        if tasks[task].auxiliary:
            logging.getLogger("mtlrun").warning(
                "warning: trainer.monitor=%s selects the epoch on auxiliary task '%s'", name, task
            )
        return cls(name, metric != "loss" and tasks[task].higher_is_better(metric), tuple(tasks))

    def value(self, val: Mapping[str, Mapping[str, float]]) -> float:
        if self.name == "loss":
            return sum(val[task]["loss"] for task in self.tasks)
        task, _, metric = self.name.partition("/")
        return val[task][metric]

    def improved(self, value: float, best: float | None) -> bool:
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.higher_is_better else value < best


@dataclass
class EpochProgress:
    """Where the current epoch stands: what a checkpoint written between two steps needs to finish the epoch
    exactly as an uninterrupted run would."""

    batches: int = 0  # training batches done in this epoch
    shuffle_state: Tensor | None = None  # the batch-order generator's state when the epoch began
    loss_sums: Tensor | None = None  # [T] task losses summed over those batches
    weight_sums: Tensor | None = None  # [T] task weights summed over those batches
    time_s: float = 0.0  # training time spent in this epoch

    def start(self, shuffle: torch.Generator, num_tasks: int, device: torch.device) -> None:
        """Begin the epoch: a new one keeps how its batch order is drawn (for a checkpoint in it); one resumed
        in its middle draws the same order again, and the loop skips the batches already trained."""
        if self.shuffle_state is None:
            self.shuffle_state = shuffle.get_state()
            self.loss_sums = torch.zeros(num_tasks, device=device)
            self.weight_sums = torch.zeros(num_tasks, device=device)
        else:
            shuffle.set_state(self.shuffle_state)
            self.loss_sums, self.weight_sums = self.loss_sums.to(device), self.weight_sums.to(device)

    def add(self, losses: Tensor, weights: Tensor) -> None:
        """One more batch trained, with these [T] task losses and weights."""
        self.batches += 1
        self.loss_sums += losses
        self.weight_sums += weights.to(self.loss_sums.device)

    def means(self, steps: int) -> tuple[Tensor, Tensor]:
        """The [T] mean task losses and weights over the epoch's ``steps`` batches."""
        return self.loss_sums / steps, self.weight_sums / steps


@dataclass
class TrainState:
    """What changes during training (besides module and optimizer state), saved in the checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimisation steps taken
    train_time_s: float = 0.0
    best_epoch: int | None = None
    best_value: float | None = None
    best_val: dict = field(default_factory=dict)
    best_test: dict = field(default_factory=dict)
    current: EpochProgress = field(default_factory=EpochProgress)  # the epoch under way

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> TrainState:
        return cls(**{**values, "current": EpochProgress(**values["current"])})
