"""The claims table (claims.py) covers exactly the shipped weighting options, and every claim holds."""

from __future__ import annotations

import pytest
import torch
from claims import CLAIMS
from conftest import CONF, options
from omegaconf import OmegaConf

from mtlrun.instantiate import resolve_target
from mtlrun.weighting import load

# three pairwise-conflicting gradients (every dot product < 0) with coordinates of mixed signs: every
# randomized method's draw (task order, kept signs) changes its output here
CONFLICTING = torch.tensor(
    [[1.0, 0.2, -0.5, 0.3], [-0.6, 0.9, 0.4, -0.2], [-0.5, -0.8, 0.1, 0.6]], dtype=torch.float64
)
LOSSES = torch.tensor([0.9, 2.5, 0.3], dtype=torch.float64)


def output(option: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(direction or objective, last_weights) of a fresh method after one call under ``seed``."""
    method = load(option, ["t0", "t1", "t2"]).double()
    torch.manual_seed(seed)
    if method.needs_task_grads:
        result = method.aggregate(CONFLICTING.clone(), LOSSES.clone())
    else:
        result = method.combine(LOSSES.clone())
    return result.detach(), method.last_weights.clone()


def test_every_shipped_option_has_a_claim():
    missing = sorted(set(options("weighting")) - set(CLAIMS))
    assert not missing, f"conf/weighting options without an entry in tests/weighting/claims.py: {missing}"


def test_every_claim_names_a_shipped_option():
    stale = sorted(set(CLAIMS) - set(options("weighting")))
    assert not stale, f"tests/weighting/claims.py names options that conf/weighting does not ship: {stale}"


@pytest.mark.parametrize("option", sorted(CLAIMS))
def test_gradient_based_options_and_only_they_claim_a_direction_for_equal_gradients(option):
    cls = resolve_target(OmegaConf.load(CONF / "weighting" / f"{option}.yaml"), "weighting")
    assert (CLAIMS[option].direction_when_equal is not None) == cls.needs_task_grads


@pytest.mark.parametrize("option", sorted(CLAIMS))
def test_the_randomized_claim_matches_what_a_different_seed_does(option):
    first, first_weights = output(option, seed=0)
    again, again_weights = output(option, seed=0)
    assert torch.equal(first, again) and torch.equal(first_weights, again_weights), "not reproducible"
    other, other_weights = output(option, seed=1)
    changed = not torch.allclose(first, other, rtol=1e-9) or not torch.allclose(
        first_weights, other_weights, rtol=1e-9
    )
    assert changed == CLAIMS[option].randomized, (first, other, first_weights, other_weights)
