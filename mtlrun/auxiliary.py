"""Auxiliary tasks: tasks trained only to help the others, and targets generated from the data set.

**The flag.** ``tasks.<name>.auxiliary: true`` marks a task that trains like any other (its loss is weighted
and backpropagated, its metrics are logged to metrics.csv) but is no result of the run: ``trainer.monitor=loss``
selects the epoch on the summed validation loss of the other tasks only (`mtlrun.trainer.state.Monitor`), and
``mtlrun report`` leaves its metrics out of the comparison columns, the mean rank and Δm% unless it is given
``--include-auxiliary``. summary.json records ``"auxiliary": true`` in the task's ``tasks`` entry. Monitoring an
auxiliary task's metric explicitly (``trainer.monitor=<aux task>/<metric>``) is allowed, with a warning: the
user then selects the epoch for the helper, on purpose. A run whose tasks are all auxiliary is a ConfigError.

**Generated targets.** ``tasks.<name>.generate`` says where the task's target comes from, so an auxiliary task
needs no code and no new column. `add_targets` computes it on every split once the data set is built (the
runner's `setup_data`), from what every data set has (``splits[s].x`` / ``.y`` / ``.mask``):

* ``{from: input}``: **reconstruction**. The target is the model input, flattened: y = vec(x) ∈ ℝ^D, a
  regression task with D outputs (its head has D outputs; the loss is averaged over them, so a 100-pixel
  image weighs like one regression target: `mtlrun.tasks.OUTPUT_REDUCTION`). Inputs are taken as the data
  set holds them, not standardised again: images in [0, 1]; a table's numeric columns are already standardised
  on the training split. On a table (a data set with ``input_columns()``, data=tabular), the target is its
  numeric feature columns (category indices are labels, not quantities), or those named in ``columns``.
* ``{from: feature, column: C}``: **predicting an input**. Table column C is removed from the model's input
  and becomes the task's target (its ``target``): a numeric column needs ``kind: regression``, a categorical
  one ``kind: multiclass`` (or binary). data=tabular drops the column from its features before the
  preprocessing is fitted (`feature_lists`), so preprocessing.json, the encoder and ``mtlrun predict`` never
  see it. Data sets without named columns (images) refuse it.
* ``{from: bins, of: T, bins: K}``: **hints by quantisation**. Quantile bins of task T's regression target:
  the K − 1 edges q_j = Q(j/K), j = 1..K−1, of its labelled TRAINING rows, class = #{j : y ≥ q_j}; a
  multiclass task with K classes, balanced on the training split up to ties.
* ``{from: groups, of: T, groups: [[0, 1, 2], [3, 4]]}``: **hints by grouping**: a coarser version of
  multiclass task T, class g for every label in ``groups[g]``; the groups must partition T's classes.

Rows T leaves unlabelled stay unlabelled for its hint (the mask is copied). ``generate`` fills in the task's
``kind``, ``num_classes`` and ``target`` where it fixes them (`complete_spec`).

**Adversarial tasks.** ``tasks.<name>.reverse_gradient: {strength: λ, schedule: constant | ganin}`` makes the
task's head read the shared features through a gradient-reversal layer R (Ganin & Lempitsky 2015,
"Unsupervised Domain Adaptation by Backpropagation", ICML): R(h) = h forward, ∂L/∂h ↦ −λ_p · ∂L/∂h backward.
The head learns to predict the task; the layers below it learn to make that impossible (e.g. features that
carry no information about the device a row came from). ``schedule: ganin`` ramps the strength as in the
paper, λ_p = λ · (2 / (1 + exp(−γ·p)) − 1), γ = 10, from 0 to λ.

**Config keys.** Per task: ``auxiliary`` (bool, default false); ``generate`` (``from`` and the keys of its
kind, above); ``reverse_gradient.strength`` (λ > 0, default 1), ``.schedule`` (``constant`` or ``ganin``),
``.gamma`` (ganin's γ, paper 10), ``.ramp_steps`` (ganin: training steps over which p goes 0 → 1).
Presets: conf/auxiliary/ (``mtlrun auxiliary=reconstruction``, several: ``'auxiliary=[reconstruction,digits_hints]'``);
a preset made for one data set says so with ``generate.for_data`` and fails on another with the fix.

**Departures from the paper.** The paper's progress p runs from 0 to 1 over the whole training; a model does
not know how many steps the run has, so p = min(1, n / ramp_steps), n counting the training-mode forward passes
of the layer (a buffer: saved in checkpoints, so a resumed run continues the ramp exactly). The paper also
anneals the learning rate with p; that is the optimizer's schedule here (``optim/scheduler``), not coupled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtlrun.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mtlrun.data.base import TensorData
    from mtlrun.tasks import Task

SOURCES = ("input", "feature", "bins", "groups")
# the keys each generator takes besides `from` and `for_data` (the data set a preset was written for)
GENERATOR_KEYS = {
    "input": {"columns"},
    "feature": {"column"},
    "bins": {"of", "bins"},
    "groups": {"of", "groups"},
}
SCHEDULES = ("constant", "ganin")
REVERSAL_KEYS = {"strength", "schedule", "gamma", "ramp_steps"}


# ---------------------------------------------------------------------------------------------- config
def complete_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The ``tasks.<name>`` node with what its ``generate`` fixes filled in (kind, num_classes, target), after
    checking the generator's keys; a node without ``generate`` comes back unchanged."""
    generate = spec.get("generate")
    if generate is None:
        return spec
    where = f"tasks.{name}.generate"
    if not isinstance(generate, Mapping):
        raise ConfigError(f"{where}: a mapping with `from:` ({', '.join(SOURCES)}); got {generate!r}")
    source = generate.get("from")
    if source not in SOURCES:
        raise ConfigError(f"{where}.from: {source!r}; choose one of {', '.join(SOURCES)}")
    unknown = set(generate) - {"from", "for_data"} - GENERATOR_KEYS[source]
    if unknown:
        keys = ", ".join(sorted(GENERATOR_KEYS[source]))
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} for from={source}; it takes {keys}")
    spec = dict(spec)
    if source == "input":
        _fix(spec, name, "kind", "regression", "a reconstruction is a regression")
    elif source == "feature":
        column = generate.get("column")
        if not column or not isinstance(column, str):
            raise ConfigError(f"{where}.column: name the table column to predict, e.g. column: item_price")
        _fix(spec, name, "target", column, "the predicted column is the task's target")
    elif source == "bins":
        bins = generate.get("bins")
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
            raise ConfigError(f"{where}.bins: {bins!r}; give the number of quantile bins, an integer >= 2")
        _fix(spec, name, "kind", "multiclass", "quantile bins are classes")
        _fix(spec, name, "num_classes", bins, "one class per bin")
    else:
        groups = generate.get("groups")
        ok = isinstance(groups, Sequence) and len(groups) >= 2
        ok = ok and all(isinstance(g, Sequence) and g and all(isinstance(c, int) for c in g) for g in groups)
        if not ok:
            raise ConfigError(
                f"{where}.groups: {groups!r}; give two or more lists of class indices, e.g. [[0, 1, 2], [3, 4]]"
            )
        _fix(spec, name, "kind", "multiclass", "groups are classes")
        _fix(spec, name, "num_classes", len(groups), "one class per group")
    if source in ("bins", "groups") and not isinstance(generate.get("of"), str):
        raise ConfigError(f"{where}.of: name the task whose target it coarsens, e.g. of: sum")
    return spec


