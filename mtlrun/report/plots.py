"""PNG plots of runs and of comparisons (matplotlib, Agg canvas, imported only when a plot is drawn).

- ``curves.png`` in every run folder (``plot_run``): training loss, validation metrics and task weights
  per epoch, one line per task (or task/metric);
- next to a report (``plot_report``): ``val_curves.png`` (each validation metric per epoch, one line per
  configuration, mean over seeds), ``task_weights.png`` (each configuration's task weights per epoch, mean
  over seeds) and, when the runs have exactly two tasks, ``tradeoff.png``: the two tasks' first metrics
  (report split) of every configuration; static-weight configurations (``weighting=static``) are joined as
  the trade-off front, adaptive methods are labelled points, the single-task baseline is a star; and, when
  the runs logged ``grad_cosine`` rows (``trainer.grad_cosine_every``), ``cosines.png``: the mean cosine
  similarity of the task gradients per epoch, one panel per task pair, one line per configuration (mean
  over seeds).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from mtlrun.report.collect import Run, load_run
from mtlrun.report.table import Report

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure(
    panels: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.0), fast: bool = False
) -> tuple[Figure, list[Axes]]:
    """A grid of ``panels`` axes; ``fast`` uses fixed margins instead of the constrained layout (which
    measures every label: about half a second more per figure)."""
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout=None if fast else "constrained")
    if fast:  # margins in inches, so tick labels fit whatever the number of rows
        height = size[1] * nrows
        fig.subplots_adjust(
            left=0.06, right=0.98, bottom=0.55 / height, top=1 - 0.35 / height, wspace=0.3, hspace=0.5
        )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[:panels]:
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs
    return fig, axes[:panels]


def _rows(metrics: pd.DataFrame, split: str, metric: str | None = None) -> pd.DataFrame:
    rows = metrics[metrics.split == split]
    return rows if metric is None else rows[rows.metric == metric]


def plot_run(run_dir: Path, name: str = "curves.png") -> Path | None:
    """Draw one run's curves into ``run_dir/name``: training loss (log scale) and task weight per task,
    then one panel per task with its validation metrics; None when the run has no metrics.csv rows yet."""
    run = load_run(run_dir)
    if run.metrics is None or run.metrics.empty:
        return None
    tasks = run.tasks()
    metrics = run.metrics
    fig, (loss_ax, weight_ax, *task_axes) = _figure(2 + len(tasks), ncols=4, fast=True)
    loss, weight, val = (
        _rows(metrics, "train", "loss"),
        _rows(metrics, "train", "weight"),
        _rows(metrics, "val"),
    )
    for task, ax in zip(tasks, task_axes, strict=True):
        rows = loss[loss.task == task]
        loss_ax.plot(rows.epoch, rows.value, marker=".", label=task)
        rows = weight[weight.task == task]
        weight_ax.plot(rows.epoch, rows.value, marker=".", label=task)
        for metric in tasks[task].get("metrics", []):
            rows = val[(val.task == task) & (val.metric == metric)]
            ax.plot(rows.epoch, rows.value, marker=".", label=metric)
        ax.set_title(f"{task}: validation")
        if run.summary.get("best_epoch"):
            ax.axvline(run.summary["best_epoch"], color="grey", linestyle=":", linewidth=1)
    loss_ax.set_yscale("log")
    loss_ax.set_title("train loss")
    weight_ax.set_title("task weight")
    for ax in (loss_ax, weight_ax, *task_axes):
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    path = run_dir / name
    fig.savefig(path, dpi=72)
    return path


def _mean_curve(runs: Sequence[Run], split: str, task: str, metric: str) -> pd.Series:
    """Mean over runs of ``task/metric`` per epoch."""
    frames = [run.metrics for run in runs if run.metrics is not None]
    if not frames:
        return pd.Series(dtype=float)
    rows = pd.concat(frames)
    rows = rows[(rows.split == split) & (rows.task == task) & (rows.metric == metric)]
    return rows.groupby("epoch").value.mean()


def plot_val_curves(report: Report, path: Path) -> Path | None:
    if not report.metrics:
        return None
    fig, axes = _figure(len(report.metrics))
    for ax, key in zip(axes, report.metrics, strict=True):
        task, metric = key.split("/", 1)
        for config in report.configurations:
            curve = _mean_curve(config.runs, "val", task, metric)
            if not curve.empty:
                ax.plot(curve.index, curve.values, marker=".", label=config.label)
        ax.set_title(
            f"validation {key} ({'higher' if report.higher_is_better.get(key) else 'lower'} is better)"
        )
        ax.set_xlabel("epoch")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", fontsize="small", ncols=max(1, min(len(labels), 2))
    )
    fig.savefig(path, dpi=80)
    return path


def plot_task_weights(report: Report, path: Path) -> Path | None:
    if not report.configurations:
        return None
    fig, axes = _figure(len(report.configurations))
    labels = short_labels([config.label for config in report.configurations])
    for ax, config, label in zip(axes, report.configurations, labels, strict=True):
        for task in config.runs[0].tasks():
            curve = _mean_curve(config.runs, "train", task, "weight")
            if not curve.empty:
                ax.plot(curve.index, curve.values, marker=".", label=task)
        ax.set_title(_title(label), fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel("task weight")
        ax.legend(fontsize="x-small")
    fig.savefig(path, dpi=80)
    return path


def _is_static(runs: Sequence[Run]) -> bool:
    """A point of the static-weight front: fixed weights on a model whose tasks share (the single-task
    baseline has fixed weights too, but is a point of its own)."""
    return runs[0].has_fixed_weights and not all(run.is_single_task for run in runs)


def pareto_front(xs: Sequence[float], ys: Sequence[float], x_up: bool, y_up: bool) -> list[int]:
    """Indices of the points no other point beats on both coordinates (``*_up``: higher is better), in
    order of x: the line a weight sweep traces."""
    sx, sy = (1 if x_up else -1), (1 if y_up else -1)
    keep = [
        i
        for i in range(len(xs))
        if not any(
            sx * xs[j] >= sx * xs[i] and sy * ys[j] >= sy * ys[i] and (xs[j], ys[j]) != (xs[i], ys[i])
            for j in range(len(xs))
        )
    ]
    return sorted(keep, key=lambda i: xs[i])


def _title(label: str, width: int = 42) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def short_labels(labels: list[str]) -> list[str]:
    """The labels without the ``key=value`` parts they all share, and with dotted keys cut to their last
    part (``weighting.weights.y1=0.1`` -> ``y1=0.1``), so points of a plot can be told apart at a glance."""
    parts = [label.split() for label in labels]
    common = set.intersection(*map(set, parts)) if parts else set()
    return [
        " ".join(
            p.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + p.split("=", 1)[1] if "=" in p else p
            for p in tokens
            if p not in common
        )
        or "(all)"
        for tokens in parts
    ]


def plot_tradeoff(report: Report, path: Path) -> Path | None:
    """The two tasks' first metrics of every configuration; None unless the runs have exactly two tasks.
    Static-weight configurations are grey points annotated with their weights, the best of them (the Pareto
    front) joined by a line; every other configuration is a point named in the legend, the single-task
    baseline a star."""
    tasks = list(dict.fromkeys(key.split("/", 1)[0] for key in report.metrics))
    if len(tasks) != 2 or report.table.empty:
        return None
    x_key, y_key = (next(k for k in report.metrics if k.startswith(f"{t}/")) for t in tasks)
    xs, ys = report.table[f"{x_key}_mean"], report.table[f"{y_key}_mean"]
    fig, (ax,) = _figure(1, size=(7.0, 5.0))
    static = [i for i, c in enumerate(report.configurations) if _is_static(c.runs)]
    others = [i for i in range(len(report.configurations)) if i not in static]
    if static:
        ax.plot(xs.iloc[static], ys.iloc[static], "o", color="grey", label="static weights")
        front = [
            static[k]
            for k in pareto_front(
                xs.iloc[static].tolist(),
                ys.iloc[static].tolist(),
                bool(report.higher_is_better.get(x_key)),
                bool(report.higher_is_better.get(y_key)),
            )
        ]
        if len(front) > 1:
            ax.plot(xs.iloc[front], ys.iloc[front], "-", color="grey", linewidth=1, label="their front")
        right = xs.min() + 0.7 * (xs.max() - xs.min())  # labels of points beyond it go to their left
        labels = [report.configurations[i].label for i in static]
        for i, label in zip(static, short_labels(labels) if len(labels) > 1 else labels, strict=True):
            left = xs.iloc[i] > right
            note = ax.annotate(
                label,
                (xs.iloc[i], ys.iloc[i]),
                fontsize="x-small",
                color="dimgrey",
                xytext=(-4 if left else 4, 4),
                textcoords="offset points",
                ha="right" if left else "left",
            )
            note.set_in_layout(False)
    for i, label in zip(others, short_labels([report.configurations[i].label for i in others]), strict=True):
        single = all(run.is_single_task for run in report.configurations[i].runs)
        ax.plot(xs.iloc[i], ys.iloc[i], "*" if single else "o", markersize=12 if single else 7, label=label)
    ax.set_xlabel(f"{x_key} ({report.split}, {'↑' if report.higher_is_better.get(x_key) else '↓'})")
    ax.set_ylabel(f"{y_key} ({report.split}, {'↑' if report.higher_is_better.get(y_key) else '↓'})")
    ax.set_title("task trade-off (mean over seeds)")
    ax.legend(fontsize="x-small", loc="best")
    fig.savefig(path, dpi=80)
    return path


def cosine_pairs_of(run: Run) -> list[str]:
    """The task pairs (``a~b``) of the run's ``grad_cosine`` rows, in order of appearance."""
    if run.metrics is None or run.metrics.empty:
        return []
    return list(dict.fromkeys(_rows(run.metrics, "train", "grad_cosine").task.astype(str)))


