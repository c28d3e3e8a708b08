"""Low supervision (mtlrun/architecture/low_supervision.py): a head attached at stage k neither depends on nor
trains the stages above k, heads read their stage's pooled output, the trunk stops at the deepest attachment,
all heads at the last stage is hard sharing, config mistakes. The generic contract is checked by
test_architectures.py."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch
from conftest import nonzero

from mtlrun.architecture.hard_sharing import HardSharing
from mtlrun.architecture.low_supervision import LowSupervision
from mtlrun.encoder.cnn import CNNEncoder
from mtlrun.encoder.mlp import MLPEncoder
from mtlrun.errors import ConfigError
from mtlrun.tasks import build_tasks

TASKS = {"a": {"kind": "regression"}, "b": {"kind": "multiclass", "num_classes": 3}, "c": {"kind": "binary"}}
N = 5


def encoder(kind: str = "mlp"):
    if kind == "mlp":
        return functools.partial(MLPEncoder, (6,), [8, 7, 5])  # three stages
    return functools.partial(CNNEncoder, (1, 6, 6), [4, 3], out_dim=5)  # maps [4,3,3], [3,2,2], then [5]


def model(kind: str = "mlp", cls=LowSupervision, seed: int = 0, **options):
    torch.manual_seed(seed)
    return cls(encoder(kind), build_tasks(TASKS), {"hidden": [4]}, **options)


def batch(kind: str = "mlp") -> dict:
    torch.manual_seed(1)
    x = torch.randn(N, 6) if kind == "mlp" else torch.randn(N, 1, 6, 6)
    y = {"a": torch.randn(N), "b": torch.tensor([0, 1, 2, 1, 0]), "c": torch.tensor([0.0, 1, 1, 0, 1])}
    return {"x": x, "y": y}


def loss(m, b: dict, name: str) -> torch.Tensor:
    return m.tasks[name].loss_per_sample(m(b)[name], b["y"][name]).mean()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_head_at_stage_k_neither_depends_on_nor_trains_the_stages_above(kind):
    m = model(kind, depths={"a": 0, "b": 1})
    assert m.depths == {"a": 0, "b": 1, "c": 2}
    b = batch(kind)
    for name, k in m.depths.items():
        above = [p for stage in m.trunk[k + 1 :] for p in stage.parameters()]
        m.zero_grad(set_to_none=True)
        loss(m, b, name).backward()
        assert not any(nonzero(p.grad) for p in above), name
        assert all(nonzero(p.grad) for p in m.trunk[k].parameters() if p.ndim > 1), name
        before = m(b)
        with torch.no_grad():
            for p in above:
                p.add_(torch.randn_like(p))
        after = m(b)
        assert torch.equal(before[name], after[name]), name
        if k < 2:  # the perturbation is real: the task at the last stage sees it
            assert not torch.allclose(before["c"], after["c"])


@pytest.mark.parametrize(("pool", "width"), [("flatten", 4 * 3 * 3), ("mean", 4)])
def test_heads_read_their_stages_pooled_output(pool, width):
    m = model("cnn", depths={"a": 0, "b": -2}, pool=pool)
    assert m.depths == {"a": 0, "b": 1, "c": 2}
    assert m.heads.heads["a"][0].in_features == width
    b = batch("cnn")
    out = m(b)
    h0 = m.trunk[0](b["x"])
    h1 = m.trunk[1](h0)
    pooled = [h.flatten(1) if pool == "flatten" else h.mean((2, 3)) for h in (h0, h1)]
    assert torch.allclose(out["a"], m.heads.heads["a"](pooled[0]).squeeze(-1), atol=1e-6)
    assert torch.allclose(out["b"], m.heads.heads["b"](pooled[1]), atol=1e-6)
    assert not m.has_representation and m.shared_representation is None


def test_the_trunk_stops_at_the_deepest_stage_a_head_reads():
    m = model(depths={"a": 0, "b": 1, "c": 1})
    assert len(m.trunk) == 2
    assert sum(p.numel() for p in m.trunk.parameters()) == (6 * 8 + 8) + (8 * 7 + 7)


def test_every_task_at_one_stage_gives_a_representation_with_views():
    m = model(depths={"a": 0, "b": 0, "c": 0})
    b = batch()
    out = m(b)
    rep = m.shared_representation
    assert m.has_representation and torch.equal(rep, m.trunk[0](b["x"]))
    views = m.representation_views()
    per_task = [m.tasks[t].loss_per_sample(out[t], b["y"][t]).mean() for t in m.tasks]
    got = torch.autograd.grad(sum(per_task), [views[t] for t in m.tasks], retain_graph=True)
    for loss_t, g in zip(per_task, got, strict=True):
        assert torch.allclose(torch.autograd.grad(loss_t, rep, retain_graph=True)[0], g, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_every_head_at_the_last_stage_is_hard_sharing(kind):
    low, hard = model(kind), model(kind, cls=HardSharing)  # same seed, same construction order
    assert [p.shape for p in low.parameters()] == [p.shape for p in hard.parameters()]
    with torch.no_grad():
        for p, q in zip(low.parameters(), hard.parameters(), strict=True):
            p.copy_(q)
    b = batch(kind)
    low_out, hard_out = low(b), hard(b)
    assert all(torch.allclose(low_out[t], hard_out[t], atol=1e-6) for t in TASKS)
    assert low.has_representation and torch.allclose(low.shared_representation, hard.shared_representation)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"depths": {"nope": 0}}, "architecture.depths.nope: not a task"),
        ({"depths": {"a": 3}}, "architecture.depths.a: 3 is not a stage"),
        ({"depths": {"a": -4}}, "architecture.depths.a"),
        ({"depths": {"a": "x"}}, "architecture.depths.a"),
        ({"pool": "max"}, "architecture.pool"),
    ],
)
def test_config_mistakes_name_their_key(options, named):
    with pytest.raises(ConfigError, match=named):
        model(**options)


def test_an_encoder_without_stages_is_a_config_error():
    with pytest.raises(ConfigError, match="architecture.depths"):
        LowSupervision(functools.partial(MLPEncoder, (6,), []), build_tasks(TASKS), {})


@pytest.mark.slow
def test_cli_smoke_run(tmp_path):
    args = ["architecture=low_supervision", "architecture.depths={left: 0}", "debug=smoke"]
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", *args, f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["architecture"] == "LowSupervision"