def _fix(spec: dict, name: str, key: str, value: Any, why: str) -> None:
    """Set ``spec[key]`` to ``value``; a different value the user gave is a ConfigError."""
    given = spec.get(key)
    given = getattr(given, "value", given)
    if given is not None and given != value:
        raise ConfigError(f"tasks.{name}.{key}: {given!r}, but generate needs {value!r} ({why}); remove it")
    spec[key] = value


def check_flags(tasks: Mapping[str, Task]) -> None:
    """The cross-task checks: not every task auxiliary; hints coarsen a task that exists and is not generated."""
    if all(task.auxiliary for task in tasks.values()):
        raise ConfigError(
            f"tasks: every task ({', '.join(tasks)}) is auxiliary, so the run has no result to select or "
            "report; set auxiliary: false on the task you care about"
        )
    for name, task in tasks.items():
        source = source_of(task)
        if source in ("bins", "groups"):
            of = task.generate["of"]
            if of not in tasks:
                raise ConfigError(
                    f"tasks.{name}.generate.of: no task '{of}'; known tasks: {', '.join(tasks)}"
                    + _preset_hint(task)
                )
            wanted = ("regression",) if source == "bins" else ("multiclass", "binary")
            if tasks[of].kind not in wanted:
                raise ConfigError(
                    f"tasks.{name}.generate.of: task '{of}' is {tasks[of].kind}; from={source} needs a "
                    f"{' or '.join(wanted)} task"
                )
            if source_of(tasks[of]) not in (None, "feature"):
                raise ConfigError(
                    f"tasks.{name}.generate.of: task '{of}' is generated too; coarsen a data target"
                )
        if task.reverse_gradient is not None:
            ReversalSpec.parse(name, task.reverse_gradient)


def _preset_hint(task: Task) -> str:
    made_for = (task.generate or {}).get("for_data")
    return (
        f" (this generator is made for data={made_for}; pick a preset for your data set)" if made_for else ""
    )


def source_of(task: Task) -> str | None:
    """The ``generate.from`` of a task, or None for a task whose target the data set holds."""
    generate = getattr(task, "generate", None)
    return None if generate is None else generate["from"]


