"""The data contract: three tensor-resident splits, each with inputs ``x`` and a dict of targets ``y``.

Small and medium data sets live on the training device as whole tensors; batches are slices of them, so
there are no DataLoader workers and no per-batch copies. A batch is a dict ``{"x": Tensor, "y": {target:
Tensor}}``; models read ``batch["x"]``, tasks read ``batch["y"][task.target]``.

Two optional parts, present in a batch only when the data set has them (so data sets without them pay
nothing):

* ``batch["mask"][target]``: bool [N], True where the row is labelled for that target. Unlabelled rows hold
  a finite placeholder label (0), and losses and metrics count labelled rows only (see ``Task.loss_mean``).
* ``batch["weight"]``: float [N] per-row sample weights; losses are weighted means.

Hooks a data set may override (the runner calls them for every data set, never by name):
``encoder_inputs()`` (extra keyword arguments for the encoder, e.g. a table's categorical columns),
``task_settings()`` (what the data set fitted for a target, applied to its task) and
``save_preprocessing(folder)`` (write fitted preprocessing into the run folder). ``mtlrun predict`` calls the
class method ``new_input(run_dir, path, keep)``: a new file as a trained run's model input (`NewInput`),
transformed with what the run saved; only data sets that read files implement it (data=tabular).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlrun.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: Tensor
    y: dict[str, Tensor]
    mask: dict[str, Tensor] = field(default_factory=dict)  # target -> bool [N]; targets without one: all rows
    weight: Tensor | None = None  # float [N] sample weights; None: every row weighs 1

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(
            self.x.to(device),
            {k: v.to(device) for k, v in self.y.items()},
            {k: v.to(device) for k, v in self.mask.items()},
            None if self.weight is None else self.weight.to(device),
        )


@dataclass
class NewInput:
    """A file a run did not train on, as its model's input (``TensorData.new_input``, ``mtlrun predict``).
    Besides the rows it carries what the run's model was built from, so the model can be rebuilt without
    the training data: ``input_shape``, ``encoder_inputs()`` and ``task_settings()`` as at training time."""

    name: str  # the data set's name, for messages
    x: Tensor  # model input [N, *input_shape]
    columns: Any  # a pandas DataFrame of N rows: the file's columns read along (``keep`` columns, targets)
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # what encoder_inputs() gave in training
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # what task_settings() gave

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def encoder_inputs(self) -> dict[str, Any]:
        return self.encoder_kwargs

    def task_settings(self) -> dict[str, dict[str, Any]]:
        return self.settings


class TensorData:
    """Train/val/test splits held as tensors. Data set classes build their splits and call ``__init__``."""

    name = "tensor"

    def __init__(self, splits: dict[str, Split]) -> None:
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DataError(
                f"data set {self.name}: missing split(s) {missing}; every data set needs {SPLITS}"
            )
        for split_name, split in splits.items():
            if len(split) == 0:
                raise DataError(f"data set {self.name}: split '{split_name}' is empty; give it some rows")
            for target, values in split.y.items():
                if values.shape[0] != len(split):
                    raise DataError(
                        f"data set {self.name}: target '{target}' has {values.shape[0]} rows in split "
                        f"'{split_name}' but the inputs have {len(split)}"
                    )
            for target, mask in split.mask.items():
                if target not in split.y or mask.dtype != torch.bool or mask.shape != (len(split),):
                    raise DataError(
                        f"data set {self.name}: mask '{target}' in split '{split_name}' must be a bool "
                        f"[{len(split)}] tensor of an existing target"
                    )
            if split.weight is not None and split.weight.shape != (len(split),):
                raise DataError(
                    f"data set {self.name}: sample weights in split '{split_name}' must have shape "
                    f"[{len(split)}]; got {list(split.weight.shape)}"
                )
        self.splits = splits

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example's input (without the batch dimension)."""
        return tuple(self.splits["train"].x.shape[1:])

    @property
    def targets(self) -> list[str]:
        return list(self.splits["train"].y)

    def sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}

    def encoder_inputs(self) -> dict[str, Any]:
        """Keyword arguments the encoder needs besides ``in_shape`` (e.g. categorical columns); none here."""
        return {}

    def task_settings(self) -> dict[str, dict[str, Any]]:
        """{target: {setting: value}} fitted from the data (e.g. ``target_scale``), applied to the task that
        reads the target (see ``Task.with_data_settings``); none here."""
        return {}

    def save_preprocessing(self, folder: Path) -> None:
        """Write the fitted preprocessing into the run folder, for predicting on new data; nothing here."""

    @classmethod
    def new_input(cls, run_dir: Path, path: str, keep: Sequence[str] = ()) -> NewInput:
        """The file ``path`` as the input of the model a run of this data set trained, transformed with what
        the run saved in ``run_dir`` (see ``save_preprocessing``; never refitted), with its ``keep`` columns
        read along. Only data sets that read their examples from files can; this one cannot."""
        raise ConfigError(
            f"data set {cls.name}: `mtlrun predict` needs a run trained on file-based data (data=tabular, or "
            "a data set class that implements TensorData.new_input); train one on your table first"
        )

    def to(self, device: torch.device | str) -> TensorData:
        self.splits = {name: split.to(device) for name, split in self.splits.items()}
        return self

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-len(self.splits[split]) // batch_size)

    def batches(
        self, split: str, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[dict]:
        """Yield batches of ``split``; with ``shuffle``, in an order drawn from ``generator``."""
        data = self.splits[split]
        n = len(data)
        order = torch.randperm(n, generator=generator).to(data.x.device) if shuffle else None
        for start in range(0, n, batch_size):
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            batch = {"x": data.x[index], "y": {k: v[index] for k, v in data.y.items()}}
            if data.mask:
                batch["mask"] = {k: v[index] for k, v in data.mask.items()}
            if data.weight is not None:
                batch["weight"] = data.weight[index]
            yield batch
