"""Data-parallel training (torch.distributed, gloo on CPU): two ranks take the same steps as one process on
the whole batch, for loss-based and gradient-based weighting, with both gradient sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_steps.py")
BASE = (
    "experiment=tabular_example",
    "trainer.batch_size=61",  # odd: the ranks' shards differ in size
    "trainer.device=cpu",
    "optim=sgd",  # an update proportional to the gradient: Adam's first steps would magnify rounding noise
)
CONFIGS = {
    "equal": ["weighting=equal"],
    "uncertainty": ["weighting=uncertainty"],
    "pcgrad": ["weighting=pcgrad"],
    "pcgrad_rep": ["weighting=pcgrad", "weighting.grad_source=representation"],
    "mgda": ["weighting=mgda"],
    "mgda_rep": ["weighting=mgda", "weighting.grad_source=representation"],
    "nashmtl": ["weighting=nashmtl"],
    "nashmtl_rep": ["weighting=nashmtl", "weighting.grad_source=representation"],
}
STEPS = 3


def run_steps(out: Path, ranks: int) -> dict[str, dict[str, torch.Tensor]]:
    specs = [f"{name}=" + ",".join([*BASE, *overrides]) for name, overrides in CONFIGS.items()]
    launcher = (
        [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    )
    result = subprocess.run(
        [sys.executable, *launcher, str(WORKER), str(out), str(STEPS), *specs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> tuple[dict, dict]:
    folder = tmp_path_factory.mktemp("ddp")
    return run_steps(folder / "one.pt", 1), run_steps(folder / "two.pt", 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_ranks_equal_one_process(one_and_two, name: str) -> None:
    one, two = (results[name]["after"] for results in one_and_two)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6, msg=f"{name}: {key}")
    # the steps moved every dense trunk parameter, so the comparison is not one of untouched initial values
    before = one_and_two[0][name]["before"]
    for key in (k for k in before if k.startswith("trunk.") and "embedding" not in k):
        assert not torch.allclose(one[key], before[key]), f"{name}: {key} did not move"
