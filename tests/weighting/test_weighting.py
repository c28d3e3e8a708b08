"""Weighting methods: the contract for every option, the maths of each shipped method, the learned noise of
uncertainty weighting on Kendall's toy, and the gradient-based path of the backward engine."""

import math

import pandas as pd
import pytest
import torch
from conftest import architecture_overrides, build_objects, compose_cfg, first_batch, options, small_cfg
from hydra.utils import get_class
from omegaconf import OmegaConf

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.tasks import build_tasks
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.runner import run
from mtlrun.trainer.step import task_losses
from mtlrun.weighting.base import GradientWeighting, Weighting
from mtlrun.weighting.equal import Equal


def make_weighting(overrides=(), data="multidigits"):
    """The configured weighting for ``data``'s tasks (multidigits: two classifiers and a regression)."""
    cfg = compose_cfg([f"data={data}", *overrides])
    tasks = build_tasks(OmegaConf.to_container(cfg.tasks, resolve=True))
    return build(cfg.weighting, "weighting", tasks=tasks), tasks


LOSSES = torch.tensor([0.7, 2.3, 5.0])  # left, right, sum


# ------------------------------------------------------------------------------------ contract, every option


@pytest.mark.parametrize("option", options("weighting"))
def test_combine_gives_a_finite_scalar_weighted_by_last_weights(option):
    weighting, tasks = make_weighting([f"weighting={option}"])
    assert isinstance(weighting, Weighting) and weighting.num_tasks == len(tasks) == 3
    if weighting.needs_task_grads:
        direction = weighting.aggregate(torch.randn(3, 11, generator=torch.Generator().manual_seed(0)))
        assert direction.shape == (11,) and torch.isfinite(direction).all()
        return
    losses = LOSSES.clone().requires_grad_(True)
    objective = weighting.combine(losses)
    assert objective.ndim == 0 and torch.isfinite(objective)
    assert weighting.last_weights.shape == (3,) and torch.isfinite(weighting.last_weights).all()
    # last_weights are the weights the method actually applied: d(objective)/d(loss_t) = w_t
    objective.backward()
    assert torch.allclose(losses.grad, weighting.last_weights.to(losses.dtype))


@pytest.mark.parametrize("option", options("weighting"))
def test_state_dict_round_trip_restores_the_method(option):
    """Resuming loads the weighting's state_dict: a restored copy must combine exactly like the original."""
    weighting, _ = make_weighting([f"weighting={option}"])
    with torch.no_grad():
        for p in weighting.parameters():
            p.add_(torch.linspace(-1.0, 1.0, p.numel()).view_as(p))
    restored, _ = make_weighting([f"weighting={option}"])
    restored.load_state_dict(weighting.state_dict())
    if not weighting.needs_task_grads:
        torch.manual_seed(0)  # randomized methods (RLW) draw from torch's global RNG: give both the same draw
        expected = weighting.combine(LOSSES)
        torch.manual_seed(0)
        assert torch.equal(restored.combine(LOSSES), expected)
        assert torch.equal(restored.last_weights, weighting.last_weights)


# ------------------------------------------------------------------------------------ equal and static


def test_equal_is_the_plain_sum():
    weighting, _ = make_weighting(["weighting=equal"])
    assert torch.equal(weighting.combine(LOSSES), LOSSES.sum())
    assert torch.equal(weighting.last_weights, torch.ones(3))


def test_static_uses_configured_weights_and_the_default_for_unlisted_tasks():
    weighting, _ = make_weighting(["weighting=static", "+weighting.weights.sum=0.1", "weighting.default=0.5"])
    assert weighting.last_weights.tolist() == pytest.approx([0.5, 0.5, 0.1])
    assert weighting.combine(LOSSES).item() == pytest.approx(0.5 * 0.7 + 0.5 * 2.3 + 0.1 * 5.0)


def test_static_defaults_to_equal():
    weighting, _ = make_weighting(["weighting=static"])
    assert torch.equal(weighting.combine(LOSSES), LOSSES.sum())


@pytest.mark.parametrize(
    ("override", "message"),
    [("+weighting.weights.nope=1.0", r"unknown task\(s\) \['nope'\]"), ("+weighting.weights.sum=-1", ">= 0")],
)
def test_static_rejects_bad_weights(override, message):
    with pytest.raises(ConfigError, match=message):
        make_weighting(["weighting=static", override])


# ------------------------------------------------------------------------------------ uncertainty


