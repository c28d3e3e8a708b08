"""Properties every gradient-based method must keep, run over seeded families of gradient matrices.

Parametrized over every option of conf/weighting whose class is gradient-based, so a new method is checked
without editing this file. What each method documents for itself (randomized or not, its
direction for equal gradients) is read from the claims table, tests/weighting/claims.py; method-specific
maths (closed forms, optimality conditions) lives in tests/weighting/test_weighting_<method>.py.
"""

from __future__ import annotations

import pytest
import torch
from claims import CLAIMS
from conftest import compose_cfg, options
from gradient_families import fake_losses, fake_tasks, matrices

from mtlrun.instantiate import build, resolve_target
from mtlrun.weighting.base import GradientWeighting


def gradient_options() -> list[str]:
    found = []
    for option in options("weighting"):
        cls = resolve_target(compose_cfg([f"weighting={option}"]).weighting, "weighting")
        if isinstance(cls, type) and issubclass(cls, GradientWeighting):
            found.append(option)
    return found


GRADIENT_OPTIONS = gradient_options()


def make(option: str, num_tasks: int, **overrides) -> GradientWeighting:
    cfg = compose_cfg([f"weighting={option}", *[f"weighting.{k}={v}" for k, v in overrides.items()]])
    method = build(cfg.weighting, "weighting", tasks=fake_tasks(num_tasks))
    return method.double()


def aggregate(method: GradientWeighting, grads: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return method.aggregate(grads.clone(), fake_losses(len(grads)))


def test_the_parametrization_below_sees_every_gradient_method():
    # guards the parametrization: it is not empty, and every listed option really is gradient-based
    assert {"pcgrad", "mgda", "cagrad", "nashmtl", "upgrad"} <= set(GRADIENT_OPTIONS)
    for option in GRADIENT_OPTIONS:
        assert make(option, 3).needs_task_grads


@pytest.mark.parametrize("option", GRADIENT_OPTIONS)
def test_finite_direction_and_weights_of_the_right_shape(option):
    for label, grads in matrices():
        method = make(option, len(grads))
        direction = aggregate(method, grads)
        assert direction.shape == (grads.shape[1],), label
        assert torch.isfinite(direction).all(), label
        assert method.last_weights.shape == (len(grads),), label
        assert torch.isfinite(method.last_weights).all(), label


@pytest.mark.parametrize("option", GRADIENT_OPTIONS)
def test_equal_task_gradients_give_that_gradient_up_to_the_documented_scale(option):
    for num_tasks in (2, 3, 5):
        g = torch.randn(1, 24, generator=torch.Generator().manual_seed(num_tasks), dtype=torch.float64)
        method = make(option, num_tasks)
        direction = aggregate(method, g.repeat(num_tasks, 1))
        expected = CLAIMS[option].direction_when_equal(g[0].clone(), num_tasks)
        assert torch.allclose(direction, expected, rtol=1e-4, atol=1e-6), (
            num_tasks,
            direction[:3],
            expected[:3],
        )


@pytest.mark.parametrize("option", GRADIENT_OPTIONS)
def test_permuting_tasks_permutes_the_weights_and_keeps_the_direction(option):
    if CLAIMS[option].randomized:
        pytest.skip("randomized method: two calls differ by design")
    for label, grads in matrices(task_counts=(3, 5)):
        perm = torch.randperm(len(grads), generator=torch.Generator().manual_seed(7))
        method = make(option, len(grads))
        direction = aggregate(method, grads)
        weights = method.last_weights.clone()
        permuted = make(option, len(grads))
        torch.manual_seed(0)
        direction_p = permuted.aggregate(grads[perm].clone(), fake_losses(len(grads))[perm])
        scale = direction.abs().max().clamp_min(1e-12)
        assert torch.allclose(direction_p / scale, direction / scale, atol=1e-4), label
        assert torch.allclose(permuted.last_weights, weights[perm], rtol=1e-3, atol=1e-6), label


@pytest.mark.parametrize("option", GRADIENT_OPTIONS)
def test_methods_that_are_weightings_return_the_weighted_sum_of_rows(option):
    method = make(option, 3)
    if not method.direction_is_weighted_sum:
        pytest.skip("not a weighting of the task gradients")
    for label, grads in matrices(task_counts=(2, 3)):
        method = make(option, len(grads))
        direction = aggregate(method, grads)
        combined = grads.T @ method.last_weights.to(grads.dtype)
        scale = direction.abs().max().clamp_min(1e-12)
        assert torch.allclose(combined / scale, direction / scale, atol=1e-4), label


def test_load_builds_a_method_from_its_yaml_for_use_outside_the_runner():
    from mtlrun.errors import ConfigError
    from mtlrun.weighting import load

    upgrad = load("upgrad", ["a", "b", "c"])
    grads = torch.tensor([[1.0, 0.0], [-0.9, 0.3], [0.2, 1.0]], dtype=torch.float64)
    direction = upgrad.double().aggregate(grads)
    assert (grads @ direction >= -1e-9).all()  # UPGrad's update conflicts with no task
    assert torch.allclose(grads.T @ upgrad.last_weights.double(), direction)
    assert load("cagrad", ["a", "b"], c=0.0).c == 0.0
    with pytest.raises(ConfigError, match="does not exist"):
        load("nope", ["a"])
