"""CAGrad: c = 0 is the mean gradient, the dual solution against a brute-force grid, the optimality of the
direction (worst-task improvement in the ball around the mean gradient), rescaling, and zero gradients."""

import math

import pytest
import torch
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.weighting.cagrad import CAGrad, conflict_averse_dual


def cagrad(grads: torch.Tensor, **options) -> tuple[torch.Tensor, CAGrad]:
    method = CAGrad(fake_tasks(len(grads)), **options).double()
    return method.aggregate(grads.clone()), method


def dual_objective(grads: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """g_w . g_0 + sqrt(phi) ||g_w|| for each row of w [N, T]."""
    g0 = grads.mean(0)
    gw = w @ grads
    return gw @ g0 + c * g0.norm() * gw.norm(dim=1)


def test_c_zero_is_the_mean_gradient():
    for label, grads in matrices():
        direction, method = cagrad(grads, c=0.0)
        assert torch.allclose(direction, grads.mean(0), rtol=1e-13, atol=1e-15), label
        assert torch.allclose(
            method.last_weights, torch.full((len(grads),), 1 / len(grads), dtype=grads.dtype)
        )


def test_two_task_dual_matches_a_brute_force_grid():
    grid = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    w_grid = torch.stack([grid, 1 - grid], dim=1)
    for label, grads in matrices(task_counts=(2,)):
        if label.startswith("zero_row"):
            continue  # its dual optimum is the zero row's vertex: covered below
        lam, w = conflict_averse_dual(grads @ grads.T, 0.4)
        values = dual_objective(grads, w_grid, 0.4)
        best = values.min()
        ours = dual_objective(grads, w[None, :], 0.4)[0]
        spread = float(values.max() - best)
        assert ours <= best + 1e-12 * spread, (label, ours, best)
        assert abs(float(w[0]) - float(grid[values.argmin()])) <= 1e-4, (label, w, grid[values.argmin()])
        # lam = sqrt(phi) / ||g_w||: the direction is on the boundary of the ball
        assert lam == pytest.approx(0.4 * float(grads.mean(0).norm()) / float((w @ grads).norm()), rel=1e-9)


def test_the_direction_maximises_the_worst_improvement_in_the_ball():
    """d solves max_d min_t g_t . d over ||d - g_0|| <= c ||g_0||: no point of the ball does better (checked
    against random points of the ball and its boundary), and d improves the worst task at least as much as
    the mean gradient does."""
    generator = torch.Generator().manual_seed(0)
    for label, grads in matrices(task_counts=(2, 3, 5)):
        direction, _ = cagrad(grads, rescale=False)
        g0 = grads.mean(0)
        radius = 0.4 * g0.norm()
        assert (direction - g0).norm() <= radius * (1 + 1e-9), label
        worst = (grads @ direction).min()
        scale = float(grads.norm(dim=1).max() * direction.norm())
        assert worst >= (grads @ g0).min() - 1e-12 * scale, label
        steps = torch.randn(4000, grads.shape[1], generator=generator, dtype=torch.float64)
        steps = steps / steps.norm(dim=1, keepdim=True) * radius
        steps[2000:] *= torch.rand(2000, 1, generator=generator, dtype=torch.float64)
        others = (g0 + steps) @ grads.T
        assert others.min(dim=1).values.max() <= worst + 1e-9 * scale, label


def test_the_dual_weights_satisfy_their_optimality_conditions():
    """The tasks in the support of w improve equally, the others at least as much; ||d - g_0|| = sqrt(phi)."""
    for label, grads in matrices(task_counts=(3, 5, 8)):
        lam, w = conflict_averse_dual(grads @ grads.T, 0.4)
        g0 = grads.mean(0)
        direction = g0 + lam * (w @ grads)
        improvement = grads @ direction
        nonzero = grads.norm(dim=1) > 0
        scale = float(improvement.abs().max())
        nu = improvement[w > 0].min()
        assert (w >= 0).all() and float(w.sum()) == pytest.approx(1.0, abs=1e-12), label
        assert float(improvement[w > 0].max() - nu) <= 1e-9 * scale, label
        assert (improvement[nonzero] >= nu - 1e-9 * scale).all(), label
        assert float((direction - g0).norm()) == pytest.approx(0.4 * float(g0.norm()), rel=1e-9), label


def test_rescale_divides_by_one_plus_c_squared():
    for label, grads in matrices(task_counts=(3,), seeds=(0,)):
        plain, _ = cagrad(grads, c=0.7, rescale=False)
        rescaled, method = cagrad(grads, c=0.7)
        assert torch.allclose(rescaled * (1 + 0.7**2), plain, rtol=1e-12, atol=1e-15), label
        assert torch.allclose(grads.T @ method.last_weights, rescaled, rtol=1e-12, atol=1e-15), label


def test_zero_gradients_keep_their_mean_weight_and_the_others_are_balanced():
    for label, grads in matrices(task_counts=(2, 3, 5)):
        if not label.startswith("zero_row"):
            continue
        direction, method = cagrad(grads, rescale=False)
        assert float(method.last_weights[-1]) == pytest.approx(1 / len(grads)), label
        assert torch.isfinite(direction).all()
        if len(grads) == 2:  # one task left: d = g_0 + sqrt(phi) g_1 / ||g_1||
            g0 = grads.mean(0)
            expected = g0 + 0.4 * g0.norm() * grads[0] / grads[0].norm()
            assert torch.allclose(direction, expected, rtol=1e-12), label


def test_opposite_gradients_of_equal_norm_give_the_zero_mean():
    g = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direction, _ = cagrad(torch.stack([g, -g]))
    # zero up to the rounding of the solver's equal weights (1e-17 here, against |g| ~ 2)
    assert direction.abs().max() < 1e-14 * g.norm()


def test_float32_matches_float64():
    _, grads = next(matrices(task_counts=(5,), seeds=(2,)))
    expected, _ = cagrad(grads)
    method = CAGrad(fake_tasks(5))
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32 and method.last_weights.dtype == torch.float32
    assert torch.allclose(direction.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_negative_c_is_a_config_error():
    with pytest.raises(ConfigError, match="weighting.c"):
        CAGrad(fake_tasks(2), c=-0.1)


def test_equal_gradients_give_the_documented_scale():
    g = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    direction, method = cagrad(g.repeat(4, 1))
    assert torch.allclose(direction, g * (1.4 / 1.16), rtol=1e-12)
    assert math.isclose(float(method.last_weights.sum()), 1.4 / 1.16, rel_tol=1e-12)
