"""Sluice networks (mtlrun/architecture/sluice.py): the α mixing of subspaces, β over stages, the orthogonality
penalty, the authors' initialisation, and column independence when α is the identity. Tiny models built
directly; the generic contract is checked by test_architectures.py and test_groups.py."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import compose_cfg, nonzero

from mtlrun.architecture.sluice import Sluice, initial_alpha, initial_beta, orthogonality
from mtlrun.encoder.cnn import CNNEncoder
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks
from mtlrun.trainer.runner import run

TASKS = {
    "a": {"kind": "regression"},
    "b": {"kind": "multiclass", "num_classes": 3},
    "c": {"kind": "binary"},
}
N = 5


def make(encoder: str = "mlp", hidden: tuple[int, ...] = (8, 8), seed: int = 0, **options) -> Sluice:
    torch.manual_seed(seed)
    if encoder == "mlp":
        factory = functools.partial(MLPEncoder, (6,), list(hidden))
    else:
        factory = functools.partial(CNNEncoder, (1, 6, 6), [4, 8], out_dim=8)
    return Sluice(factory, build_tasks(TASKS), {"hidden": [4]}, **options)


def make_batch(encoder: str = "mlp") -> dict:
    torch.manual_seed(1)
    x = torch.randn(N, 6) if encoder == "mlp" else torch.randn(N, 1, 6, 6)
    y = {"a": torch.randn(N), "b": torch.tensor([0, 1, 2, 1, 0]), "c": torch.tensor([0.0, 1, 1, 0, 1])}
    return {"x": x, "y": y}


def loss_of(model: Sluice, batch: dict, name: str) -> torch.Tensor:
    return model.tasks[name].loss_per_sample(model(batch)[name], batch["y"][name]).mean()


def set_identity_alpha(model: Sluice) -> None:
    with torch.no_grad():
        for alpha in model.alpha:
            alpha.copy_(torch.eye(alpha.shape[0]))


# ------------------------------------------------------------------------------------------ penalty


def test_orthogonality_matches_a_hand_computation():
    h = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, -1.0, 2.0]])
    # G1 = [[1, 2], [0, 1]], G2 = [[3, 4], [-1, 2]]; G1ᵀG2 = [[3, 4], [5, 10]]; / R=2 -> squares 2.25+4+6.25+25
    assert orthogonality(h, 2).item() == pytest.approx(37.5)
    assert orthogonality(h, 1).item() == 0.0  # one subspace: no pair


def test_orthogonality_counts_every_pair_of_three_subspaces():
    h = torch.tensor([[1.0, 2.0, 3.0]])  # R = 1; pairs (1,2), (1,3), (2,3): 2² + 3² + 6²
    assert orthogonality(h, 3).item() == pytest.approx(4 + 9 + 36)


def test_orthogonality_is_zero_for_orthogonal_subspaces():
    vectors = torch.tensor([[1.0, -2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0], [2.0, 1.0, 0.0, 0.0]])
    assert orthogonality(vectors, 2).item() == 0.0
    maps = torch.zeros(2, 4, 3, 3)  # channels 0-1 live on the left column, channels 2-3 on the right
    maps[:, :2, :, 0] = torch.randn(2, 2, 3)
    maps[:, 2:, :, 2] = torch.randn(2, 2, 3)
    assert orthogonality(maps, 2).item() == 0.0


def test_orthogonality_of_feature_maps_uses_positions_as_rows():
    maps = torch.randn(2, 4, 3, 3)
    rows = maps.permute(0, 2, 3, 1).reshape(18, 4)
    expected = ((rows[:, :2].T @ rows[:, 2:]) / 18).pow(2).sum()
    assert torch.allclose(orthogonality(maps, 2), expected)


@pytest.mark.parametrize("encoder", ["mlp", "cnn"])
def test_penalty_is_lambda_times_the_orthogonality_of_every_column_and_stage(encoder):
    model = make(encoder, orthogonality=0.5)
    set_identity_alpha(model)  # each column then runs as its own encoder: stage outputs are easy to get
    batch = make_batch(encoder)
    model(batch)
    expected = torch.zeros(())
    for column in model.columns:
        h = batch["x"].flatten(1) if encoder == "mlp" else batch["x"]
        for stage in column.stages:
            h = stage(h)
            expected = expected + orthogonality(h, 2)
    assert expected > 0
    assert torch.allclose(model.penalty(), 0.5 * expected)


def test_zero_lambda_means_no_penalty():
    model = make(orthogonality=0.0)
    model(make_batch())
    assert model.penalty() is None


def test_penalty_gradient_reaches_the_columns():
    model = make(orthogonality=1.0)
    model(make_batch())
    model.penalty().backward()
    assert all(nonzero(column.stages[0][0].weight.grad) for column in model.columns)


# ------------------------------------------------------------------------------------ mixing and stitching


def test_mix_applies_alpha_to_task_major_subspaces():
    model = make()
    t, s = 3, 2
    alpha = torch.randn(t * s, t * s)
    outputs = [torch.randn(N, 8) for _ in range(t)]
    subspace = [outputs[i][:, j * 4 : (j + 1) * 4] for i in range(t) for j in range(s)]  # index i*S + j
    mixed = model.mix(alpha, outputs)
    for i in range(t):
        for j in range(s):
            expected = sum(alpha[i * s + j, q] * subspace[q] for q in range(t * s))
            assert torch.allclose(mixed[i][:, j * 4 : (j + 1) * 4], expected, atol=1e-6)


def test_mix_keeps_feature_map_shapes():
    model = make("cnn")
    outputs = [torch.randn(N, 4, 3, 3) for _ in range(3)]
    identity = model.mix(torch.eye(6), outputs)
    assert all(torch.equal(m, o) for m, o in zip(identity, outputs, strict=True))
    swap = torch.eye(6)[[2, 3, 0, 1, 4, 5]]  # tasks 0 and 1 exchange columns
    swapped = model.mix(swap, outputs)
    assert torch.equal(swapped[0], outputs[1]) and torch.equal(swapped[1], outputs[0])


def test_with_identity_alpha_and_last_stage_beta_each_task_reads_its_own_column():
    model = make(hidden=(8, 8))
    set_identity_alpha(model)
    with torch.no_grad():
        for beta in model.beta.values():
            beta.copy_(torch.tensor([0.0, 1.0]))
    batch = make_batch()
    out = model(batch)
    for t, name in enumerate(model.tasks):
        head = model.heads.heads[name]
        expected = model.tasks[name].prepare_prediction(head(model.columns[t](batch["x"])))
        assert torch.allclose(out[name], expected, atol=1e-6)


def test_beta_weighs_the_stages_that_share_the_last_width():
    assert make(hidden=(8, 8, 8)).beta_stages == [0, 1, 2]
    assert make(hidden=(8, 4, 8)).beta_stages == [0, 2]
    assert make("cnn").beta_stages == [2]  # only the flattening stage has the head's width


def test_beta_sum_of_stage_outputs_is_what_the_head_reads():
    model = make(hidden=(8, 8))
    set_identity_alpha(model)
    batch = make_batch()
    column = model.columns[0]
    first = column.stages[0](batch["x"])
    second = column.stages[1](first)
    beta = model.beta["a"].detach()
    expected = model.heads.heads["a"](beta[0] * first + beta[1] * second).squeeze(-1)
    assert torch.allclose(model(batch)["a"], expected, atol=1e-6)


def test_alpha_and_beta_receive_gradients():
    model = make(orthogonality=0.0)
    batch = make_batch()
    sum(loss_of(model, batch, name) for name in model.tasks).backward()
    assert all(nonzero(alpha.grad) for alpha in model.alpha)
    assert all(nonzero(beta.grad) for beta in model.beta.values())


def test_identity_alpha_makes_the_columns_independent():
    model = make(orthogonality=0.0)
    set_identity_alpha(model)
    batch = make_batch()
    for t, name in enumerate(model.tasks):
        model.zero_grad(set_to_none=True)
        loss_of(model, batch, name).backward()
        for s, column in enumerate(model.columns):
            moved = any(nonzero(p.grad) for p in column.parameters())
            assert moved is (s == t), (name, s)
        others = [model.beta[other].grad for other in model.tasks if other != name]
        assert not any(nonzero(g) for g in others)


def test_balanced_alpha_sends_every_task_the_same_mixture():
    model = make()  # balanced α: every mixed subspace is the mean of all T·S subspaces
    outputs = [torch.randn(N, 8) for _ in range(3)]
    mixed = model.mix(model.alpha[0], outputs)
    mean = torch.stack([o[:, i * 4 : (i + 1) * 4] for o in outputs for i in range(2)]).mean(0)
    for m in mixed:
        assert torch.allclose(m[:, :4], mean, atol=1e-6) and torch.allclose(m[:, 4:], mean, atol=1e-6)


# ----------------------------------------------------------------------------------------- initialisation


def test_beta_initialisation_puts_most_weight_on_the_last_stage():
    beta = initial_beta(3, "imbalanced")
    assert torch.allclose(beta, torch.tensor([0.05, 0.05, 0.9]))
    assert initial_beta(1, "imbalanced").tolist() == [1.0]
    assert torch.allclose(initial_beta(4, "balanced"), torch.full((4,), 0.25))
    model = make(hidden=(8, 8, 8))
    for beta in model.beta.values():
        assert torch.equal(beta.detach(), initial_beta(3, "imbalanced"))


def test_alpha_initialisation_schemes():
    assert torch.allclose(initial_alpha(3, 2, "balanced"), torch.full((6, 6), 1 / 6))
    imbalanced = initial_alpha(2, 2, "imbalanced")
    assert torch.allclose(imbalanced.diagonal(), torch.full((4,), 0.9))
    assert torch.allclose(imbalanced.sum(1), torch.ones(4))
    model = make(alpha_init="imbalanced")
    assert [tuple(a.shape) for a in model.alpha] == [(6, 6), (6, 6)]
    assert torch.allclose(model.alpha[0], initial_alpha(3, 2, "imbalanced"))


# ---------------------------------------------------------------------------------- roles and config errors


def test_roles():
    model = make()
    roles = model.parameter_roles()
    assert {roles[n].part for n in roles if n.startswith("columns.")} == {"trunk"}
    assert all(roles[n].task is None for n in roles if n.startswith(("columns.", "alpha.")))
    assert all(roles[f"alpha.{k}"].part == "mixing" for k in range(2))
    assert all(roles[f"beta.{t}"].part == "mixing" and roles[f"beta.{t}"].task == t for t in model.tasks)
    assert model.last_shared_parameters() == [model.alpha[-1]]
    assert not model.has_representation


def test_diagnostics_report_beta_and_the_self_share_of_alpha():
    model = make(alpha_init="imbalanced")
    stats = model.diagnostics()
    assert set(stats) == set(model.tasks)
    assert stats["a"]["beta_stage1"] == pytest.approx(0.9)
    # own subspaces: 2 x 0.9 + 2 x 0.02 per row pair; all: 2 x 1.0
    assert stats["a"]["alpha_self_stage0"] == pytest.approx((0.9 + 0.02) / 1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"subspaces": 3}, r"architecture\.subspaces: stage 0 .* 8 features"),
        ({"subspaces": 0}, r"architecture\.subspaces: must be at least 1"),
        ({"orthogonality": -1.0}, r"architecture\.orthogonality"),
        ({"alpha_init": "random"}, r"architecture\.alpha_init: 'random'"),
        ({"beta_init": "last"}, r"architecture\.beta_init: 'last'"),
    ],
)
def test_config_errors_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        make(**options)


# ----------------------------------------------------------------------------------------- through the runner


def test_runner_logs_the_penalty_row(tmp_path: Path):
    cfg = compose_cfg(["debug=smoke", "data=kendall_toy", "architecture=sluice", "encoder.hidden=[16,16]"])
    run(cfg, tmp_path)
    table = pd.read_csv(tmp_path / "metrics.csv")
    penalty = table[(table.task == "model") & (table.metric == "penalty")]
    assert len(penalty) == 2 and (penalty.value > 0).all()
    betas = table[(table.metric == "beta_stage1") & (table.split == "val")]
    assert set(betas.task) == {"y1", "y2"}
