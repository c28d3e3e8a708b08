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


@pytest.mark.parametrize(
    "overrides",
    [["weighting=equal"], ["weighting=uncertainty"], ["weighting=equal", "trainer.precision=bf16"]],
    ids=lambda o: "-".join(v.split("=")[1] for v in o),
)
def test_a_training_step_never_makes_the_host_wait_for_the_gpu(overrides: list[str]) -> None:
    """No synchronising call (``.item()``, ``float(tensor)``, a device-to-host copy) in a loss-based step: CUDA's
    sync debug mode turns any into an error."""
    from itertools import islice

    from conftest import compose_cfg

    from mtlrun.trainer.setup import setup

    s = setup(compose_cfg(["data=kendall_toy", "trainer.device=cuda", *overrides]))
    batches = list(islice(s.data.batches("train", 32, shuffle=True, generator=s.shuffle), 4))
    s.step(batches[0], where=(1, 0))  # the first step initialises CUDA state (allowed to wait)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches[1:], start=1):
            losses, objective = s.step(batch, where=(1, step))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert losses.is_cuda and torch.isfinite(losses).all()


def test_a_nan_loss_on_the_gpu_is_named_with_the_step_it_happened_at() -> None:
    """On a GPU the finite check is deferred; it still names the first non-finite step, not a later one."""
    from itertools import islice

    from conftest import compose_cfg

    from mtlrun.errors import TrainingError
    from mtlrun.trainer.setup import setup

    s = setup(compose_cfg(["data=kendall_toy", "trainer.device=cuda"]))
    batches = list(islice(s.data.batches("train", 32, shuffle=True, generator=s.shuffle), 4))
    batches[2]["y"]["y1"] = batches[2]["y"]["y1"] * float("nan")
    with pytest.raises(TrainingError, match=r"\['y1'\].*epoch 1, step 2"):
        for step, batch in enumerate(batches):
            s.step(batch, where=(1, step))
        s.finite.check()  # what the loop does at the epoch's end
