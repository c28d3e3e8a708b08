"""ESMM (mtlrun/architecture/esmm.py): the conversion output is exactly pCTR x pCVR, its loss counts every
impression, the CVR tower learns only through the product, labels that are not over the entire impression space
are refused, and the model keeps the generic contract (test_architectures.py) on the feed it is meant for."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import test_architectures as contract
import torch
from conftest import build_objects, first_batch, nonzero, small_cfg

from mtlrun import examples
from mtlrun.architecture.esmm import ESMM, logit_of_product
from mtlrun.errors import ConfigError
from mtlrun.predict import Options, predict

BATCH = 32
FEED = ["experiment=esmm_feed"]  # purchase -> the feed's conversion column (click and purchase, every row)


@pytest.fixture(scope="module")
def feed():
    return build_objects(small_cfg(FEED))


def head_grads(model, task):
    return [p.grad for p in model.heads.heads[task].parameters()]


def test_logit_of_product_is_exact_and_finite():
    a = torch.tensor([-50.0, -3.0, 0.0, 0.5, 4.0, 40.0, 200.0], dtype=torch.float64)
    b = torch.tensor([30.0, -1.0, 2.0, -0.5, 4.0, 40.0, 150.0], dtype=torch.float64)
    product = a.sigmoid() * b.sigmoid()
    z = logit_of_product(a, b)
    assert torch.isfinite(z).all()
    assert torch.allclose(z.sigmoid(), product, rtol=1e-12, atol=0)
    # p = 1/4 at a = b = 0: logit(1/4) = -log 3
    assert logit_of_product(torch.zeros(1), torch.zeros(1)).item() == pytest.approx(
        -torch.log(torch.tensor(3.0)).item()
    )


def test_conversion_probability_is_pctr_times_pcvr(feed):
    model, tasks = feed.model, feed.tasks
    assert tasks["click"].positive_weight > 1  # pos_weight: auto on click: the product must undo it
    out = model(first_batch(feed.data, BATCH))
    pctr = tasks["click"].probabilities(out["click"])
    pcvr = model.cvr_logits.sigmoid()
    assert torch.allclose(tasks["purchase"].probabilities(out["purchase"]), pctr * pcvr, rtol=1e-5, atol=1e-7)
    assert torch.equal(model.extra_estimates()["purchase_cvr"], pcvr)


def test_conversion_loss_counts_every_impression_and_reaches_the_cvr_tower_from_unclicked_rows(feed):
    model, task = feed.model, feed.tasks["purchase"]
    batch = first_batch(feed.data, BATCH)
    assert task.labelled(batch) is None  # the conversion target is labelled on every impression
    unclicked = batch["y"]["click"] == 0
    assert 0 < int(unclicked.sum()) < BATCH
    model.zero_grad(set_to_none=True)
    out = model(batch)
    # the loss on the unclicked rows alone (weights 0 on the clicked ones) still trains the CVR tower
    task.loss_mean(out["purchase"], batch["y"]["conversion"], None, unclicked.float()).backward()
    assert any(nonzero(g) for g in head_grads(model, "purchase"))
    assert not any(nonzero(g) for g in head_grads(model, "click"))  # detach_ctr: the CTR tower is click's own


def test_the_cvr_tower_gets_no_gradient_from_click_labels(feed):
    model, task = feed.model, feed.tasks["click"]
    batch = first_batch(feed.data, BATCH)
    model.zero_grad(set_to_none=True)
    task.loss_mean(model(batch)["click"], batch["y"]["click"]).backward()
    assert not any(nonzero(g) for g in head_grads(model, "purchase"))
    assert any(nonzero(g) for g in head_grads(model, "click"))


def test_without_detach_the_pctcvr_loss_moves_the_ctr_tower_as_in_the_paper():
    built = build_objects(small_cfg([*FEED, "architecture.detach_ctr=false"]))
    model, task = built.model, built.tasks["purchase"]
    batch = first_batch(built.data, BATCH)
    model.zero_grad(set_to_none=True)
    task.loss_mean(model(batch)["purchase"], batch["y"]["conversion"]).backward()
    assert any(nonzero(g) for g in head_grads(model, "click"))
    assert model.representation_views() == {}  # the conversion loss reaches click's view too


def test_a_post_click_target_is_refused_on_the_first_training_batch():
    built = build_objects(small_cfg(["data=tabular", "architecture=esmm"]))  # purchase: empty without a click
    batch = first_batch(built.data, BATCH)
    built.model.eval()
    built.model(batch)  # evaluating (or predicting) checks nothing
    built.model.train()
    with pytest.raises(
        ConfigError, match=r"architecture\.chain: task 'purchase' \(target 'purchase'\) has no label"
    ):
        built.model(batch)


def test_a_conversion_without_a_click_is_refused(feed):
    batch = first_batch(feed.data, BATCH)
    y = dict(batch["y"])
    y["conversion"] = torch.ones_like(y["conversion"])
    with pytest.raises(ConfigError, match="is 1 on rows where 'click' is 0"):
        ESMM.check_tasks(feed.tasks, {"chain": ["click", "purchase"]}, {**batch, "y": y})


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        (["click"], r"architecture\.chain: \['click'\]; give two tasks"),
        (["click", "nope"], r"'nope' is not a task of this run .* set architecture\.chain to \[click task"),
        (["click", "click"], "names a task twice"),
        (["click", "reaction"], "task 'reaction' is multiclass; ESMM multiplies two probabilities"),
    ],
)
def test_bad_chains_are_config_errors(feed, chain, message):
    with pytest.raises(ConfigError, match=message):
        ESMM.check_tasks(feed.tasks, {"chain": chain})


CONTRACT = contract.CHECKS_OF_ONE_MODEL


@pytest.mark.parametrize("check", CONTRACT, ids=[c.__name__ for c in CONTRACT])
def test_the_model_contract_holds_on_the_feed(feed, check):
    """The contract suite refuses ESMM on the default tasks (purchase is empty without a click); here it runs on
    the configuration ESMM is for."""
    check(feed)


@pytest.mark.slow
def test_cli_smoke_run_and_predict_write_pctcvr_and_pcvr(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtlrun", *FEED, "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["architecture"] == "ESMM"
    new = examples.path("feed/feed_new.csv")
    table, _ = predict(Options(run=tmp_path / "run", path=str(new), keep=["impression_id"]))
    assert list(table.columns)[-1] == "purchase_cvr"
    pd.testing.assert_series_equal(
        table.purchase, table.click * table.purchase_cvr, check_names=False, rtol=1e-5
    )
