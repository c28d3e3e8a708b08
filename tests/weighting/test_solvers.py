"""The solvers of UPGrad, MGDA and IMTL-G against straightforward references on random Jacobians at T = 3, 8
and 40: full rank, with a common component, rank-deficient, with a duplicated row, with a zero row.

References: SciPy's NNLS (a Lawson–Hanson solver of its own) for both cone problems — UPGrad's projection
π(g_i) = g_i + Gᵀλ with λ = argmin_(λ ≥ 0) ‖g_i + Gᵀλ‖, and MGDA's min-norm point α = x / Σx with
x = argmin_(x ≥ 0) ‖Gᵀx‖² + (1 − Σx)², whose optimality conditions are the min-norm point's — and the paper's
closed form for IMTL-G, with D and U formed from the gradients themselves."""

from __future__ import annotations

import pytest
import torch
from gradient_families import fake_tasks
from scipy.optimize import nnls

import mtlrun.weighting.mgda as mgda_module
import mtlrun.weighting.upgrad as upgrad_module
from mtlrun.weighting.base import nonnegative_qp, nonnegative_qp_batch
from mtlrun.weighting.imtl import IMTL
from mtlrun.weighting.mgda import MGDA, min_norm_weights
from mtlrun.weighting.upgrad import UPGrad

P = 64
KINDS = ("random", "common", "rank_deficient", "duplicated", "zero_row")
CASES = [(kind, t) for kind in KINDS for t in (3, 8, 40)]


