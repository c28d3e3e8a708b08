"""The data contract: three tensor-resident splits, each with inputs ``x`` and a dict of targets ``y``.

Small and medium data sets live on the training device as whole tensors; batches are slices of them, so
there are no DataLoader workers and no per-batch copies. A batch is a dict ``{"x": Tensor, "y": {target:
Tensor}}``; models read ``batch["x"]``, tasks read ``batch["y"][task.target]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mtlrun.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: Tensor
    y: dict[str, Tensor]

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), {k: v.to(device) for k, v in self.y.items()})


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
            yield {"x": data.x[index], "y": {k: v[index] for k, v in data.y.items()}}
