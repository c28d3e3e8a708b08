"""Evaluation of every task on one split: mean loss and torchmetrics metrics.

On partly labelled data (batches with ``mask``), each task counts its labelled rows only: its loss is the
(sample-weighted) mean over them and its metrics see only them; a task with no labelled row in the pass
reports NaN. Metrics ignore sample weights; regression metrics are in the target's original units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import islice

import torch

from mtlrun.architecture.base import MTLModel
from mtlrun.data.base import TensorData
from mtlrun.regularizer.base import Regularizer
from mtlrun.tasks import Task
from mtlrun.trainer.distributed import World


@torch.no_grad()
def evaluate(
    model: MTLModel,
    data: TensorData,
    split: str,
    tasks: Mapping[str, Task],
    batch_size: int,
    limit_batches: int | None = None,
    autocast: torch.autocast | None = None,
    world: World | None = None,
    regularizer: Regularizer | None = None,
) -> dict[str, dict[str, float]]:
    """Returns {task: {"loss": mean loss, metric: value, ...}} for ``split``, plus the model's
    diagnostics of the pass (see ``MTLModel.diagnostics``) and the regulariser's (task ``model``).
    Data-parallel (``world``), each rank evaluates its rows of every batch; loss sums are added up across
    ranks and torchmetrics gathers its states in ``compute()``; the model's diagnostics are rank 0's."""
    world = world or World()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    metrics = {
        name: {k: m.to(device) for k, m in task.make_metrics().items()} for name, task in tasks.items()
    }
    loss_sum = dict.fromkeys(tasks, 0.0)
    count = dict.fromkeys(tasks, 0.0)  # rows (or their summed weights) each task's loss is averaged over
    for batch in world.shards(islice(data.batches(split, batch_size), limit_batches)):
        if autocast is not None:
            with autocast:
                predictions = model(batch)
        else:
            predictions = model(batch)
        weight = batch.get("weight")
        for name, task in tasks.items():
            prediction = predictions[name].float()
            target = batch["y"][task.target]
            mask = task.labelled(batch)
            if mask is not None:
                prediction, target = prediction[mask], target[mask]
                if len(target) == 0:
                    continue
            w = None if weight is None else (weight if mask is None else weight[mask]).float()
            per_sample = task.loss_per_sample(prediction, target)
            loss_sum[name] += (per_sample if w is None else per_sample * w).sum().item()
            count[name] += len(target) if w is None else w.sum().item()
            preds, labels = task.metric_inputs(prediction, target)
            for metric in metrics[name].values():
                metric.update(preds, labels)
    model.train(was_training)
    sums = world.sum(torch.tensor([[loss_sum[t], count[t]] for t in tasks], dtype=torch.float64))
    loss_sum, count = ({t: float(v) for t, v in zip(tasks, column, strict=True)} for column in sums.T)
    results = {}
    for name in tasks:
        if count[name] == 0:  # no labelled row in this pass: nothing to report
            results[name] = {"loss": math.nan} | dict.fromkeys(metrics[name], math.nan)
            continue
        row = {"loss": loss_sum[name] / count[name]}
        row.update({k: float(m.compute()) for k, m in metrics[name].items()})
        results[name] = row
    for name, stats in model.diagnostics().items():  # e.g. each task's mean expert usage (MMoE)
        results.setdefault(name, {}).update(stats)
    if regularizer is not None and (stats := regularizer.diagnostics()):  # e.g. the task correlations
        results.setdefault("model", {}).update(stats)
    return results
