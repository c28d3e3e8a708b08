"""Regularisers over task layers (mtlrun/regularizer/): their closed forms and defining properties, the
contract with every architecture and both families of weighting, their config errors, and their rows, files
and checkpointed state in a run."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import (
    architecture_overrides,
    build_objects,
    compose_cfg,
    first_batch,
    nonzero,
    options,
    small_cfg,
)
from gradient_families import fake_tasks

from mtlrun.errors import ConfigError
from mtlrun.instantiate import build
from mtlrun.regularizer.base import Regularizer
from mtlrun.regularizer.group_lasso import GroupLasso
from mtlrun.regularizer.relationship import TaskRelationship, correlations
from mtlrun.regularizer.task_clustering import TaskClustering, cluster_terms, kmeans
from mtlrun.trainer.backward import BackwardEngine
from mtlrun.trainer.diagnostics import StepDiagnostics
from mtlrun.trainer.evaluate import evaluate
from mtlrun.trainer.setup import setup_regularizer
from mtlrun.trainer.step import task_losses, train_step

REGULARIZERS = options("regularizer")


class Layers:
    """A stand-in for a model: one nn.Linear per task (what `MTLModel.task_layers` declares)."""

    def __init__(self, tasks, shape=(4, 6), seed=0):
        torch.manual_seed(seed)
        self.tasks = tasks
        self.linears = {t: torch.nn.Linear(shape[1], shape[0], bias=False) for t in tasks}

    def task_layers(self):
        return [self.linears]

    def parameters(self):
        return [layer.weight for layer in self.linears.values()]


def attached(cls, num_tasks=3, shape=(4, 6), seed=0, **options):
    tasks = fake_tasks(num_tasks)
    regularizer = cls(tasks, **options)
    model = Layers(tasks, shape, seed)
    regularizer.attach(model)
    return regularizer, model


# ----------------------------------------------------------------------------------------------- group lasso


def test_group_lasso_is_the_sum_of_the_row_norms_across_tasks():
    reg, model = attached(GroupLasso, strength=0.5)
    a = torch.stack(model.parameters())  # [T, out, in]
    rows = [a[:, :, i].pow(2).sum().sqrt() for i in range(a.shape[2])]
    assert torch.allclose(reg.penalty(), 0.5 * torch.stack(rows).sum())
    reg_out, _ = attached(GroupLasso, strength=0.5, over="output")
    units = [a[:, o, :].pow(2).sum().sqrt() for o in range(a.shape[1])]
    assert torch.allclose(reg_out.penalty(), 0.5 * torch.stack(units).sum())


def test_group_lasso_drops_a_feature_for_every_task_at_once():
    """Three regression tasks read features 0-2 (each its own mix); features 3-5 are noise. Under the penalty
    every task's weight on each noise feature ends near zero, every task keeps its weights on the used ones,
    and the diagnostic counts 3 features in use; without it (λ = 0) least squares fits the noise."""

    def train(strength):
        reg, model = attached(GroupLasso, shape=(1, 6), strength=strength, threshold=0.02)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(128, 6, generator=gen)
        truth = torch.randn(3, 3, generator=gen)
        targets = x[:, :3] @ truth.T + 0.3 * torch.randn(128, 3, generator=gen)
        params = model.parameters()
        for k in range(200):  # subgradient descent, its step decaying so the zero rows settle
            w = torch.stack(params)[:, 0, :]  # [T, in]
            loss = (x @ w.T - targets).pow(2).mean(0).sum() + reg.penalty()
            with torch.no_grad():
                for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                    p -= 0.05 / (1 + k / 20) * g
        return reg, torch.stack(params)[:, 0, :].detach()

    reg, weights = train(strength=0.3)
    assert (weights[:, 3:].abs() < 2e-3).all() and (weights[:, :3].abs() > 0.01).all(), weights
    assert reg.diagnostics() == {"regularizer/features_in_use": 3.0}
    unused = reg.group_norms()[3:].sum()
    assert train(strength=0.0)[0].group_norms()[3:].sum() > 10 * unused  # least squares fits the noise


def test_proximal_step_is_block_soft_thresholding_with_the_layers_learning_rate():
    reg, model = attached(GroupLasso, strength=2.0, proximal=True)
    params = model.parameters()
    with torch.no_grad():
        params[0][:, 1] *= 1e-3  # feature 1: a small group, below eta * lambda
        params[1][:, 1] *= 1e-3
        params[2][:, 1] *= 1e-3
    before = torch.stack(params).detach().clone()
    optimizer = torch.optim.SGD(params, lr=0.05)
    assert not reg.penalty().requires_grad  # logged only: the step below does the work
    reg.after_step(optimizer)
    norms = before.pow(2).sum(dim=(0, 1)).sqrt()  # [in]
    keep = (1 - 0.05 * 2.0 / norms).clamp_min(0)
    assert keep[1] == 0 and (keep[[0, 2, 3, 4, 5]] > 0).all()
    assert torch.allclose(torch.stack(params), before * keep, atol=1e-7)
    assert (torch.stack(params)[:, :, 1] == 0).all()  # exactly zero, for every task at once


def test_proximal_group_lasso_zeroes_unused_features_exactly_for_every_task():
    """Proximal gradient descent on the same problem as above: the noise features end exactly 0 for all three
    tasks, the used ones stay."""
    reg, model = attached(GroupLasso, shape=(1, 6), strength=0.3, proximal=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=gen)
    targets = x[:, :3] @ torch.randn(3, 3, generator=gen).T + 0.3 * torch.randn(128, 3, generator=gen)
    params = model.parameters()
    optimizer = torch.optim.SGD(params, lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        w = torch.stack(params)[:, 0, :]
        (x @ w.T - targets).pow(2).mean(0).sum().backward()
        optimizer.step()
        reg.after_step(optimizer)
    weights = torch.stack(params)[:, 0, :].detach()
    assert (weights[:, 3:] == 0).all() and (weights[:, :3].abs() > 0.01).all(), weights


def test_a_proximal_regularizer_steps_after_the_optimizer_in_a_training_step():
    built = build_objects(
        small_cfg(["regularizer=group_lasso", "regularizer.proximal=true", "regularizer.strength=100"])
    )
    regularizer = setup_regularizer(built.cfg, built.tasks, built.model)
    engine = BackwardEngine(built.model, built.weighting, regularizer=regularizer)
    optimizer = torch.optim.SGD(built.model.parameters(), lr=0.01)
    train_step(built.model, first_batch(built.data, 8), built.tasks, engine, optimizer, None)
    stacked = regularizer.stacked().detach()
    assert (stacked == 0).all()  # lr * strength = 1 exceeds every group's norm: all pruned, exactly
    assert regularizer.diagnostics() == {"regularizer/features_in_use": 0.0}


# ------------------------------------------------------------------------------------------- task clustering


def test_cluster_terms_decompose_the_second_moment():
    """T‖w̄‖² + Σ_c n_c‖w̄_c − w̄‖² + Σ_t ‖w_t − w̄_c(t)‖² = Σ_t ‖w_t‖² for any partition, so equal strengths
    give plain weight decay."""
    vectors = torch.randn(5, 7, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1])
    assert torch.allclose(sum(cluster_terms(vectors, labels, 3)), vectors.pow(2).sum())
    reg, model = attached(TaskClustering, mean_strength=0.2, between_strength=0.2, within_strength=0.2)
    reg.on_step(1)
    assert torch.allclose(reg.penalty(), 0.2 * torch.stack(model.parameters()).pow(2).sum())


def test_kmeans_finds_planted_clusters_and_numbers_them_by_first_task():
    gen = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(3, 8, generator=gen)
    labels = torch.tensor([2, 0, 2, 1, 0, 1])
    points = centres[labels] + 0.1 * torch.randn(6, 8, generator=gen)
    assert kmeans(points, 3).tolist() == [0, 1, 0, 2, 1, 2]


def test_task_clustering_learns_the_clusters_and_pulls_their_tasks_together():
    """Four tasks, two pairs with close weights: k-means at step 1 pairs them, and the within term alone,
    minimised, brings each pair onto its mean while the pairs stay apart."""
    tasks = fake_tasks(4)
    reg = TaskClustering(tasks, 0.0, 0.0, 1.0, clusters=2, update_every=10)
    model = Layers(tasks, (2, 3))
    with torch.no_grad():
        base = torch.randn(2, 2, 3)
        for t, b in zip(tasks, [0, 1, 0, 1], strict=True):
            model.linears[t].weight.copy_(base[b] + 0.1 * torch.randn(2, 3))
    reg.attach(model)
    params = model.parameters()
    for step in range(1, 61):  # gradient descent on the penalty alone
        reg.on_step(step)
        grads = torch.autograd.grad(reg.penalty(), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.1 * g
    assert reg.assignment() == {"t0": 0, "t1": 1, "t2": 0, "t3": 1}
    diag = reg.diagnostics()
    assert diag["regularizer/within"] < 1e-6 and diag["regularizer/between"] > 1.0
    assert diag["regularizer/cluster/t2"] == 0.0 and diag["regularizer/cluster/t3"] == 1.0


def test_given_assignment_is_fixed():
    tasks = fake_tasks(3)
    reg = TaskClustering(tasks, clusters=None, assignment=[["t2"], ["t0", "t1"]])
    assert reg.update_every == 0
    assert reg.assignment() == {"t0": 0, "t1": 0, "t2": 1}  # renumbered by first task


@pytest.mark.parametrize(
    "options, message",
    [
        ({"assignment": [["t0", "t1"], ["nope"]]}, r"regularizer\.assignment: unknown task 'nope'"),
        ({"assignment": [["t0", "t1"], ["t1", "t2"]]}, r"task 't1' is in two clusters"),
        ({"assignment": [["t0", "t1"]]}, r"task\(s\) \['t2'\] in no cluster"),
        ({"assignment": [["t0"], ["t1", "t2"]], "clusters": 3}, r"regularizer\.clusters=3 but"),
        ({"clusters": 4}, r"regularizer\.clusters=4: k-means needs a number of clusters in \[1, 3\]"),
        ({"within_strength": -1.0}, r"regularizer\.within_strength: .* >= 0"),
        ({"update_every": 0}, r"regularizer\.update_every: must be >= 1"),
    ],
)
def test_task_clustering_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        TaskClustering(fake_tasks(3), **options)


# -------------------------------------------------------------------------------------------- relationship


def test_relationship_covariance_is_mtrl_closed_form_and_the_penalty_its_squared_trace_norm():
    reg, model = attached(TaskRelationship, strength=0.1, epsilon=1e-3)
    reg.on_step(1)
    v = torch.stack(model.parameters()).flatten(1).double()
    gram = v @ v.T + 1e-3 * torch.eye(3, dtype=torch.float64)
    omega = reg.omega
    assert torch.allclose(omega.trace(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(omega @ omega * (gram.trace() / (omega @ omega).trace()), gram)  # Ω² ∝ WᵀW + εI
    assert torch.allclose(omega @ reg.omega_inv, torch.eye(3, dtype=torch.float64), atol=1e-9)
    trace_norm = torch.linalg.eigvalsh(gram).sqrt().sum()
    penalty = 0.1 * (trace_norm**2 - 1e-3 * (reg.omega_inv.trace()))  # tr(Ω⁻¹(G + εI)) − ε tr Ω⁻¹
    assert torch.allclose(reg.penalty().double(), penalty, rtol=1e-5)


def test_relationship_starts_unrelated_and_refreshes_only_every_update_every_steps():
    reg, model = attached(TaskRelationship, update_every=3)
    assert torch.equal(correlations(reg.omega), torch.eye(3, dtype=torch.float64))
    reg.on_step(1)
    first = reg.omega.clone()
    with torch.no_grad():
        model.linears["t1"].weight.copy_(model.linears["t0"].weight)
    reg.on_step(2), reg.on_step(3)
    assert torch.equal(reg.omega, first)
    reg.on_step(4)  # identical layers: correlated up to ε (1 − 2√ε/‖·‖ here)
    rows = reg.diagnostics()
    assert rows["regularizer/corr/t0~t1"] > 0.9 > 0.5 > abs(rows["regularizer/corr/t0~t2"])


def test_related_tasks_end_with_a_higher_correlation():
    """Tasks t0 and t1 regress on one hidden direction (plus noise), t2 on an independent one. A few hundred
    steps of their losses plus the penalty leave Ω correlating t0 with t1 well above either with t2."""
    tasks = fake_tasks(3)
    reg = TaskRelationship(tasks, strength=1e-2, update_every=20)
    model = Layers(tasks, (1, 10), seed=3)
    reg.attach(model)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(64, 10, generator=gen)
    shared, other = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    truth = torch.stack([shared, shared + 0.3 * torch.randn(10, generator=gen), other])
    targets = x @ truth.T + 0.1 * torch.randn(64, 3, generator=gen)
    params = model.parameters()
    for step in range(1, 301):  # gradient descent
        reg.on_step(step)
        w = torch.stack(params)[:, 0, :]
        grads = torch.autograd.grad((x @ w.T - targets).pow(2).mean(0).sum() + reg.penalty(), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.05 * g
    rows = reg.diagnostics()
    related = rows["regularizer/corr/t0~t1"]
    assert (
        related > 0.6 and related > max(rows["regularizer/corr/t0~t2"], rows["regularizer/corr/t1~t2"]) + 0.2
    )


def test_relationship_writes_its_matrix(tmp_path):
    reg, _ = attached(TaskRelationship)
    reg.on_step(1)
    reg.write(tmp_path, plots=False)  # the heatmap: tests/regularizer/test_regularizers_slow.py
    table = pd.read_csv(tmp_path / "task_relationship.csv", index_col="task")
    assert list(table.index) == list(table.columns) == ["t0", "t1", "t2"]
    assert torch.allclose(torch.tensor(table.values), correlations(reg.omega))
    assert not (tmp_path / "task_relationship.png").exists()


@pytest.mark.parametrize("cls", [TaskRelationship, TaskClustering])
def test_state_dict_round_trip(cls):
    reg, _ = attached(cls, num_tasks=3)
    reg.on_step(1)
    fresh, _ = attached(cls, num_tasks=3, seed=1)
    fresh.load_state_dict(reg.state_dict())
    assert fresh.diagnostics().keys() == reg.diagnostics().keys()
    for key, value in reg.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


# -------------------------------------------------------------------------- layers, config and contract


@pytest.mark.parametrize(
    "overrides, keys, message",
    [
        ([], {"layer": 2}, r"regularizer\.layer=2: the heads have 2 Linear layer\(s\) per task"),
        ([], {"layer": -1}, r"regularizer\.layer=-1: the tasks' layers differ in shape \(left \[10, 64\]"),
        (["tasks.sum.inputs_from=[left]"], {}, r"regularizer\.layer=0: .*, sum \[64, 138\]\).*inputs_from"),
        ([], {"over": "rows"}, r"regularizer\.over: 'rows' is not one of input, output"),
    ],
)
def test_layers_that_cannot_be_stacked_are_config_errors(overrides, keys, message):
    cfg = small_cfg(["regularizer=group_lasso", *overrides])
    for key, value in keys.items():
        cfg.regularizer[key] = value
    built = build_objects(cfg)
    with pytest.raises(ConfigError, match=message):
        setup_regularizer(cfg, built.tasks, built.model)


def test_no_regularizer_adds_nothing():
    assert compose_cfg().regularizer is None
    assert Regularizer().penalty() is None and Regularizer().diagnostics() == {}


class KeepWeights:
    """An optimizer that leaves the weights as they are: one step checks the engine's path, not an update."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def step(self) -> None:
        pass


