"""DMTRL (mtlrun/architecture/dmtrl.py, tensor_factors.py): the factorised layer is the per-task affine maps of
the reconstructed tensor, full ranks represent any independent task layers, low ranks share, the initial scale,
the representation views, config mistakes. The generic contract is checked by test_architectures.py."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from mtlrun.architecture.dmtrl import DMTRL
from mtlrun.architecture.tensor_factors import FactorisedTaskLinear
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks

METHODS = ["tucker", "tt", "laf"]
NAMES = ["a", "b", "c"]
N = 5


def layer(method: str, rank, in_dim: int = 5, out_dim: int = 4, seed: int = 0) -> FactorisedTaskLinear:
    torch.manual_seed(seed)
    return FactorisedTaskLinear(in_dim, out_dim, NAMES, method, rank)


def affine_maps(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[T, N, out]: task t's explicit affine map x[t] W_t[:-1] + W_t[-1]."""
    return torch.stack([x[t] @ w[:-1, :, t] + w[-1, :, t] for t in range(w.shape[2])])


@pytest.mark.parametrize("method", METHODS)
def test_forward_is_each_tasks_affine_map_with_the_reconstructed_weights(method):
    f = layer(method, 2)
    w = f.weight()
    assert w.shape == (6, 4, 3)  # (in + 1) x out x T: the bias is the last row
    x = torch.randn(3, N, 5)
    assert torch.allclose(f(x), affine_maps(x, w), atol=1e-6)


@pytest.mark.parametrize(("method", "full"), [("tucker", [6, 4, 3]), ("tt", [6, 3]), ("laf", [3])])
def test_full_ranks_represent_any_independent_task_layers(method, full):
    torch.manual_seed(1)
    linears = [nn.Linear(5, 4) for _ in NAMES]
    w = torch.stack([torch.cat([lin.weight.T, lin.bias[None]]) for lin in linears], dim=-1).detach()
    f = layer(method, 100)  # capped at the full ranks
    assert f.ranks == full
    f.set_from(w)
    assert torch.allclose(f.weight(), w, atol=1e-5)
    x = torch.randn(N, 5)
    out = f(x.expand(3, N, 5))
    for t, lin in enumerate(linears):
        assert torch.allclose(out[t], lin(x), atol=1e-5)


def test_low_ranks_make_the_tasks_share():
    w = layer("laf", 1).weight().detach()  # every task's layer is a multiple of one matrix
    assert torch.linalg.matrix_rank(w.reshape(-1, 3)) == 1
    w = layer("tucker", [2, 3, 3]).weight().detach()  # inputs read through A's 2 columns, outputs in B's 3
    assert torch.linalg.matrix_rank(w.reshape(6, -1)) == 2
    assert torch.linalg.matrix_rank(w.permute(1, 0, 2).reshape(4, -1)) == 3
    w = layer("tt", [2, 3]).weight().detach()  # U1 is shared: every W_t lies in its 2 columns
    assert torch.linalg.matrix_rank(w.reshape(6, -1)) == 2


@pytest.mark.parametrize("method", METHODS)
def test_truncated_set_from_is_the_best_laf_approximation_or_close(method):
    """With ranks below the caps, `set_from` keeps the leading singular directions: for laf the error is
    exactly the discarded singular values (Eckart-Young); HOSVD and TT-SVD are within sqrt(modes) of it."""
    torch.manual_seed(2)
    w = torch.randn(6, 4, 3, dtype=torch.float64)
    f = layer(method, [2] * {"tucker": 3, "tt": 2, "laf": 1}[method])
    f.set_from(w)
    err = (f.weight().double() - w).norm()
    assert err < w.norm()
    if method == "laf":
        s = torch.linalg.svdvals(w.reshape(-1, 3))
        assert err.item() == pytest.approx(s[2:].norm().item(), rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_initial_weights_have_a_lecun_scale(method):
    """E‖W_t‖² = out, so the mean square of the reconstructed weights is about 1 / (in + 1)."""
    squares = [
        layer(method, 6, in_dim=47, out_dim=24, seed=s).weight().pow(2).mean().item() for s in range(4)
    ]
    assert sum(squares) / len(squares) * 48 == pytest.approx(1.0, rel=0.2)


# ----------------------------------------------------------------------------------------------- the model

TASKS = {"a": {"kind": "regression"}, "b": {"kind": "multiclass", "num_classes": 3}, "c": {"kind": "binary"}}


def model(tasks: dict = TASKS, **options) -> DMTRL:
    torch.manual_seed(0)
    return DMTRL(functools.partial(MLPEncoder, (6,), [8]), build_tasks(tasks), {"hidden": [4]}, **options)


def batch() -> dict:
    torch.manual_seed(1)
    y = {"a": torch.randn(N), "b": torch.tensor([0, 1, 2, 1, 0]), "c": torch.tensor([0.0, 1, 1, 0, 1])}
    return {"x": torch.randn(N, 6), "y": y}


def losses(m: DMTRL, b: dict) -> list[torch.Tensor]:
    out = m(b)
    return [m.tasks[t].loss_per_sample(out[t], b["y"][t]).mean() for t in m.tasks]


def test_each_task_reads_its_tower_of_factorised_layers():
    m = model(tower=[7, 5], method="tt", rank=[3, 2])
    assert m.ranks == [[3, 2], [3, 2]]
    b = batch()
    out = m(b)
    z = m.trunk(b["x"])
    h = z.expand(3, N, 8)
    for f in m.tower:
        h = torch.relu(affine_maps(h, f.weight()))
    for t, name in enumerate(m.tasks):
        expected = m.tasks[name].prepare_prediction(m.heads.heads[name](h[t]))
        assert torch.allclose(out[name], expected, atol=1e-6)


def test_task_factors_are_owned_and_the_other_factors_shared():
    roles = model(method="laf").parameter_roles()
    assert roles["tower.0.task_factors.b"].task == "b" and roles["tower.0.task_factors.b"].part == "trunk"
    assert roles["tower.0.basis"].task is None and roles["tower.0.basis"].part == "trunk"


def test_views_give_each_tasks_gradient_with_respect_to_the_representation():
    m = model()
    per_task = losses(m, batch())
    z = m.shared_representation
    expected = [torch.autograd.grad(loss, z, retain_graph=True)[0] for loss in per_task]
    views = m.representation_views()
    got = torch.autograd.grad(sum(per_task), [views[t] for t in m.tasks])
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6) and e.abs().sum() > 0


def test_no_views_where_a_task_reads_another_estimate_without_a_stop_gradient():
    tasks = {**TASKS, "c": {"kind": "binary", "inputs_from": ["a"], "detach": False}}
    m = model(tasks)
    losses(m, batch())
    assert m.has_representation and m.representation_views() == {}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"method": "cp"}, "architecture.method"),
        ({"rank": [2, 2]}, "architecture.rank"),
        ({"method": "laf", "rank": 0}, "architecture.rank"),
        ({"rank": True}, "architecture.rank"),
        ({"tower": []}, "architecture.tower"),
    ],
)
def test_config_mistakes_name_their_key(options, named):
    with pytest.raises(ConfigError, match=named):
        model(**options)


@pytest.mark.slow
def test_cli_run_with_gradients_through_the_representation_takes_one_pass_for_the_task_rows(tmp_path):
    args = ["architecture=dmtrl", "architecture.method=tt", "weighting=pcgrad"]
    args += ["weighting.grad_source=representation", "debug=smoke", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", *args], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["architecture"] == "DMTRL"
    assert summary["backward_passes_per_step"] == 2.0  # one through the views, one through the trunk
