"""GradVac: the adjusted pair reaches the target cosine exactly, the EMA follows eq. 3, φ̂ = 0 is PCGrad, zero
gradients are skipped, the random order comes from torch's RNG, and φ̂ survives a state_dict round trip."""

import math

import pytest
import torch
from conftest import compose_cfg
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.weighting.gradvac import GradVac, vaccinate


def gradvac(num_tasks: int, **kwargs) -> GradVac:
    return GradVac(fake_tasks(num_tasks), **kwargs).double()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a @ b / (a.norm() * b.norm())).item()


def pair(c: float, norms: tuple[float, float] = (2.0, 5.0)) -> torch.Tensor:
    """Two gradients in R³ with cosine c and the given norms."""
    u = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64) / math.sqrt(1.25)
    v = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    return torch.stack([norms[0] * u, norms[1] * (c * u + math.sqrt(1 - c * c) * v)])


def test_the_yaml_builds_the_documented_defaults():
    method = build(compose_cfg(["weighting=gradvac"]).weighting, "weighting", tasks=fake_tasks(3))
    assert isinstance(method, GradVac) and method.direction_is_weighted_sum
    assert (method.beta, method.reduction, method.ema_on_conflict_only) == (0.01, "sum", False)
    assert torch.equal(method.target_cosine, torch.zeros(3, 3))


def test_adjusted_pair_reaches_the_target_cosine_and_the_ema_follows_eq_3():
    grads = pair(-0.4)
    method = gradvac(2, beta=0.1)
    method.target_cosine.copy_(torch.tensor([[0.0, 0.5], [0.3, 0.0]], dtype=torch.float64))
    direction = method.aggregate(grads)
    # with two tasks: d = (g_0 + w_01 g_1) + (g_1 + w_10 g_0), so last_weights = (1 + w_10, 1 + w_01)
    w10, w01 = (method.last_weights - 1).tolist()
    assert cos(grads[0] + w01 * grads[1], grads[1]) == pytest.approx(0.5, abs=1e-12)
    assert cos(grads[1] + w10 * grads[0], grads[0]) == pytest.approx(0.3, abs=1e-12)
    # eq. 2 in closed form
    phi = -0.4
    expected_w01 = (
        2.0 * (0.5 * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - 0.25)) / (5.0 * math.sqrt(1 - 0.25))
    )
    assert w01 == pytest.approx(expected_w01, rel=1e-12)
    assert torch.allclose(direction, grads.T @ method.last_weights)
    # eq. 3 with the observed cosine (before the adjustment)
    expected = torch.tensor([[0.0, 0.9 * 0.5 + 0.1 * phi], [0.9 * 0.3 + 0.1 * phi, 0.0]], dtype=torch.float64)
    assert torch.allclose(method.target_cosine, expected, atol=1e-12)


def test_pairs_above_their_target_are_left_alone_but_still_update_the_ema():
    grads = pair(0.6)
    method = gradvac(2)
    method.target_cosine.fill_(0.2)
    method.target_cosine.fill_diagonal_(0.0)
    direction = method.aggregate(grads)
    assert torch.allclose(direction, grads.sum(dim=0))
    assert method.target_cosine[0, 1].item() == pytest.approx(0.99 * 0.2 + 0.01 * 0.6)
    libmtl = gradvac(2, ema_on_conflict_only=True)
    libmtl.target_cosine.fill_(0.2)
    libmtl.aggregate(grads)
    assert libmtl.target_cosine[0, 1].item() == pytest.approx(0.2)  # no conflict, no EMA step


def test_a_zero_target_is_pcgrad():
    grads = pair(-0.7)
    direction = gradvac(2).aggregate(grads)
    g0, g1 = grads
    pcgrad = (g0 - (g0 @ g1) / (g1 @ g1) * g1) + (g1 - (g0 @ g1) / (g0 @ g0) * g0)
    assert torch.allclose(direction, pcgrad, rtol=1e-12)


def test_every_adjusted_gradient_meets_its_last_target_on_three_tasks():
    for label, grads in matrices(task_counts=(3, 5), seeds=(0,)):
        if label.startswith("zero_row"):
            continue
        n = len(grads)
        gram = (grads @ grads.T).tolist()
        target = [[0.0 if i == j else 0.4 for j in range(n)] for i in range(n)]
        order = [[j for j in range(n) if j != i] for i in range(n)]
        rows = torch.tensor(
            vaccinate(gram, [row[:] for row in target], order, 0.01, True), dtype=torch.float64
        )
        adjusted = rows @ grads
        for i in range(n):
            last = order[i][-1]
            # the last visited pair is at or above its target afterwards (exactly at it when adjusted)
            assert cos(adjusted[i], grads[last]) >= 0.4 - 1e-9, (label, i)


def test_zero_gradients_are_skipped_and_leave_their_targets_alone():
    grads = matrices(task_counts=(3,), seeds=(0,))
    zero = dict(grads)["zero_row-T3-s0"]
    method = gradvac(3)
    torch.manual_seed(0)
    direction = method.aggregate(zero)
    assert torch.isfinite(direction).all()
    assert method.last_weights[2].item() == pytest.approx(1.0)  # nothing is added along a zero gradient
    assert (method.target_cosine[2] == 0).all() and (method.target_cosine[:, 2] == 0).all()


def test_the_task_order_comes_from_torchs_global_rng():
    grads = dict(matrices(task_counts=(5,), seeds=(1,)))["conflicting-T5-s1"]
    outputs = []
    for seed in (0, 0, 1):
        method = gradvac(5)
        method.target_cosine.fill_(0.3)
        torch.manual_seed(seed)
        outputs.append(method.aggregate(grads))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])


def test_state_dict_round_trip_restores_the_targets():
    grads = dict(matrices(task_counts=(3,), seeds=(2,)))["conflicting-T3-s2"]
    method = gradvac(3, beta=0.3)
    torch.manual_seed(0)
    for _ in range(4):
        method.aggregate(grads)
    assert method.target_cosine.abs().sum() > 0
    restored = gradvac(3, beta=0.3)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.target_cosine, method.target_cosine)
    torch.manual_seed(5)
    expected = method.aggregate(grads)
    torch.manual_seed(5)
    assert torch.equal(restored.aggregate(grads), expected)
    assert "t0->t1" in restored.summary()["target_cosine"]


def test_mean_reduction_divides_by_t():
    grads = pair(-0.2)
    assert torch.allclose(gradvac(2, reduction="mean").aggregate(grads), gradvac(2).aggregate(grads) / 2)


@pytest.mark.parametrize(("key", "value"), [("beta", 1.5), ("reduction", "max")])
def test_bad_options_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"weighting.{key}"):
        GradVac(fake_tasks(2), **{key: value})