@pytest.fixture(scope="module", params=options("architecture"))
def architecture(request):
    cfg = small_cfg(architecture_overrides(request.param, "multidigits"))  # ESMM: on the feed
    cfg.heads.hidden = [8]
    return cfg


def weightings(tasks):
    """equal (loss-based), and pcgrad over the shared parameters and over the representation."""
    pcgrad = compose_cfg(["weighting=pcgrad"]).weighting
    equal = compose_cfg().weighting
    yield "equal", build(equal, "weighting", tasks=tasks)
    for source in ("shared_params", "representation"):
        pcgrad.grad_source = source
        yield f"pcgrad-{source}", build(pcgrad, "weighting", tasks=tasks)


REG_NODES = {name: compose_cfg([f"regularizer={name}"]).regularizer for name in REGULARIZERS}


def test_every_architecture_takes_every_regularizer(architecture):
    """Each regulariser builds on the architecture, its penalty is finite and reaches exactly its declared
    layers, and one training step runs with it, logging the term as the `model/regularizer` row. The steps
    rotate through loss-based `equal` and gradient-based `pcgrad` over the shared parameters and over the
    representation (where the design has one), so every family runs on every architecture."""
    built = build_objects(architecture)
    model, tasks = built.model, built.tasks
    batch = first_batch(built.data, 6)
    families = list(weightings(tasks))
    if not model.has_representation:
        families = [f for f in families if f[1].grad_source != "representation"]
    for turn, (name, node) in enumerate(REG_NODES.items()):
        reg = build(node, "regularizer", tasks=tasks)
        reg.attach(model)
        model.zero_grad(set_to_none=True)
        reg.on_step(1)
        penalty = reg.penalty()
        assert torch.isfinite(penalty) and penalty > 0, name
        penalty.backward()
        penalty = penalty.item()
        declared = {id(layer.weight) for layer in reg.layers.values()}
        for pname, p in model.named_parameters():
            assert nonzero(p.grad) is (id(p) in declared), (name, pname)
        label, weighting = families[turn % len(families)]
        weighting.attach(model)
        diagnostics = StepDiagnostics(list(tasks), 0)
        engine = BackwardEngine(model, weighting, diagnostics, regularizer=reg)
        losses, objective = train_step(model, batch, tasks, engine, KeepWeights(), None)
        assert torch.isfinite(objective), (name, label)
        row = diagnostics.pop_rows()["model"]["regularizer"]
        assert row == pytest.approx(penalty, rel=1e-5), (name, label)