def test_uncertainty_matches_its_closed_form():
    weighting, tasks = make_weighting(["weighting=uncertainty"])
    assert [t.kind for t in tasks.values()] == ["multiclass", "multiclass", "regression"]
    s = torch.tensor([0.3, -0.4, 1.2])
    with torch.no_grad():
        weighting.log_vars.copy_(s)
    L = LOSSES.double()
    s = s.double()
    expected = (
        torch.exp(-s[0]) * L[0] + 0.5 * s[0]  # classification: exp(-s) L + s/2
        + torch.exp(-s[1]) * L[1] + 0.5 * s[1]
        + 0.5 * torch.exp(-s[2]) * L[2] + 0.5 * s[2]  # regression: exp(-s) L / 2 + s/2
    )  # fmt: skip
    assert weighting.combine(LOSSES).item() == pytest.approx(expected.item(), rel=1e-6)
    factors = torch.tensor([1.0, 1.0, 0.5], dtype=torch.double)
    assert torch.allclose(weighting.last_weights.double(), factors * torch.exp(-s), rtol=1e-6)
    sigma = weighting.summary()["sigma"]
    assert sigma["sum"] == pytest.approx(math.exp(1.2 / 2), rel=1e-6)


def test_uncertainty_starts_from_init_log_var():
    weighting, _ = make_weighting(["weighting=uncertainty", "weighting.init_log_var=1.5"])
    assert weighting.log_vars.tolist() == [1.5, 1.5, 1.5]
    assert weighting.log_vars.requires_grad


@pytest.mark.parametrize("data", ["kendall_toy", "multidigits"])
def test_uncertainty_gradient_vanishes_at_the_optimum(data):
    """Regression: d/ds (exp(-s) L / 2 + s / 2) = 0 at exp(s) = L; classification: d/ds (exp(-s) L + s / 2) = 0
    at exp(s) = 2 L. kendall_toy has only regression tasks; multidigits mixes both kinds."""
    weighting, tasks = make_weighting(["weighting=uncertainty"], data=data)
    losses = torch.linspace(0.5, 4.0, len(tasks))
    regression = torch.tensor([t.kind == "regression" for t in tasks.values()])
    with torch.no_grad():
        weighting.log_vars.copy_(torch.log(torch.where(regression, losses, 2.0 * losses)))
    weighting.combine(losses).backward()
    assert torch.allclose(weighting.log_vars.grad, torch.zeros(len(tasks)), atol=1e-6)
    with torch.no_grad():
        weighting.log_vars.add_(0.5)  # above the optimum the gradient is positive: s moves back down
    weighting.log_vars.grad = None
    weighting.combine(losses).backward()
    assert (weighting.log_vars.grad > 0).all()


def test_uncertainty_learns_the_noise_of_kendalls_toy(tmp_path):
    """Kendall, Gal & Cipolla's toy at reduced cost: sigma_y1 must come out near 10 and sigma_y2 near 1.
    A smaller trunk and faster log-variances reach the paper's values in 1,500 steps (~3 s on one thread);
    checked at 4 seeds: sigma_y1 in 8.7..11.2, sigma_y2 in 0.8..1.2."""
    cfg = compose_cfg(
        [
            "experiment=kendall_toy",
            "encoder.hidden=[64]",
            "trainer.epochs=300",
            "trainer.eval_every=300",
            "trainer.checkpoint=false",
            "trainer.device=cpu",
            "optim.optimizer.lr=1e-2",
            "optim.groups.weighting.lr=5e-2",
        ]
    )
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 1500
    sigma = summary["weighting_state"]["sigma"]
    assert sigma["y1"] > 3 * sigma["y2"]
    assert 6.0 < sigma["y1"] < 15.0
    assert 0.6 < sigma["y2"] < 1.6


# ------------------------------------------------------------------------------------ gradient-based path


class SumOfTaskGrads(GradientWeighting):
    direction_is_weighted_sum = True

    def aggregate(self, grads, losses=None):
        self.last_weights = torch.ones(len(grads))
        return grads.sum(0)


class MeanOfTaskGrads(GradientWeighting):
    direction_is_weighted_sum = True

    def aggregate(self, grads, losses=None):
        self.last_weights = torch.full((len(grads),), 1.0 / len(grads))
        return grads.mean(0)


def grads_after_backward(built, weighting, batch, engine=None):
    model = built.model
    model.zero_grad(set_to_none=True)
    losses = task_losses(model(batch), batch, built.tasks)
    engine = engine or BackwardEngine(model, weighting)
    objective = engine.backward(losses)
    assert torch.isfinite(objective)
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def assert_same_grads(actual, expected):
    # atol scales with the largest gradient: a conv bias right before batch norm has a true gradient of 0,
    # which float32 rounding turns into ~1e-7 noise that differs between two summation orders
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        assert torch.allclose(actual[name], grad, rtol=1e-4, atol=1e-5 * scale), name


