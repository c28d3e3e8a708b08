"""``trainer.compile``: a compiled forward trains like the eager one, and the one pairing it cannot serve
(gradients with respect to the shared representation) is refused with a message, never run wrong."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from conftest import compose_cfg

from mtlrun.errors import ConfigError
from mtlrun.trainer.setup import setup

BASE = ["data=kendall_toy", "trainer.device=cpu", "weighting=mgda"]


def test_compile_with_representation_gradients_is_refused() -> None:
    with pytest.raises(ConfigError, match="grad_source=shared_params, or trainer.compile=false"):
        setup(compose_cfg([*BASE, "trainer.compile=true", "weighting.grad_source=representation"]))


def losses_of(overrides: list[str], steps: int = 4) -> torch.Tensor:
    s = setup(compose_cfg([*BASE, *overrides]))
    batches = s.data.batches("train", 32, shuffle=True, generator=s.shuffle)
    return torch.stack([s.step(batch, where=(1, i))[0] for i, batch in enumerate(islice(batches, steps))])


@pytest.mark.slow
def test_a_compiled_forward_takes_the_eager_steps() -> None:
    eager = losses_of(["weighting.grad_source=shared_params"])
    compiled = losses_of(["weighting.grad_source=shared_params", "trainer.compile=true"])
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager[0], eager[-1])  # the steps trained
