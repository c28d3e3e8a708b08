"""Nash-MTL: the bargaining solution α_i (G Gᵀ α)_i = 1, its Newton solver, a hand-derived 2-task case,
rank-deficient inputs, the direction's norm and invariances, and clipping."""

import math

import pytest
import torch
from conftest import compose_cfg
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.weighting.nashmtl import NashMTL, nash_bargaining_weights


def nash(num_tasks: int, **kwargs) -> NashMTL:
    """Nash-MTL without clipping (the paper's α), in float64."""
    return NashMTL(fake_tasks(num_tasks), **{"max_norm": 0.0, **kwargs}).double()


def bargaining_residual(grads: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return alpha * ((grads @ grads.T) @ alpha) - 1


def test_the_yaml_builds_the_documented_defaults():
    method = build(compose_cfg(["weighting=nashmtl"]).weighting, "weighting", tasks=fake_tasks(3))
    assert isinstance(method, NashMTL) and method.direction_is_weighted_sum
    assert (method.max_norm, method.ridge, method.update_every) == (1.0, 1e-9, 1)


def test_optimality_positivity_and_few_iterations_on_every_full_rank_family():
    checked = 0
    for label, grads in matrices(task_counts=(2, 3, 5, 8)):
        if torch.linalg.matrix_rank(grads) < len(grads):
            continue
        method = nash(len(grads))
        direction = method.aggregate(grads)
        alpha = method.last_weights
        assert (alpha > 0).all(), label
        assert bargaining_residual(grads, alpha).abs().max() < 1e-6, label  # the exact equation (ridge 1e-9)
        assert method.last_residual <= 1e-9, label  # the solved (ridged) equation, to Newton's tolerance
        assert method.last_iterations < 15, (label, method.last_iterations)
        assert torch.allclose(direction, grads.T @ alpha)
        checked += 1
    assert checked >= 30


def test_two_tasks_match_the_hand_derived_solution():
    # unit directions u, v with cosine c, norms 2 and 5. By symmetry of the cosine system, β_0 = β_1 = b
    # with b²(1 + c) = 1, so α_i = 1 / (‖g_i‖ √(1 + c)) and d = (u + v) / √(1 + c), of norm √2.
    c = -0.6
    u = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    v = torch.tensor([c, math.sqrt(1 - c * c), 0.0], dtype=torch.float64)
    grads = torch.stack([2.0 * u, 5.0 * v])
    method = nash(2)
    direction = method.aggregate(grads)
    b = 1 / math.sqrt(1 + c)
    assert torch.allclose(method.last_weights, torch.tensor([b / 2, b / 5], dtype=torch.float64), rtol=1e-8)
    assert torch.allclose(direction, b * (u + v), rtol=1e-8)
    assert direction.norm().item() == pytest.approx(math.sqrt(2), rel=1e-8)
    # the bargaining condition read as utilities: g_i · d = 1 / α_i
    assert torch.allclose(grads @ direction, 1 / method.last_weights, rtol=1e-8)


def test_solver_on_the_cosine_matrix_directly():
    cosine = torch.tensor([[1.0, 0.3, -0.5], [0.3, 1.0, 0.1], [-0.5, 0.1, 1.0]], dtype=torch.float64)
    beta, iterations, residual = nash_bargaining_weights(cosine, ridge=0.0, tol=1e-12)
    assert (beta > 0).all() and residual <= 1e-12 and iterations < 10
    assert torch.allclose(beta * (cosine @ beta), torch.ones(3, dtype=torch.float64), atol=1e-12)


def test_direction_has_norm_sqrt_t_and_ignores_the_gradients_norms():
    grads = matrices(task_counts=(5,), seeds=(3,))
    for label, g in grads:
        if torch.linalg.matrix_rank(g) < len(g):
            continue
        direction = nash(5).aggregate(g)
        assert direction.norm().item() == pytest.approx(math.sqrt(5), rel=1e-6), label
        scales = torch.tensor([1e-3, 2.0, 7.0, 1e2, 1e4], dtype=torch.float64)[:, None]
        rescaled = nash(5).aggregate(scales * g)
        assert torch.allclose(rescaled, direction, rtol=1e-6, atol=1e-9), label


def test_zero_row_gets_no_weight_and_the_others_still_bargain():
    for label, grads in matrices(task_counts=(2, 3, 5)):
        if not label.startswith("zero_row"):
            continue
        method = nash(len(grads))
        method.aggregate(grads)
        alpha = method.last_weights
        assert alpha[-1] == 0, label
        assert bargaining_residual(grads[:-1], alpha[:-1]).abs().max() < 1e-6, label


def test_rank_deficient_inputs_stay_sensible():
    g = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # a duplicated task: a solution still exists; the copies share the same weight
    duplicated = torch.stack([g[0], g[1], g[0]])
    method = nash(3)
    method.aggregate(duplicated)
    assert bargaining_residual(duplicated, method.last_weights).abs().max() < 1e-6
    assert method.last_weights[0].item() == pytest.approx(method.last_weights[2].item(), rel=1e-9)
    # two exactly opposite tasks have no finite solution; with the ridge they cancel out and the third
    # task's unit direction remains, instead of NaNs or an exploding step
    g2 = g[2] - (g[2] @ g[0]) / (g[0] @ g[0]) * g[0]  # orthogonal to g[0]
    opposite = torch.stack([g[0], -g[0], g2])
    method = nash(3)
    direction = method.aggregate(opposite)
    assert torch.isfinite(direction).all() and method.last_iterations < 50
    assert torch.allclose(direction, g2 / g2.norm(), atol=1e-6)
    # all tasks zero: a zero update
    method = nash(3)
    assert torch.equal(
        method.aggregate(torch.zeros(3, 5, dtype=torch.float64)), torch.zeros(5, dtype=torch.float64)
    )


def test_iteration_count_stays_small_on_random_stress_matrices():
    gen = torch.Generator().manual_seed(0)
    worst = 0
    for _ in range(200):
        num_tasks = int(torch.randint(2, 11, (1,), generator=gen))
        scales = torch.logspace(-4, 4, num_tasks, dtype=torch.float64)[:, None]
        grads = scales * torch.randn(num_tasks, 30, generator=gen, dtype=torch.float64)
        mix = torch.randn(num_tasks, num_tasks, generator=gen, dtype=torch.float64)
        grads = grads + float(torch.rand(1, generator=gen)) * (mix @ grads)  # nearly dependent at times
        method = nash(num_tasks)
        method.aggregate(grads)
        worst = max(worst, method.last_iterations)
        assert method.last_residual < 1e-5
    assert worst < 50
    assert method.summary()["newton_iterations_max"] == method.max_iterations_seen


def test_max_norm_clips_the_direction_and_the_weights_together():
    grads = matrices(task_counts=(3,), seeds=(1,))
    for label, g in grads:
        method = NashMTL(fake_tasks(3), max_norm=1.0).double()
        direction = method.aggregate(g)
        assert direction.norm().item() == pytest.approx(1.0, rel=1e-6), label
        assert torch.allclose(direction, g.T @ method.last_weights, atol=1e-10 * g.abs().max().item()), label
    # three equal rows (1, 1, 1, 1): unclipped d = √3 · g / ‖g‖, clipped to norm 0.5: every entry 0.25
    equal = torch.ones(3, 4, dtype=torch.float64)
    method = NashMTL(fake_tasks(3), max_norm=0.5).double()
    assert torch.allclose(method.aggregate(equal), torch.full((4,), 0.25, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(method.last_weights, torch.full((3,), 0.25 / 3, dtype=torch.float64), rtol=1e-6)


def test_float32_gradients_give_the_float64_answer():
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g[1] = -0.7 * g[0] + 0.3 * g[1]
    exact = nash(3).aggregate(g)
    method = NashMTL(fake_tasks(3), max_norm=0.0)
    single = method.aggregate(g.float())
    assert single.dtype == torch.float32 and method.last_weights.dtype == torch.float32
    assert torch.allclose(single.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("key", "value"), [("max_norm", -1.0), ("ridge", -1e-3), ("max_iter", 0)])
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"weighting.{key}"):
        NashMTL(fake_tasks(2), **{key: value})
