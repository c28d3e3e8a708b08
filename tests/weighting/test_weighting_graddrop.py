"""GradDrop: nothing is dropped where the task gradients agree in sign, one sign survives elsewhere, with
the probability the sign purity gives; leaks; reproducibility under torch's seed."""

import pytest
import torch
from gradient_families import fake_tasks, matrices

from mtlrun.errors import ConfigError
from mtlrun.weighting.graddrop import GradDrop


def graddrop(grads: torch.Tensor, seed: int = 0, **options) -> tuple[torch.Tensor, GradDrop]:
    method = GradDrop(fake_tasks(len(grads)), **options).double()
    torch.manual_seed(seed)
    return method.aggregate(grads.clone()), method


def test_gradients_of_one_sign_per_coordinate_are_all_kept():
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (50,), generator=generator).double() * 2 - 1
    grads = signs * torch.rand(4, 50, generator=generator, dtype=torch.float64)
    grads[1, :5] = 0.0  # zeros do not count as a sign
    for seed in range(5):
        direction, _ = graddrop(grads, seed)
        assert torch.allclose(direction, grads.sum(0), rtol=1e-12, atol=1e-15)


def test_mixed_coordinates_keep_exactly_one_sign():
    for label, grads in matrices(task_counts=(2, 3, 5)):
        direction, method = graddrop(grads)
        positive, negative = grads.clamp_min(0).sum(0), grads.clamp_max(0).sum(0)
        same = torch.isclose(direction, positive, rtol=1e-12, atol=1e-15)
        assert (same | torch.isclose(direction, negative, rtol=1e-12, atol=1e-15)).all(), label
        mixed = (grads > 0).any(0) & (grads < 0).any(0)
        assert ((direction > 0) != (direction < 0))[mixed].all(), label
        assert method.last_weights.shape == (len(grads),)


def test_the_positive_sign_survives_with_probability_equal_to_the_purity():
    # every coordinate: +3 and -1, so P = (1 + 2/4) / 2 = 0.75
    grads = torch.tensor([[3.0], [-1.0]], dtype=torch.float64).expand(2, 20000)
    direction, _ = graddrop(grads)
    kept_positive = (direction > 0).double().mean()
    assert abs(float(kept_positive) - 0.75) < 0.015


def test_same_seed_same_masks_other_seed_other_masks():
    _, grads = next(matrices(task_counts=(3,), seeds=(0,)))
    first, _ = graddrop(grads, seed=4)
    again, _ = graddrop(grads, seed=4)
    other, _ = graddrop(grads, seed=5)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_leak_one_lets_every_gradient_through():
    _, grads = next(matrices(task_counts=(3,), seeds=(1,)))
    direction, method = graddrop(grads, leak=1.0)
    assert torch.allclose(direction, grads.sum(0), rtol=1e-12, atol=1e-15)
    assert torch.allclose(method.last_weights, torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_a_per_task_leak_passes_that_task_unmasked():
    """leak {t0: 1}: g_0 flows whole; tasks 1 and 2 are masked under the purity of all three tasks."""
    _, grads = next(matrices(task_counts=(3,), seeds=(2,)))
    direction, _ = graddrop(grads, seed=1, leak={"t0": 1.0})
    purity = 0.5 * (1 + grads.sum(0) / grads.abs().sum(0))
    torch.manual_seed(1)
    keep_positive = torch.rand_like(purity) < purity
    masked = torch.where(keep_positive, grads[1:].clamp_min(0).sum(0), grads[1:].clamp_max(0).sum(0))
    assert torch.allclose(direction, grads[0] + masked, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("leak", "message"), [({"nope": 0.5}, "unknown task"), (1.5, r"\[0, 1\]")])
def test_bad_leaks_are_config_errors(leak, message):
    with pytest.raises(ConfigError, match=message):
        GradDrop(fake_tasks(2), leak=leak)


def test_float32_input_gives_float32_output():
    _, grads = next(matrices(task_counts=(3,), seeds=(0,)))
    method = GradDrop(fake_tasks(3))
    torch.manual_seed(0)
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32 and method.last_weights.dtype == torch.float32
