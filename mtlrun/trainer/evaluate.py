"""Evaluation of every task on one split: mean loss and torchmetrics metrics."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice

import torch

from mtlrun.architecture.base import MTLModel
from mtlrun.data.base import TensorData
from mtlrun.tasks import Task


@torch.no_grad()
def evaluate(
    model: MTLModel,
    data: TensorData,
    split: str,
    tasks: Mapping[str, Task],
    batch_size: int,
    limit_batches: int | None = None,
    autocast: torch.autocast | None = None,
) -> dict[str, dict[str, float]]:
    """Returns {task: {"loss": mean loss, metric: value, ...}} for ``split``, plus the model's
    diagnostics of the pass (see ``MTLModel.diagnostics``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    metrics = {
        name: {k: m.to(device) for k, m in task.make_metrics().items()} for name, task in tasks.items()
    }
    loss_sum = dict.fromkeys(tasks, 0.0)
    count = 0
    for batch in islice(data.batches(split, batch_size), limit_batches):
        if autocast is not None:
            with autocast:
                predictions = model(batch)
        else:
            predictions = model(batch)
        n = batch["x"].shape[0]
        count += n
        for name, task in tasks.items():
            prediction = predictions[name].float()
            target = batch["y"][task.target]
            loss_sum[name] += task.loss_per_sample(prediction, target).sum().item()
            preds, labels = task.metric_inputs(prediction, target)
            for metric in metrics[name].values():
                metric.update(preds, labels)
    model.train(was_training)
    results = {}
    for name in tasks:
        row = {"loss": loss_sum[name] / max(count, 1)}
        row.update({k: float(m.compute()) for k, m in metrics[name].items()})
        results[name] = row
    for name, stats in model.diagnostics().items():  # e.g. each task's mean expert usage (MMoE)
        results.setdefault(name, {}).update(stats)
    return results