def cosine_pairs(report: Report) -> list[str]:
    """The task pairs with ``grad_cosine`` rows in any run of the report, in order."""
    pairs = [pair for config in report.configurations for run in config.runs for pair in cosine_pairs_of(run)]
    return list(dict.fromkeys(pairs))


def plot_cosines(report: Report, path: Path) -> Path | None:
    """Mean gradient cosine per epoch: one panel per task pair, one line per configuration (mean over its
    seeds); None when no run logged ``grad_cosine`` rows."""
    pairs = cosine_pairs(report)
    if not pairs:
        return None
    configs = [c for c in report.configurations if any(cosine_pairs_of(run) for run in c.runs)]
    fig, axes = _figure(len(pairs), size=(5.0, 3.2))
    labels = short_labels([config.label for config in configs])  # told apart among these only
    legend: dict[str, object] = {}  # label -> line: a configuration may lack a pair, so gather all panels
    for ax, pair in zip(axes, pairs, strict=True):
        for i, (config, label) in enumerate(zip(configs, labels, strict=True)):
            curve = _mean_curve(config.runs, "train", pair, "grad_cosine")
            if not curve.empty:  # a fixed colour per configuration, the same in every panel
                (legend[label],) = ax.plot(curve.index, curve.values, marker=".", color=f"C{i % 10}")
        ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"gradient cosine {pair.replace('~', ' vs ')}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean cosine")
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", fontsize="small")
    fig.savefig(path, dpi=80)
    return path


def plot_report(report: Report, out_dir: Path) -> list[Path]:
    """Every comparison plot that applies, written into ``out_dir``; returns the files written."""
    drawn = [
        plot_val_curves(report, out_dir / "val_curves.png"),
        plot_task_weights(report, out_dir / "task_weights.png"),
        plot_tradeoff(report, out_dir / "tradeoff.png"),
        plot_cosines(report, out_dir / "cosines.png"),
    ]
    return [path for path in drawn if path is not None]
