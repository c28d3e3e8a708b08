"""UPGrad: the update conflicts with no task, every projection meets its KKT conditions and matches a
brute-force projection, the mean gradient when nothing conflicts, the 2-task closed form."""

import itertools

import pytest
import torch
from conftest import compose_cfg
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.weighting.upgrad import UPGrad, nonnegative_qp


def upgrad(num_tasks: int, **kwargs) -> UPGrad:
    return UPGrad(fake_tasks(num_tasks), **kwargs).double()


def brute_force_projection(grads: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmin ‖x − y‖ over {x : grads x >= 0}, by trying every set of tight constraints (small T only)."""
    best, best_dist = None, float("inf")
    rows = [k for k in range(len(grads)) if grads[k].norm() > 0]
    for size in range(len(rows) + 1):
        for tight in itertools.combinations(rows, size):
            x = y.clone()
            if tight:
                a = grads[list(tight)]
                x = y - a.T @ torch.linalg.lstsq(a @ a.T, a @ y).solution  # project onto {a x = 0}
            if (grads @ x >= -1e-10 * grads.norm(dim=1) * max(x.norm(), 1e-300)).all():
                dist = (x - y).norm().item()
                if dist < best_dist:
                    best, best_dist = x, dist
    return best


def test_the_yaml_builds_the_documented_defaults():
    method = build(compose_cfg(["weighting=upgrad"]).weighting, "weighting", tasks=fake_tasks(3))
    assert isinstance(method, UPGrad) and method.direction_is_weighted_sum
    assert (method.reduction, method.reg_eps) == ("mean", 0.0)


def test_the_update_conflicts_with_no_task_on_every_family():
    for label, grads in matrices(task_counts=(2, 3, 5, 8), seeds=(0, 1, 2, 3)):
        direction = upgrad(len(grads)).aggregate(grads)
        norms = grads.norm(dim=1)
        assert (grads @ direction >= -1e-8 * norms * direction.norm()).all(), label


def test_every_projection_satisfies_the_kkt_conditions():
    for label, grads in matrices(task_counts=(2, 3, 5, 8)):
        method = upgrad(len(grads))
        lam = method.dual_multipliers((grads @ grads.T).to(torch.float64))
        norms = grads.norm(dim=1)
        for i in range(len(grads)):
            if norms[i] == 0:
                continue
            projection = grads.T @ (torch.eye(len(grads), dtype=grads.dtype)[i] + lam[i])
            mu = grads @ projection  # the constraint values G π(g_i)
            scale = norms * norms[i]
            assert (lam[i] >= 0).all(), label  # dual feasibility
            assert (mu >= -1e-10 * scale).all(), (label, i)  # primal feasibility: π(g_i) is in the cone
            assert (lam[i] * mu).abs().max() <= 1e-10 * norms[i] ** 2, (label, i)  # complementarity


def test_projections_match_a_brute_force_search():
    for label, grads in matrices(task_counts=(3, 4), seeds=(0, 1)):
        method = upgrad(len(grads))
        lam = method.dual_multipliers(grads @ grads.T)
        for i in range(len(grads)):
            projection = grads.T @ (torch.eye(len(grads), dtype=grads.dtype)[i] + lam[i])
            expected = brute_force_projection(grads, grads[i])
            assert torch.allclose(projection, expected, atol=1e-9 * grads[i].norm().item()), (label, i)


def test_without_conflict_upgrad_is_the_mean_gradient():
    gen = torch.Generator().manual_seed(0)
    for num_tasks in (2, 3, 6):
        grads = torch.rand(num_tasks, 12, generator=gen, dtype=torch.float64)  # all pairwise dots > 0
        method = upgrad(num_tasks)
        assert torch.allclose(method.aggregate(grads), grads.mean(dim=0), rtol=1e-12)
        assert torch.allclose(
            method.last_weights, torch.full((num_tasks,), 1 / num_tasks, dtype=torch.float64)
        )
        assert method.last_solves == 0


def test_two_conflicting_tasks_follow_the_closed_form():
    # each gradient projected onto the half-space of the other (PCGrad's projection), then averaged
    gen = torch.Generator().manual_seed(3)
    g0 = torch.randn(7, generator=gen, dtype=torch.float64)
    g1 = -0.5 * g0 + 0.3 * torch.randn(7, generator=gen, dtype=torch.float64)
    assert g0 @ g1 < 0
    p0 = g0 - (g0 @ g1) / (g1 @ g1) * g1
    p1 = g1 - (g0 @ g1) / (g0 @ g0) * g0
    method = upgrad(2)
    assert torch.allclose(method.aggregate(torch.stack([g0, g1])), (p0 + p1) / 2, rtol=1e-12)
    summed = upgrad(2, reduction="sum")
    assert torch.allclose(summed.aggregate(torch.stack([g0, g1])), p0 + p1, rtol=1e-12)


def test_nonnegative_qp_solves_a_small_problem_exactly():
    c = [[1.0, -0.5, 0.2], [-0.5, 1.0, -0.9], [0.2, -0.9, 1.0]]
    q = [0.3, -0.6, -0.1]
    x, solves = nonnegative_qp(c, q)
    grad = torch.tensor(c, dtype=torch.float64) @ torch.tensor(x, dtype=torch.float64) + torch.tensor(
        q, dtype=torch.float64
    )
    assert all(v >= 0 for v in x) and solves <= 6
    assert (grad >= -1e-12).all() and max(abs(v * g) for v, g in zip(x, grad.tolist(), strict=True)) < 1e-12


def test_zero_and_badly_scaled_rows_are_harmless():
    for label, grads in matrices(task_counts=(3, 5)):
        if not label.startswith(("zero_row", "badly_scaled")):
            continue
        method = upgrad(len(grads))
        direction = method.aggregate(grads)
        assert torch.isfinite(direction).all() and torch.isfinite(method.last_weights).all(), label
        if label.startswith("zero_row"):
            # a zero gradient adds no constraint and keeps its preference weight
            assert method.last_weights[-1].item() == pytest.approx(1 / len(grads)), label


def test_float32_gradients_work():
    grads = dict(matrices(task_counts=(3,), seeds=(0,)))["conflicting-T3-s0"]
    method = UPGrad(fake_tasks(3))
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32
    assert torch.allclose(direction.double(), upgrad(3).aggregate(grads), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("key", "value"), [("reduction", "max"), ("reg_eps", -1.0)])
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"weighting.{key}"):
        UPGrad(fake_tasks(2), **{key: value})