def data_tasks(tasks: Mapping[str, Task]) -> dict[str, Task]:
    """The tasks whose target the data set itself provides: all but the generated ones (a predicted input
    comes from the data set's own table, so it stays)."""
    return {n: t for n, t in tasks.items() if source_of(t) in (None, "feature")}


# ---------------------------------------------------------------------------------------------- tables
def feature_lists(
    tasks: Mapping[str, Any], numeric: Sequence[str], categorical: Sequence[str]
) -> tuple[list[str], list[str]]:
    """A table's (numeric, categorical) feature columns without those ``from: feature`` tasks predict, after
    checking each such task's kind against its column's (data=tabular calls it before fitting)."""
    predicted = {}
    for name, task in tasks.items():
        if source_of(task) == "feature":
            column = task.target
            if column in numeric and task.kind != "regression":
                raise ConfigError(
                    f"tasks.{name}.kind: {task.kind}, but '{column}' is a numeric column; use kind: regression"
                )
            if column in categorical and task.kind not in ("multiclass", "binary"):
                raise ConfigError(
                    f"tasks.{name}.kind: {task.kind}, but '{column}' is a categorical column; use kind: "
                    "multiclass (with num_classes) or binary"
                )
            predicted[column] = name
    return [c for c in numeric if c not in predicted], [c for c in categorical if c not in predicted]


# ---------------------------------------------------------------------------------------------- targets
def output_widths(tasks: Mapping[str, Task], input_shape: Sequence[int], columns: Sequence[str] = ()) -> dict:
    """The tasks with the head width of each reconstruction fitted (``Fitted.outputs``): the size of one
    flattened input, or the number of reconstructed table columns. ``columns``: the data set's numeric input
    columns (``input_columns()``), empty for data sets without named columns."""
    out = dict(tasks)
    for name, task in tasks.items():
        if source_of(task) == "input":
            chosen = _reconstructed(task, columns)
            width = len(chosen) if chosen is not None else math.prod(input_shape)
            out[name] = task.with_fitted(outputs=width)
    return out


def _reconstructed(task: Task, columns: Sequence[str]) -> list[str] | None:
    """The table columns a reconstruction targets (None: the whole input, flattened)."""
    asked = task.generate.get("columns")
    if asked is not None and not columns:
        raise ConfigError(
            f"tasks.{task.name}.generate.columns: this data set has no named input columns (only tables do, "
            "data=tabular); remove columns to reconstruct the whole input"
        )
    if not columns:
        return None
    chosen = list(asked) if asked is not None else list(columns)
    unknown = [c for c in chosen if c not in columns]
    if unknown or not chosen:
        raise ConfigError(
            f"tasks.{task.name}.generate.columns: {unknown or chosen} not numeric input columns; choose from "
            f"{', '.join(columns)}"
        )
    return chosen


def input_columns(data: Any) -> dict[str, int]:
    """{numeric input column: its index in x} of a data set that names them (a table), else {}."""
    named = getattr(data, "input_columns", None)
    return dict(named()) if callable(named) else {}


def add_targets(data: TensorData, tasks: Mapping[str, Task]) -> None:
    """Check each generator against the data set and add the generated targets to every split, in place."""
    columns = input_columns(data)
    for name, task in tasks.items():
        source = source_of(task)
        if source is None:
            continue
        made_for = task.generate.get("for_data")
        if made_for and made_for != data.name:
            raise ConfigError(
                f"tasks.{name}: made for data={made_for} (a conf/auxiliary/ preset), but the data set is "
                f"{data.name}; run it with data={made_for}, or pick a preset for {data.name} (mtlrun --help "
                "lists the auxiliary options)"
            )
        if source == "feature":
            if task.target not in data.targets:
                raise ConfigError(
                    f"tasks.{name}.generate: from=feature needs a table column '{task.target}', and data set "
                    f"{data.name} has none (only tables name their inputs: data=tabular); for images use "
                    "generate: {from: input}"
                )
            continue
        if task.target in data.targets:
            raise ConfigError(
                f"tasks.{name}.target: '{task.target}' is already a target of data set {data.name}; a generated "
                "target needs a new name: rename the task (or set target)"
            )
        if source == "input":
            chosen = _reconstructed(task, list(columns))
            index = None if chosen is None else [columns[c] for c in chosen]
            for split in data.splits.values():
                flat = split.x.reshape(len(split), -1).float()
                split.y[task.target] = (flat if index is None else flat[:, index]).clone()
            continue
        source_task = tasks[task.generate["of"]]
        make = coarsener(task, source_task, data)
        for split in data.splits.values():
            source_mask = split.mask.get(source_task.target)
            y = split.y[source_task.target]
            split.y[task.target] = make(y if source_mask is None else y.masked_fill(~source_mask, 0))
            if source_mask is not None:
                split.mask[task.target] = source_mask.clone()