def test_gradient_based_weighting_adds_the_penalty_gradient_unbalanced():
    """With pcgrad (which rewrites only the shared parameters' gradient) a head layer's gradient is the summed
    losses' gradient plus the regulariser's, exactly."""
    cfg = small_cfg(["regularizer=relationship", "weighting=pcgrad"])
    cfg.heads.hidden = [8]
    built = build_objects(cfg)
    model, tasks = built.model, built.tasks
    reg = setup_regularizer(cfg, tasks, model)
    built.weighting.attach(model)
    batch = first_batch(built.data, 6)
    engine = BackwardEngine(model, built.weighting, regularizer=reg)
    model.zero_grad(set_to_none=True)
    engine.backward(task_losses(model(batch), batch, tasks))
    actual = {t: layer.weight.grad.clone() for t, layer in reg.layers.items()}
    model.zero_grad(set_to_none=True)
    (task_losses(model(batch), batch, tasks).sum() + reg.penalty()).backward()
    for t, layer in reg.layers.items():
        assert torch.allclose(actual[t], layer.weight.grad, atol=1e-6), t


def test_evaluation_writes_the_regularizer_diagnostics_under_model():
    cfg = small_cfg(["regularizer=task_clustering"])
    cfg.heads.hidden = [8]
    built = build_objects(cfg)
    reg = setup_regularizer(cfg, built.tasks, built.model)
    reg.on_step(1)
    rows = evaluate(built.model, built.data, "val", built.tasks, 16, limit_batches=1, regularizer=reg)
    assert rows["model"] == reg.diagnostics()
    assert set(rows["model"]) >= {f"regularizer/cluster/{t}" for t in built.tasks}