@pytest.mark.parametrize("architecture", options("architecture"))
def test_gradient_path_with_summed_task_grads_equals_equal_weighting(architecture):
    built = build_objects(small_cfg(architecture_overrides(architecture, "multidigits")))
    batch = first_batch(built.data, 8)
    tasks = built.tasks
    reference = grads_after_backward(built, Equal(tasks), batch)
    assert_same_grads(grads_after_backward(built, SumOfTaskGrads(tasks), batch), reference)

    roles = built.model.parameter_roles()
    built.model(batch)
    if built.model.penalty() is not None:  # the penalty's gradient is added unscaled: the mean check below
        return  # would need it separated, and the sum check above already covers these designs
    mean = grads_after_backward(built, MeanOfTaskGrads(tasks), batch)
    expected = {
        n: g / len(tasks) if roles[n].task is None else g for n, g in reference.items()
    }  # heads keep theirs
    assert_same_grads(mean, expected)
    if built.model.shared_parameters():  # the comparison above must have covered non-trivial shared grads
        assert any(roles[n].task is None and grad.abs().sum() > 0 for n, grad in reference.items())


def test_representation_source_backpropagates_the_direction_through_the_trunk():
    built = build_objects(small_cfg(["architecture=hard_sharing"]))
    batch = first_batch(built.data, 8)
    tasks = built.tasks
    reference = grads_after_backward(built, Equal(tasks), batch)
    engine = BackwardEngine(built.model, SumOfTaskGrads(tasks, grad_source="representation"))
    assert_same_grads(grads_after_backward(built, engine.weighting, batch, engine), reference)
    # one pass to the representation through every head's view of it (heads ride along), then the trunk
    assert engine.passes_per_step() == 2


def test_representation_source_needs_an_architecture_that_has_one():
    built = build_objects(small_cfg(["architecture=single_task"]))
    with pytest.raises(ConfigError, match="no shared representation"):
        BackwardEngine(built.model, SumOfTaskGrads(built.tasks, grad_source="representation"))


def test_update_every_reuses_the_last_weights_with_one_backward_pass():
    built = build_objects(small_cfg(["architecture=hard_sharing"]))
    batch = first_batch(built.data, 8)
    tasks = built.tasks
    weighting = MeanOfTaskGrads(tasks, update_every=3)
    engine = BackwardEngine(built.model, weighting)
    first = grads_after_backward(built, weighting, batch, engine)
    assert engine.backward_passes == len(tasks)  # the heads ride along in the T passes
    second = grads_after_backward(built, weighting, batch, engine)  # reuses weights 1/T: same gradients
    assert engine.backward_passes == len(tasks) + 1
    roles = built.model.parameter_roles()
    shared_only = {n: g for n, g in first.items() if roles[n].task is None}
    assert_same_grads(second, shared_only)


def test_update_every_is_refused_for_methods_without_weights():
    class Projection(GradientWeighting):
        def aggregate(self, grads, losses=None):
            return grads.sum(0)

    with pytest.raises(ConfigError, match="update_every"):
        Projection({"a": None, "b": None}, update_every=2)


def shared_gradient_methods() -> list[str]:
    """The weighting options that act on shared parameters' gradients (``needs_shared_parameters``)."""
    return [
        option
        for option in options("weighting")
        if get_class(compose_cfg([f"weighting={option}"]).weighting._target_).needs_shared_parameters
    ]


@pytest.mark.parametrize("weighting", shared_gradient_methods())
def test_a_design_that_shares_nothing_warns_and_trains_as_equal_weighting(weighting, tmp_path):
    """Every method that balances shared gradients says so at start-up on single_task and soft_sharing
    (nothing shared to balance), and then trains each task on its own loss, exactly as equal weighting."""
    for architecture in ("single_task", "soft_sharing"):
        base = ["debug=smoke", "data=kendall_toy", f"architecture={architecture}"]
        (tmp_path / architecture).mkdir()
        (tmp_path / f"{architecture}-equal").mkdir()
        summary = run(compose_cfg([*base, f"weighting={weighting}"]), tmp_path / architecture)
        run(compose_cfg([*base, "weighting=equal"]), tmp_path / f"{architecture}-equal")
        (warning,) = summary["warnings"]
        assert "shares none" in warning and "as with weighting=equal" in warning
        tables = [
            pd.read_csv(tmp_path / name / "metrics.csv") for name in (architecture, f"{architecture}-equal")
        ]
        # all but the rows of "all": timing, and learning rates (GradNorm's own weights have a group too)
        tables = [t[t.task != "all"].reset_index(drop=True) for t in tables]
        pd.testing.assert_frame_equal(*tables)