def jacobian(kind: str, num_tasks: int, seed: int = 0) -> torch.Tensor:
    """[T, P] float64 gradients of one kind; task 1 pulls against task 0, so every case has a conflict."""
    gen = torch.Generator().manual_seed(seed + num_tasks)
    if kind == "rank_deficient":  # rank T // 3 + 1 < T
        rank = num_tasks // 3 + 1
        basis = torch.randn(rank, P, generator=gen, dtype=torch.float64)
        g = torch.randn(num_tasks, rank, generator=gen, dtype=torch.float64) @ basis + basis[0]
    else:
        g = torch.randn(num_tasks, P, generator=gen, dtype=torch.float64)
    if kind == "common":  # a shared component: fewer conflicts, a min-norm point away from the origin
        g = g + 0.6 * torch.randn(1, P, generator=gen, dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.3 * g[1]
    if kind == "duplicated":
        g[-1] = g[0]
    elif kind == "zero_row":
        g[-1] = 0.0
    return g


def close(actual: torch.Tensor, expected: torch.Tensor, scale: float, rtol: float = 1e-7) -> bool:
    return torch.allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def upgrad_reference(g: torch.Tensor) -> torch.Tensor:
    """The mean over i of the projection of g_i onto {x : G x ≥ 0}: g_i + Gᵀλ, λ from SciPy's NNLS."""
    a = g.T.numpy()
    projections = [row + g.T @ torch.from_numpy(nnls(a, -row.numpy(), maxiter=50 * len(g))[0]) for row in g]
    return torch.stack(projections).mean(0)


def mgda_reference(g: torch.Tensor) -> torch.Tensor:
    """Min-norm weights from one NNLS on [Gᵀ; 1ᵀ] x ≈ [0; 1]: its KKT conditions, divided by Σx, are the
    min-norm point's (Mα ≥ αᵀMα, with equality where α > 0)."""
    a = torch.cat([g.T, torch.ones(1, len(g), dtype=g.dtype)]).numpy()
    b = torch.zeros(a.shape[0], dtype=g.dtype)
    b[-1] = 1.0
    x = torch.from_numpy(nnls(a, b.numpy(), maxiter=50 * len(g))[0])
    return x / x.sum()


def imtl_reference(g: torch.Tensor) -> torch.Tensor:
    """The paper's closed form with task 1 as reference, D and U formed from the gradients (minimum-norm least
    squares for a singular system); zero gradients get weight 0."""
    keep = (g.norm(dim=1) > 0).nonzero().flatten()
    k = g[keep]
    u = k / k.norm(dim=1, keepdim=True)
    d_rows, u_rows = k[0] - k[1:], u[0] - u[1:]
    eps = torch.finfo(g.dtype).eps
    rest = torch.linalg.lstsq(
        u_rows @ d_rows.T, (u_rows @ k[0])[:, None], rcond=eps * len(keep), driver="gelsd"
    )
    weights = torch.zeros(len(g), dtype=g.dtype)
    weights[keep] = torch.cat([1.0 - rest.solution.sum().reshape(1), rest.solution[:, 0]])
    return weights


@pytest.mark.parametrize(("kind", "num_tasks"), CASES)
def test_upgrad_equals_the_mean_of_nnls_projections(kind, num_tasks):
    g = jacobian(kind, num_tasks)
    method = UPGrad(fake_tasks(num_tasks)).double()
    direction = method.aggregate(g)
    scale = float(g.norm(dim=1).max())
    assert close(direction, upgrad_reference(g), scale), (direction - upgrad_reference(g)).abs().max()
    assert torch.allclose(g.T @ method.last_weights, direction, atol=1e-10 * scale)
    assert (g @ direction >= -1e-9 * scale * scale).all()  # no conflict with any task


@pytest.mark.parametrize("num_tasks", [8, 40])
def test_upgrad_solved_together_equals_upgrad_solved_one_by_one(num_tasks, monkeypatch):
    g = jacobian("random", num_tasks)
    together = UPGrad(fake_tasks(num_tasks)).double()
    lam = together.dual_multipliers(g @ g.T)
    monkeypatch.setattr(upgrad_module, "FEW_TASKS", num_tasks)  # every programme by Lawson–Hanson
    one_by_one = UPGrad(fake_tasks(num_tasks)).double()
    assert torch.allclose(lam, one_by_one.dual_multipliers(g @ g.T), rtol=1e-9, atol=1e-12)
    assert lam.abs().sum() > 0  # the case has conflicts to resolve


@pytest.mark.parametrize(("kind", "num_tasks"), CASES)
def test_mgda_equals_the_nnls_min_norm_point(kind, num_tasks):
    g = jacobian(kind, num_tasks)
    method = MGDA(fake_tasks(num_tasks)).double()
    direction = method.aggregate(g)
    alpha = mgda_reference(g)
    scale = float(g.norm(dim=1).max())
    assert close(direction, g.T @ alpha, scale), (kind, num_tasks, (direction - g.T @ alpha).abs().max())
    if kind in ("random", "common"):  # affinely independent points: the weights are unique too
        assert close(method.last_weights, alpha, 1.0, rtol=1e-6)


@pytest.mark.parametrize(("kind", "num_tasks"), [("common", 8), ("common", 40), ("random", 40)])
def test_mgda_exact_programme_and_frank_wolfe_find_the_same_point(kind, num_tasks, monkeypatch):
    gram = (lambda g: g @ g.T)(jacobian(kind, num_tasks))
    exact = min_norm_weights(gram)
    monkeypatch.setattr(mgda_module, "_exact_min_norm", lambda gram, tol: None)
    assert torch.allclose(min_norm_weights(gram), exact, atol=1e-7)


@pytest.mark.parametrize(("kind", "num_tasks"), CASES)
def test_imtl_equals_the_papers_closed_form(kind, num_tasks):
    g = jacobian(kind, num_tasks)
    method = IMTL(fake_tasks(num_tasks)).double()
    direction = method.aggregate(g)
    expected = imtl_reference(g)
    assert close(method.last_weights, expected, float(expected.abs().max()), rtol=1e-6), kind
    scale = float(expected.abs().sum() * g.norm(dim=1).max())
    assert close(direction, g.T @ expected, scale, rtol=1e-6)


@pytest.mark.parametrize("n", [3, 8, 40])
def test_batched_nonnegative_qp_meets_kkt_and_matches_lawson_hanson(n):
    gen = torch.Generator().manual_seed(n)
    a = torch.randn(n, n + 4, generator=gen, dtype=torch.float64)
    c = a @ a.T
    q = torch.randn(2 * n, n, generator=gen, dtype=torch.float64)
    x, solved, solves = nonnegative_qp_batch(c, q)
    y = x @ c + q
    assert solved.all() and solves > 0
    assert (x >= 0).all() and (y >= -1e-10).all() and (x * y).abs().max() < 1e-9
    expected = torch.tensor([nonnegative_qp(c.tolist(), row)[0] for row in q.tolist()], dtype=torch.float64)
    assert torch.allclose(x, expected, rtol=1e-9, atol=1e-10)


def test_batched_nonnegative_qp_leaves_singular_problems_to_the_caller():
    c = torch.tensor(
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )  # 0 and 1 equal
    q = torch.tensor([[-1.0, -1.0, 0.5], [0.5, 0.5, -2.0]], dtype=torch.float64)
    x, solved, _ = nonnegative_qp_batch(c, q)
    assert solved.tolist() == [False, True]  # both equal columns enter together: a singular system
    assert torch.equal(x[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(x[1], torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))
