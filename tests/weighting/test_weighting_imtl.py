"""IMTL-G: equal projections on every unit task gradient, weights summing to 1, the paper's closed form,
zero and linearly dependent gradients."""

import pytest
import torch
from gradient_families import fake_tasks, matrices

from mtlrun.weighting.imtl import IMTL


def imtl(grads: torch.Tensor) -> tuple[torch.Tensor, IMTL]:
    method = IMTL(fake_tasks(len(grads))).double()
    return method.aggregate(grads.clone()), method


def assert_equal_projections(grads: torch.Tensor, direction: torch.Tensor, label: str) -> None:
    units = grads / grads.norm(dim=1, keepdim=True)
    projections = units @ direction
    assert torch.allclose(projections, projections.mean().expand_as(projections), rtol=1e-8), (
        label,
        projections,
    )


def test_projections_on_unit_gradients_are_equal_and_weights_sum_to_one():
    for label, grads in matrices(task_counts=(2, 3, 5, 8)):
        if label.startswith("zero_row"):
            continue
        direction, method = imtl(grads)
        assert_equal_projections(grads, direction, label)
        assert float(method.last_weights.sum()) == pytest.approx(1.0, abs=1e-9), label
        assert torch.allclose(direction, grads.T @ method.last_weights, rtol=1e-12, atol=1e-15)


def test_matches_the_papers_closed_form_with_explicit_inverse():
    for label, grads in matrices(task_counts=(3, 5), seeds=(0,)):
        if label.startswith("zero_row"):
            continue
        units = grads / grads.norm(dim=1, keepdim=True)
        d_rows, u_rows = grads[0] - grads[1:], units[0] - units[1:]
        rest = grads[0] @ u_rows.T @ torch.linalg.inv(d_rows @ u_rows.T)
        expected = torch.cat([1 - rest.sum().reshape(1), rest])
        _, method = imtl(grads)
        assert torch.allclose(method.last_weights, expected, rtol=1e-7, atol=1e-9), label


def test_zero_gradients_get_no_weight_and_the_others_stay_impartial():
    for label, grads in matrices(task_counts=(3, 5)):
        if not label.startswith("zero_row"):
            continue
        direction, method = imtl(grads)
        assert method.last_weights[-1] == 0.0, label
        assert_equal_projections(grads[:-1], direction, label)
        assert float(method.last_weights.sum()) == pytest.approx(1.0, abs=1e-9), label


def test_degenerate_inputs_stay_finite():
    g = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    duplicated = torch.stack([g[0], g[0], g[1]])  # singular system: least squares takes over
    direction, method = imtl(duplicated)
    assert torch.isfinite(direction).all() and torch.isfinite(method.last_weights).all()
    assert_equal_projections(duplicated, direction, "duplicated")
    assert float(method.last_weights.sum()) == pytest.approx(1.0, abs=1e-9)
    direction, method = imtl(torch.zeros(3, 9, dtype=torch.float64))
    assert torch.equal(direction, torch.zeros(9, dtype=torch.float64))
    assert torch.allclose(method.last_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    direction, method = imtl(torch.stack([g[0], torch.zeros(9, dtype=torch.float64)]))
    assert torch.equal(direction, g[0]) and method.last_weights.tolist() == [1.0, 0.0]


def test_float32_matches_float64():
    _, grads = next(matrices(task_counts=(5,), seeds=(0,)))
    expected, _ = imtl(grads)
    method = IMTL(fake_tasks(5))
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32 and method.last_weights.dtype == torch.float32
    assert torch.allclose(direction.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
