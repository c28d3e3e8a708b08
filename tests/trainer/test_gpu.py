"""GPU path: a smoke run on CUDA in fp32 and bf16. Marked `gpu`; skipped where no CUDA device is visible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_smoke_run_on_cuda(tmp_path: Path, precision: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlrun",
            "debug=smoke",
            "trainer.device=cuda",
            f"trainer.precision={precision}",
            "weighting=uncertainty",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["device"].startswith("cuda")


def test_auto_device_picks_cuda() -> None:
    from mtlrun.trainer.setup import resolve_device

    assert resolve_device("auto").type == "cuda"