def coarsener(task: Task, source: Task, data: TensorData):
    """The map from ``source``'s labels to ``task``'s hint classes: quantile bins fitted on the training
    split's labelled rows, or the class groups."""
    if task.generate["from"] == "groups":
        lookup = group_lookup(task.generate["groups"], source, task.name)
        return lambda y: lookup.to(y.device)[y.long()]
    train = data.splits["train"]
    labels, mask = train.y[source.target], train.mask.get(source.target)
    edges = quantile_edges(labels if mask is None else labels[mask], task.generate["bins"], task.name)
    return lambda y: torch.bucketize(y.float().contiguous(), edges.to(y.device), right=True)


def quantile_edges(values: Tensor, bins: int, name: str) -> Tensor:
    """The K − 1 inner quantile edges of ``values`` (the training split's labelled rows); distinct, or a
    DataError: a target with fewer distinct values than bins leaves bins empty."""
    levels = torch.arange(1, bins, dtype=torch.float64) / bins
    edges = torch.quantile(values.double().flatten(), levels.to(values.device)).float()
    if not bool((edges[1:] > edges[:-1]).all()):
        raise DataError(
            f"tasks.{name}.generate.bins={bins}: the training target has ties across quantiles (edges "
            f"{[round(e, 4) for e in edges.tolist()]}), so some bins would stay empty; use fewer bins"
        )
    return edges


def group_lookup(groups: Sequence[Sequence[int]], source: Task, name: str) -> Tensor:
    """[C] class -> group index; the groups must partition the source task's classes 0..C−1."""
    classes = source.num_classes if source.kind == "multiclass" else 2
    flat = [int(c) for g in groups for c in g]
    if sorted(flat) != list(range(classes)):
        raise ConfigError(
            f"tasks.{name}.generate.groups: {[list(g) for g in groups]} must list each class of task "
            f"'{source.name}' (0..{classes - 1}) exactly once"
        )
    lookup = torch.empty(classes, dtype=torch.long)
    for g, members in enumerate(groups):
        lookup[list(members)] = g
    return lookup


# ---------------------------------------------------------------------------------------------- reversal
class ReversalSpec:
    """``reverse_gradient`` of a task, checked: strength λ, schedule, γ and the ramp's length in steps."""

    def __init__(self, strength: float, schedule: str, gamma: float, ramp_steps: int | None) -> None:
        self.strength, self.schedule, self.gamma, self.ramp_steps = strength, schedule, gamma, ramp_steps

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any]) -> ReversalSpec:
        where = f"tasks.{name}.reverse_gradient"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: a mapping, e.g. {{strength: 1.0, schedule: constant}}; got {spec!r}")
        unknown = set(spec) - REVERSAL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; it takes {sorted(REVERSAL_KEYS)}")
        strength = spec.get("strength", 1.0)
        if isinstance(strength, bool) or not isinstance(strength, int | float) or strength <= 0:
            raise ConfigError(f"{where}.strength: {strength!r}; give λ > 0 (the paper's final λ is 1)")
        schedule = spec.get("schedule", "constant")
        if schedule not in SCHEDULES:
            raise ConfigError(f"{where}.schedule: {schedule!r}; choose {' or '.join(SCHEDULES)}")
        gamma = spec.get("gamma", 10.0)
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or gamma <= 0:
            raise ConfigError(f"{where}.gamma: {gamma!r}; give γ > 0 (the paper's is 10)")
        ramp = spec.get("ramp_steps")
        if schedule == "ganin" and (not isinstance(ramp, int) or isinstance(ramp, bool) or ramp < 1):
            raise ConfigError(
                f"{where}.ramp_steps: {ramp!r}; schedule=ganin needs the number of training steps over which λ "
                "ramps up (e.g. trainer.epochs × steps per epoch)"
            )
        return cls(float(strength), schedule, float(gamma), ramp)


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


class GradientReversal(nn.Module):
    """Identity forward, −λ_p · gradient backward (module docstring); counts its training forwards."""

    def __init__(self, spec: ReversalSpec) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards so far

    @classmethod
    def of(cls, task: Task) -> GradientReversal:
        return cls(ReversalSpec.parse(task.name, task.reverse_gradient))

    def strength(self) -> float:
        """λ_p at the current step."""
        spec = self.spec
        if spec.schedule == "constant":
            return spec.strength
        p = min(1.0, int(self.steps) / spec.ramp_steps)
        return spec.strength * (2.0 / (1.0 + math.exp(-spec.gamma * p)) - 1.0)

    def forward(self, h: Tensor) -> Tensor:
        scale = self.strength()
        if self.training:
            self.steps += 1
        return _Reverse.apply(h, scale)
