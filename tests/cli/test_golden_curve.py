"""Golden curve: the real `mtlrun` command on a tiny config, its training rows pinned.

Any change to what a run computes (data order, initialisation, losses, the weighting's maths, the optimizer,
resume bookkeeping) moves these numbers; a change that only reshapes the code does not. When a change is
meant to alter them, say so in the commit and regenerate the table with::

    python tests/cli/test_golden_curve.py --print

The numbers come from torch 2.13.0 on an x86-64 CPU (float32); rtol 1e-4 leaves room for the small
differences between CPU kernels, not for a changed computation.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

COMMAND = [
    "debug=smoke",
    "trainer.epochs=3",
    "trainer.limit_train_batches=8",
    "weighting=uncertainty",  # its weights move every step: they are pinned too
]

# (epoch, task, metric) -> value of metrics.csv's train rows
GOLDEN = {
    (1, "left", "loss"): 2.3868844509124756,
    (1, "left", "weight"): 0.9898735880851746,
    (1, "right", "loss"): 2.4053027629852295,
    (1, "right", "weight"): 0.989871621131897,
    (1, "sum", "loss"): 48.880802154541016,
    (1, "sum", "weight"): 0.495403915643692,
    (2, "left", "loss"): 2.3993802070617676,
    (2, "left", "weight"): 0.9715154767036438,
    (2, "right", "loss"): 2.3067128658294678,
    (2, "right", "weight"): 0.9715834856033325,
    (2, "sum", "loss"): 15.619973182678223,
    (2, "sum", "weight"): 0.4888868033885956,
    (3, "left", "loss"): 2.2817766666412354,
    (3, "left", "weight"): 0.9639881253242493,
    (3, "right", "loss"): 2.310375928878784,
    (3, "right", "weight"): 0.9641273617744446,
    (3, "sum", "loss"): 12.585222244262695,
    (3, "sum", "weight"): 0.4868544340133667,
}


def mtlrun() -> str:
    return shutil.which("mtlrun", path=str(Path(sys.executable).parent)) or "mtlrun"


def train_rows(folder: Path) -> dict[tuple[int, str, str], float]:
    subprocess.run(
        [mtlrun(), *COMMAND, f"hydra.run.dir={folder}"], check=True, capture_output=True, cwd=folder.parent
    )
    metrics = pd.read_csv(folder / "metrics.csv")
    rows = metrics[(metrics.split == "train") & metrics.metric.isin(["loss", "weight"])]
    return {(int(r.epoch), r.task, r.metric): float(r.value) for r in rows.itertuples()}


def test_the_training_rows_of_a_tiny_run_are_the_golden_ones(tmp_path: Path) -> None:
    rows = train_rows(tmp_path / "run")
    assert rows == pytest.approx(GOLDEN, rel=1e-4)
    assert rows[(3, "sum", "loss")] < rows[(1, "sum", "loss")] / 3  # and the curve goes down


if __name__ == "__main__" and "--print" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for key, value in train_rows(Path(tmp) / "run").items():
            print(f"    {key}: {value},")
