"""Aligned-MTL: the aligned gradients B G are orthogonal with equal norms, the 2-task closed form, rank
deficiency, the scale modes, and what a common scaling of the gradients does (and does not) change."""

import math

import pytest
import torch
from conftest import compose_cfg
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.weighting.aligned_mtl import AlignedMTL, balance_transformation

EPS64 = torch.finfo(torch.float64).eps


def aligned(num_tasks: int, **kwargs) -> AlignedMTL:
    return AlignedMTL(fake_tasks(num_tasks), **kwargs).double()


def test_the_yaml_builds_the_documented_defaults():
    method = build(compose_cfg(["weighting=aligned_mtl"]).weighting, "weighting", tasks=fake_tasks(3))
    assert isinstance(method, AlignedMTL) and method.direction_is_weighted_sum
    assert (method.scale_mode, method.reduction, method.rank_tol) == ("min", "sum", 0.0)


def test_aligned_gradients_are_orthogonal_with_equal_norms_on_full_rank_families():
    checked = 0
    for label, grads in matrices(task_counts=(2, 3, 5)):
        eigenvalues = torch.linalg.eigvalsh(grads @ grads.T)
        if eigenvalues[0] <= len(grads) * EPS64 * eigenvalues[-1]:
            continue  # rank deficient: see the zero-row test
        b = balance_transformation(grads @ grads.T, "min", len(grads) * EPS64)
        rows = b @ grads
        gram = rows @ rows.T
        # orthogonal, every row of squared norm λ_min; rounding grows with the condition number
        tol = max(1e-10, 100 * EPS64 * (eigenvalues[-1] / eigenvalues[0]).item())
        expected = eigenvalues[0] * torch.eye(len(grads), dtype=grads.dtype)
        assert torch.allclose(gram / eigenvalues[0], expected / eigenvalues[0], atol=tol), label
        # the method's weights are B w (w = 1) and its direction the sum of the aligned gradients
        method = aligned(len(grads))
        direction = method.aggregate(grads)
        assert torch.allclose(method.last_weights, b.sum(dim=1), rtol=1e-8, atol=1e-12), label
        assert torch.allclose(direction, rows.sum(dim=0), rtol=1e-6, atol=1e-9 * rows.abs().max().item()), (
            label
        )
        checked += 1
    assert checked >= 30


def test_two_unit_gradients_follow_the_closed_form():
    # M = [[1, c], [c, 1]]: eigenvalues 1 ± c with eigenvectors (1, ±1)/√2, so B·1 = √λ_min/√(1 + c)·1:
    # the plain sum g_0 + g_1 when c < 0, shrunk by √((1 − c)/(1 + c)) when c > 0.
    for c in (-0.8, -0.3, 0.4, 0.9):
        u = torch.tensor([1.0, 0.0], dtype=torch.float64)
        v = torch.tensor([c, math.sqrt(1 - c * c)], dtype=torch.float64)
        grads = torch.stack([u, v])
        method = aligned(2)
        direction = method.aggregate(grads)
        factor = 1.0 if c < 0 else math.sqrt((1 - c) / (1 + c))
        assert torch.allclose(method.last_weights, torch.full((2,), factor, dtype=torch.float64), rtol=1e-10)
        assert torch.allclose(direction, factor * (u + v), rtol=1e-10)


def test_common_scaling_keeps_the_weights_and_scales_the_direction():
    # B = σ V Λ^{-1/2} Vᵀ is homogeneous of degree 0 in G: the paper's magnitude invariance (up to
    # rounding, which grows with the condition number: 1e12 for badly_scaled)
    for label, grads in matrices(task_counts=(3, 5), seeds=(0,)):
        method = aligned(len(grads))
        direction = method.aggregate(grads)
        weights = method.last_weights.clone()
        for c in (1e-3, 7.0, 1e4):
            scaled = aligned(len(grads))
            scaled_direction = scaled.aggregate(c * grads)
            assert torch.allclose(scaled.last_weights, weights, rtol=1e-6, atol=1e-12), (label, c)
            assert torch.allclose(scaled_direction, c * direction, rtol=1e-6, atol=1e-9 * c), (label, c)


def test_zero_row_is_dropped_from_the_alignment():
    for label, grads in matrices(task_counts=(2, 3, 5)):
        if not label.startswith("zero_row"):
            continue
        method = aligned(len(grads))
        direction = method.aggregate(grads)
        assert torch.isfinite(direction).all(), label
        active = grads[:-1]
        b = balance_transformation(grads @ grads.T, "min", len(grads) * EPS64)
        rows = (b @ grads)[:-1]
        lam_min = torch.linalg.eigvalsh(active @ active.T)[0]
        expected = lam_min * torch.eye(len(active), dtype=grads.dtype)
        assert torch.allclose(rows @ rows.T, expected, atol=1e-9 * lam_min.item()), label


def test_equal_rows_give_t_times_g_for_sum_and_g_for_mean():
    g = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for num_tasks in (2, 4):
        method = aligned(num_tasks)
        assert torch.allclose(method.aggregate(g.repeat(num_tasks, 1)), num_tasks * g, rtol=1e-10)
        assert torch.allclose(method.last_weights, torch.ones(num_tasks, dtype=torch.float64), rtol=1e-10)
        mean = aligned(num_tasks, reduction="mean")
        assert torch.allclose(mean.aggregate(g.repeat(num_tasks, 1)), g, rtol=1e-10)


@pytest.mark.parametrize(
    ("mode", "pick"), [("min", torch.min), ("median", torch.median), ("rmse", torch.mean)]
)
def test_scale_modes_set_the_norm_of_the_aligned_gradients(mode, pick):
    grads = matrices(task_counts=(3,), seeds=(2,))
    _, g = next(grads)  # the random family
    eigenvalues = torch.linalg.eigvalsh(g @ g.T)
    rows = balance_transformation(g @ g.T, mode, 3 * EPS64) @ g
    assert torch.allclose(rows.norm(dim=1), pick(eigenvalues).sqrt().repeat(3), rtol=1e-10)


def test_all_zero_gradients_give_a_zero_update():
    method = aligned(3)
    assert torch.equal(
        method.aggregate(torch.zeros(3, 4, dtype=torch.float64)), torch.zeros(4, dtype=torch.float64)
    )
    assert torch.isfinite(method.last_weights).all()


def test_float32_gradients_work():
    g = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    method = AlignedMTL(fake_tasks(3))
    direction = method.aggregate(g)
    assert direction.dtype == torch.float32
    assert torch.allclose(direction.double(), aligned(3).aggregate(g.double()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value"), [("scale_mode", "max"), ("reduction", "median"), ("rank_tol", -1.0)]
)
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"weighting.{key}"):
        AlignedMTL(fake_tasks(2), **{key: value})
