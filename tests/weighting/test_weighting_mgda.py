"""MGDA: the min-norm optimality conditions on every family, no conflict with any task, the two-task line
solution, the normalisations and the two ways of combining, and the paper's plain Frank-Wolfe."""

import pytest
import torch
from gradient_families import fake_losses, fake_tasks, matrices

from mtlrun.errors import ConfigError, MtlrunError, TrainingError
from mtlrun.weighting.mgda import MGDA, min_norm_weights


def mgda(grads: torch.Tensor, **options) -> tuple[torch.Tensor, MGDA]:
    method = MGDA(fake_tasks(len(grads)), **options).double()
    return method.aggregate(grads.clone(), fake_losses(len(grads))), method


def assert_min_norm_point(points: torch.Tensor, alpha: torch.Tensor, label: str, rtol: float = 1e-8) -> None:
    """alpha in the simplex; p_t . d >= ||d||^2 for every t, with equality where alpha_t > 0 (d = sum alpha p)."""
    d = points.T @ alpha
    sq = d @ d
    tol = rtol * sq + 1e-14 * (points * points).sum(1).max()
    dots = points @ d
    assert (alpha >= 0).all() and abs(float(alpha.sum()) - 1.0) < 1e-12, (label, alpha)
    assert (dots >= sq - tol).all(), (label, dots - sq)
    assert ((dots - sq).abs()[alpha > 1e-9] <= tol).all(), (label, dots - sq, alpha)


def test_optimality_conditions_hold_on_every_family():
    for label, grads in matrices(task_counts=(2, 3, 5, 8)):
        direction, method = mgda(grads)
        assert_min_norm_point(grads, method.last_weights, label)
        assert torch.allclose(direction, grads.T @ method.last_weights, rtol=1e-12, atol=1e-15)


def test_the_direction_conflicts_with_no_task():
    for label, grads in matrices(task_counts=(2, 3, 5, 8)):
        direction, _ = mgda(grads)
        dots = grads @ direction
        assert (dots >= -1e-10 * dots.abs().max().clamp_min(1e-30)).all(), (label, dots)


def test_two_tasks_give_the_line_solution():
    for label, grads in matrices(task_counts=(2,)):
        g1, g2 = grads
        diff = g1 - g2
        a1 = ((g2 - g1) @ g2 / (diff @ diff)).clamp(0.0, 1.0)
        direction, method = mgda(grads)
        expected = a1 * g1 + (1 - a1) * g2
        assert torch.allclose(method.last_weights, torch.stack([a1, 1 - a1]), atol=1e-9), label
        scale = expected.abs().max().clamp_min(1e-12)
        assert torch.allclose(direction / scale, expected / scale, atol=1e-9), label


def test_zero_gradient_makes_the_origin_the_min_norm_point():
    for label, grads in matrices(task_counts=(2, 3, 5)):
        if label.startswith("zero_row"):
            direction, method = mgda(grads)
            assert torch.equal(direction, torch.zeros_like(direction)), label
            assert method.last_weights[-1] == 1.0, label


@pytest.mark.parametrize("normalisation", ["l2", "loss", "loss+"])
def test_normalisations_solve_on_the_normalised_gradients(normalisation):
    losses = None
    for label, grads in matrices(task_counts=(3, 5), seeds=(0,)):
        if label.startswith("zero_row"):
            continue
        losses = fake_losses(len(grads))
        norms = grads.norm(dim=1)
        scale = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalisation]
        points = grads / scale[:, None]
        direction, method = mgda(grads, normalisation=normalisation)
        alpha = method.last_weights  # combine=original: alpha weighs the original gradients
        assert_min_norm_point(points, alpha, label)
        assert torch.allclose(direction, grads.T @ alpha, rtol=1e-12, atol=1e-15), label
        normalised, method = mgda(grads, normalisation=normalisation, combine="normalised")
        assert torch.allclose(method.last_weights, alpha / scale, rtol=1e-9), label
        assert torch.allclose(normalised, points.T @ alpha, rtol=1e-9, atol=1e-12), label
    assert losses is not None


def test_loss_normalisation_needs_the_losses():
    method = MGDA(fake_tasks(2), normalisation="loss").double()
    with pytest.raises(ValueError, match="pass them"):
        method.aggregate(torch.randn(2, 5, dtype=torch.float64))


@pytest.mark.parametrize("normalisation", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("combine", ["original", "normalised"])
def test_a_task_with_no_labelled_row_is_a_zero_gradient_as_without_normalisation(normalisation, combine):
    """A masked batch gives a task a loss of exactly 0 and a zero gradient: under every normalisation its
    normalised gradient is the zero vector, as under none, so the origin is the min-norm point and d = 0."""
    grads = torch.tensor([[1.0, 2.0, 0.0], [-0.5, 1.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    losses = torch.tensor([0.8, 1.7, 0.0], dtype=torch.float64)
    method = MGDA(fake_tasks(3), normalisation=normalisation, combine=combine).double()
    direction = method.aggregate(grads, losses)
    assert torch.equal(direction, torch.zeros(3, dtype=torch.float64))
    assert method.last_weights.tolist() == [0.0, 0.0, 1.0]  # all weight on the zero vertex (n_t = 1 there)
    plain, plain_method = mgda(grads)
    assert torch.equal(plain, direction) and torch.equal(plain_method.last_weights, method.last_weights)


@pytest.mark.parametrize("loss", [0.0, -0.5])
def test_a_loss_that_cannot_normalise_a_nonzero_gradient_is_a_training_error(loss):
    grads = torch.tensor([[1.0, 2.0, 0.0], [-0.5, 1.0, 3.0]], dtype=torch.float64)
    method = MGDA(fake_tasks(2), normalisation="loss").double()
    with pytest.raises(TrainingError, match=r"task\(s\) \{'t1': " + str(loss) + r"\}.*normalisation=l2"):
        method.aggregate(grads, torch.tensor([1.2, loss], dtype=torch.float64))
    assert issubclass(TrainingError, MtlrunError)  # the CLI prints it as a one-paragraph error, exit 1


def test_paper_plain_frank_wolfe_approaches_the_same_point_slowly():
    """Without away steps Frank-Wolfe zig-zags when the optimum is on a face of the simplex (sublinear
    convergence): the reason away steps are the default."""
    for label, grads in matrices(task_counts=(3, 5), seeds=(1,)):
        optimum, _ = mgda(grads)
        plain, _ = mgda(grads, away_steps=False)
        longer, _ = mgda(grads, away_steps=False, max_iter=5000)
        best, short, long = (float(d @ d) for d in (optimum, plain, longer))
        floor = 1e-12 * float((grads * grads).sum(1).max())
        assert best - floor <= long <= short <= 1.15 * best + floor, (label, best, short, long)
        assert long - best <= 0.02 * best + floor, (label, best, long)


def test_solver_converges_with_many_tasks():
    grads = torch.randn(40, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha = min_norm_weights(grads @ grads.T)
    assert_min_norm_point(grads, alpha, "T40")


def test_float32_matches_float64():
    _, grads = next(matrices(task_counts=(5,), seeds=(1,)))
    expected, _ = mgda(grads)
    method = MGDA(fake_tasks(5))
    direction = method.aggregate(grads.float())
    assert direction.dtype == torch.float32 and method.last_weights.dtype == torch.float32
    assert torch.allclose(direction.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("option", "value"), [("normalisation", "max"), ("combine", "both"), ("max_iter", 0), ("tol", 0.0)]
)
def test_bad_options_are_config_errors(option, value):
    with pytest.raises(ConfigError, match=f"weighting.{option}"):
        MGDA(fake_tasks(2), **{option: value})
