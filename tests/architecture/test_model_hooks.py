"""The architecture hooks that later designs use: a penalty added to the objective (and logged), and
diagnostics gathered during evaluation (and written next to the metrics). Checked with a tiny design
defined here, through the real runner."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import compose_cfg
from torch import Tensor

from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.trainer.runner import run


class PenalisedSharing(HardSharing):
    """Hard sharing plus an L2 penalty on the trunk and a count of evaluation batches."""

    def __init__(self, encoder, tasks, heads, strength: float = 0.5) -> None:
        super().__init__(encoder, tasks, heads)
        self.strength = strength
        self.eval_batches = 0

    def forward(self, batch: dict) -> dict[str, Tensor]:
        if not self.training:
            self.eval_batches += 1
        return super().forward(batch)

    def penalty(self) -> Tensor:
        return self.strength * sum(p.pow(2).sum() for p in self.trunk.parameters())

    def diagnostics(self) -> dict[str, dict[str, float]]:
        stats = {"model": {"eval_batches": float(self.eval_batches)}}
        self.eval_batches = 0
        return stats


def run_with(tmp_path: Path, *overrides: str) -> pd.DataFrame:
    cfg = compose_cfg(
        [
            "debug=smoke",
            "data=kendall_toy",
            "trainer.epochs=2",
            f"architecture._target_={__name__}.PenalisedSharing",
            *overrides,
        ]
    )
    tmp_path.mkdir()
    run(cfg, tmp_path)
    return pd.read_csv(tmp_path / "metrics.csv")


def test_penalty_is_logged_and_pulls_the_trunk_toward_zero(tmp_path: Path) -> None:
    table = run_with(tmp_path / "a", "+architecture.strength=1.0")
    penalty = table[(table.task == "model") & (table.metric == "penalty")]
    assert len(penalty) == 2 and (penalty.value > 0).all()
    assert penalty.value.iloc[1] < penalty.value.iloc[0]  # a strong L2 penalty shrinks the trunk
    weak = run_with(tmp_path / "b", "+architecture.strength=0.0")
    assert (weak[(weak.task == "model") & (weak.metric == "penalty")].value == 0).all()


def test_penalty_also_reaches_the_trunk_under_a_gradient_method(tmp_path: Path) -> None:
    table = run_with(tmp_path / "g", "weighting=mgda", "+architecture.strength=1.0")
    penalty = table[(table.task == "model") & (table.metric == "penalty")].value
    assert penalty.iloc[1] < penalty.iloc[0]


def test_diagnostics_are_written_next_to_each_split(tmp_path: Path) -> None:
    table = run_with(tmp_path / "d")
    counts = table[(table.task == "model") & (table.metric == "eval_batches")]
    assert set(counts.split) == {"val", "test"}
    assert (counts.value == 1.0).all()  # debug=smoke: one evaluation batch per split
    assert len(counts) == 4  # 2 epochs x (val, test)
