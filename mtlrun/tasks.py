"""Tasks are data, not subclasses: a name, a kind, a target, a loss, metrics with their directions.

A `Task` is built from the ``tasks.<name>`` node of the config and is frozen: what the config
declares never changes. What the run learns about a task from its training data (the class labels, a
standardised target's scale, ``pos_weight: auto``'s value) is kept apart in `Fitted`; the setup
steps make a fitted copy (`Task.with_data_settings`, `Task.with_pos_weight_fitted`). Its kind fixes how many outputs its
head has, how predictions turn into probabilities, and which losses and metrics make sense. Metrics come
from torchmetrics, which also tells each metric's direction (``higher_is_better``).

Partly labelled data: a batch may carry ``mask[target]`` (bool [N], True where the row is labelled) and
``weight`` (float [N] sample weights). The loss is then the weighted mean over labelled rows only, and
exactly 0, with a zero gradient, when no row of the batch is labelled. Binary tasks may weigh their
positive rows (``pos_weight``, BCE's ``pos_weight``); regression targets a data set standardised carry
their ``target_scale`` so metrics are computed in the original units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrun.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torchmetrics


def _torchmetrics() -> ModuleType:
    """torchmetrics, imported when the first metric is built: its import costs about 2 s of CPU (it pulls in
    scipy.signal and matplotlib), which building and checking tasks does not need."""
    import torchmetrics

    return torchmetrics


KINDS = ("regression", "binary", "multiclass", "multilabel")

# Loss functions by kind (torch.nn.functional losses); the first is the kind's default. A sample's loss is
# averaged over its outputs for regression tasks (one, or D for a reconstruction: mtlrun/auxiliary.py) and over
# labels for multilabel tasks; binary tasks have one output.
LOSSES: dict[str, dict[str, Callable[..., Tensor]]] = {
    "regression": {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss},
    "binary": {"bce": F.binary_cross_entropy_with_logits},
    "multiclass": {"cross_entropy": F.cross_entropy},
    "multilabel": {"bce": F.binary_cross_entropy_with_logits},
}
OUTPUT_REDUCTION = {"regression": "mean", "binary": "sum", "multiclass": "none", "multilabel": "mean"}

# Metrics by kind; the defaults are listed in DEFAULT_METRICS. Each entry builds a torchmetrics Metric
# from the task's number of classes.
METRICS: dict[str, dict[str, Callable[[int], torchmetrics.Metric]]] = {
    "regression": {
        "mse": lambda n: _torchmetrics().MeanSquaredError(),
        "rmse": lambda n: _torchmetrics().MeanSquaredError(squared=False),
        "mae": lambda n: _torchmetrics().MeanAbsoluteError(),
        "r2": lambda n: _torchmetrics().R2Score(),
    },
    "binary": {
        "accuracy": lambda n: _torchmetrics().classification.BinaryAccuracy(),
        "auroc": lambda n: _torchmetrics().classification.BinaryAUROC(),
        "f1": lambda n: _torchmetrics().classification.BinaryF1Score(),
        "average_precision": lambda n: _torchmetrics().classification.BinaryAveragePrecision(),
    },
    "multiclass": {
        "accuracy": lambda n: _torchmetrics().classification.MulticlassAccuracy(n, average="micro"),
        "balanced_accuracy": lambda n: _torchmetrics().classification.MulticlassAccuracy(n, average="macro"),
        "f1_macro": lambda n: _torchmetrics().classification.MulticlassF1Score(n, average="macro"),
    },
    "multilabel": {
        "accuracy": lambda n: _torchmetrics().classification.MultilabelAccuracy(n),
        "f1_macro": lambda n: _torchmetrics().classification.MultilabelF1Score(n, average="macro"),
        "auroc": lambda n: _torchmetrics().classification.MultilabelAUROC(n),
    },
}

DEFAULT_METRICS = {
    "regression": ["mae", "rmse"],
    "binary": ["auroc", "accuracy"],
    "multiclass": ["accuracy", "f1_macro"],
    "multilabel": ["f1_macro", "accuracy"],
}

# Names that mean something else in ``heads`` and ``optim.groups``; a task may not take them.
RESERVED_NAMES = {"lr", "weight_decay", "lr_scale", "hidden", "activation", "dropout", "loss", "weight"}
# Names metrics.csv uses in its task column for rows that are not a task's: ``all`` (time per step) and
# ``model`` (the model's penalty and diagnostics, e.g. PLE's shared gates); a task may not take them either.
RESERVED_ROW_NAMES = ("all", "model")
# Characters a task name may not hold: ``.`` separates config keys, ``~`` joins a task pair in metrics.csv
# (gradient cosines, ``a~b``) and ``/`` separates task and metric (``trainer.monitor=<task>/<metric>``).
RESERVED_CHARACTERS = (".", "~", "/")


def check_task_name(name: str) -> None:
    """A ConfigError when ``name`` is reserved (`RESERVED_ROW_NAMES`, `RESERVED_NAMES`) or holds a
    character of `RESERVED_CHARACTERS`; the message lists them all."""
    characters = [c for c in RESERVED_CHARACTERS if c in name]
    if characters:
        problem = f"'{name}' contains '{characters[0]}'"
    elif name in RESERVED_ROW_NAMES:
        problem = f"'{name}' is reserved for metrics.csv's own rows"
    elif name in RESERVED_NAMES:
        problem = f"'{name}' is reserved (a key of heads and optim.groups)"
    else:
        return
    reserved = ", ".join([*RESERVED_ROW_NAMES, *sorted(RESERVED_NAMES)])
    forbidden = ", ".join(f"'{c}'" for c in RESERVED_CHARACTERS)
    raise ConfigError(
        f"tasks.{name}: {problem}; rename the task. Reserved names: {reserved}; a name may not contain "
        f"{forbidden}"
    )


@dataclass(frozen=True)
class Fitted:
    """What the setup learns about a task from the data set (empty until then)."""

    classes: tuple | None = None  # binary/multiclass: the labels the data set found, in index order
    pos_weight: float | None = None  # binary, ``pos_weight: auto``: n_neg / n_pos of the training split
    target_scale: tuple[float, float] | None = (
        None  # regression: (mean, std) the target was standardised with
    )
    outputs: int | None = None  # regression: the head's outputs where not 1 (a reconstruction's D)


@dataclass(frozen=True)
class Task:
    """One task of a multi-task problem, as the config declares it, plus what was fitted on the data."""

    name: str
    kind: str
    target: str
    num_classes: int | None = None
    loss: str = ""
    metrics: tuple[str, ...] = ()
    inputs_from: tuple[str, ...] = ()
    detach: bool = True
    columns: tuple[str, ...] = ()  # multilabel: the label columns of a table, in order
    classes: tuple | None = None  # binary/multiclass: the labels as declared, in index order
    pos_weight: float | str | None = None  # binary: BCE weight of positive rows, or "auto" (fitted)
    standardize: bool = False  # regression: the data set standardises the target (data=tabular)
    auxiliary: bool = False  # trained, but out of selection on `loss` and of reports (auxiliary.py)
    generate: dict | None = field(default=None, hash=False)  # where a generated target comes from
    reverse_gradient: dict | None = field(default=None, hash=False)  # adversarial: the head's reversal
    fitted: Fitted = field(default_factory=Fitted)

    def _set(self, **values: object) -> None:
        """Normalise declared values while the task is being built (it is frozen afterwards)."""
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __post_init__(self) -> None:
        where = f"tasks.{self.name}"
        check_task_name(self.name)
        if self.kind not in KINDS:
            raise ConfigError(
                f"{where}.kind: '{self.kind}' is not a task kind; choose one of {', '.join(KINDS)}"
            )
        self._check_table_options(where)
        if self.kind in ("multiclass", "multilabel") and (self.num_classes is None or self.num_classes < 2):
            raise ConfigError(f"{where}.num_classes: a {self.kind} task needs num_classes >= 2")
        self._set(loss=self.loss or next(iter(LOSSES[self.kind])))
        if self.loss not in LOSSES[self.kind]:
            raise ConfigError(
                f"{where}.loss: '{self.loss}' is not a {self.kind} loss; choose one of {', '.join(LOSSES[self.kind])}"
            )
        self._set(
            metrics=tuple(self.metrics) or tuple(DEFAULT_METRICS[self.kind]),
            inputs_from=tuple(self.inputs_from),
        )
        for metric in self.metrics:
            if metric not in METRICS[self.kind]:
                raise ConfigError(
                    f"{where}.metrics: '{metric}' is not a {self.kind} metric; "
                    f"choose from {', '.join(METRICS[self.kind])}"
                )

    def _check_table_options(self, where: str) -> None:
        """Check ``columns``, ``classes``, ``pos_weight`` and ``standardize`` against the kind; fill in
        ``num_classes`` from ``columns`` (multilabel) or ``classes`` (multiclass) when it is not given."""
        self._set(columns=tuple(self.columns or ()))
        if self.columns:
            if self.kind != "multilabel":
                raise ConfigError(f"{where}.columns: only multilabel tasks read several columns; remove it")
            if self.num_classes is None:
                self._set(num_classes=len(self.columns))
            if self.num_classes != len(self.columns):
                raise ConfigError(
                    f"{where}.num_classes: {self.num_classes}, but columns lists {len(self.columns)} labels; "
                    "make them agree (or leave num_classes out)"
                )
        if self.classes is not None:
            self._set(classes=tuple(self.classes))
            if self.kind not in ("binary", "multiclass"):
                raise ConfigError(
                    f"{where}.classes: only binary and multiclass tasks have classes; remove it"
                )
            if len(set(map(str, self.classes))) != len(self.classes):
                raise ConfigError(f"{where}.classes: {list(self.classes)} lists a label twice")
            if self.kind == "binary" and len(self.classes) != 2:
                raise ConfigError(
                    f"{where}.classes: a binary task has two classes (negative, positive); got {list(self.classes)}"
                )
            if self.kind == "multiclass":
                if self.num_classes is None:
                    self._set(num_classes=len(self.classes))
                if self.num_classes != len(self.classes):
                    raise ConfigError(
                        f"{where}.classes: {len(self.classes)} labels, but num_classes is {self.num_classes}; "
                        "make them agree (or leave num_classes out)"
                    )
        if self.pos_weight is not None:
            if self.kind != "binary":
                raise ConfigError(f"{where}.pos_weight: only binary tasks weigh positive rows; remove it")
            ok = self.pos_weight == "auto" or (
                isinstance(self.pos_weight, int | float)
                and not isinstance(self.pos_weight, bool)
                and self.pos_weight > 0
            )
            if not ok:
                raise ConfigError(
                    f"{where}.pos_weight: {self.pos_weight!r}; give a positive number or auto (n_neg / n_pos "
                    "of the training split)"
                )
        if self.standardize and self.kind != "regression":
            raise ConfigError(f"{where}.standardize: only regression targets are standardised; remove it")

    def with_data_settings(self, data_name: str, settings: Mapping[str, object]) -> Task:
        """A copy with what the data set fitted for this task's target (``target_scale``, ``classes``), after
        checking that nothing the task asked for is left unfitted."""
        unknown = set(settings) - {"target_scale", "classes"}
        if unknown:
            raise ValueError(f"data set {data_name}: unknown task settings {sorted(unknown)}")
        fitted = self.fitted
        if "target_scale" in settings:
            mean, std = settings["target_scale"]
            fitted = replace(fitted, target_scale=(float(mean), float(std)))
        if "classes" in settings:
            fitted = replace(fitted, classes=tuple(settings["classes"]))
        if self.standardize and fitted.target_scale is None:
            raise ConfigError(
                f"tasks.{self.name}.standardize: data set {data_name} does not standardise targets "
                "(data=tabular does); remove the option"
            )
        return replace(self, fitted=fitted)

    def with_pos_weight_fitted(self, target: Tensor, mask: Tensor | None = None) -> Task:
        """A copy with ``pos_weight: auto`` resolved to n_neg / n_pos over the labelled rows of the training
        split (the task itself where it declares no ``auto``)."""
        if self.pos_weight != "auto":
            return self
        labels = target if mask is None else target[mask]
        positives = int((labels == 1).sum())
        negatives = int(labels.numel()) - positives
        if positives == 0 or negatives == 0:
            raise DataError(
                f"tasks.{self.name}.pos_weight=auto: the training split of target '{self.target}' has "
                f"{positives} positive and {negatives} negative labelled rows, so n_neg/n_pos is undefined; "
                "give pos_weight a number"
            )
        return replace(self, fitted=replace(self.fitted, pos_weight=negatives / positives))

    def with_fitted(self, **values: object) -> Task:
        """A copy with these `Fitted` values (e.g. a trained run's ``pos_weight``, when predicting)."""
        return replace(self, fitted=replace(self.fitted, **values))

    @property
    def class_labels(self) -> tuple | None:
        """binary/multiclass: the original labels in index order, as declared or as the data set found them."""
        return self.fitted.classes if self.fitted.classes is not None else self.classes

    @property
    def positive_weight(self) -> float | None:
        """binary: the BCE weight of positive rows in effect (``auto`` once fitted); None: unweighted."""
        return self.fitted.pos_weight if self.pos_weight == "auto" else self.pos_weight

    @property
    def target_scale(self) -> tuple[float, float] | None:
        """regression: (mean, std) the data set standardised the target with; None: not standardised."""
        return self.fitted.target_scale

    @property
    def out_dim(self) -> int:
        """Width of the head's output layer."""
        if self.kind in ("multiclass", "multilabel"):
            return self.num_classes
        return self.fitted.outputs or 1

    @property
    def feature_dim(self) -> int:
        """Width of this task's estimate when it feeds another task (see ``inputs_from``)."""
        return self.out_dim

    def prepare_prediction(self, raw: Tensor) -> Tensor:
        """The head's output in the shape the loss expects: [N] for 1-output heads, else [N, C]."""
        return raw.squeeze(-1) if self.out_dim == 1 and self.kind != "multiclass" else raw

    def probabilities(self, prediction: Tensor) -> Tensor:
        """Calibrated class probabilities of a classifier's logits. A binary task trained with ``pos_weight``
        w has its loss minimised at logit(p) + log w (positive rows count w times), so log w is taken off
        first: the probabilities then estimate P(y = 1), not w-inflated odds."""
        if self.kind == "multiclass":
            return prediction.softmax(-1)
        weight = self.positive_weight
        if self.kind == "binary" and weight is not None and weight != 1:
            prediction = prediction - math.log(weight)
        return prediction.sigmoid()

    def estimate(self, prediction: Tensor) -> Tensor:
        """The task's estimate as a feature for other tasks: probabilities or values, shape [N, feature_dim]."""
        out = prediction if self.kind == "regression" else self.probabilities(prediction)
        return out.reshape(out.shape[0], -1)

    def _prepare_target(self, prediction: Tensor, target: Tensor) -> Tensor:
        return target.long() if self.kind == "multiclass" else target.to(prediction.dtype)

    def _loss_options(self, prediction: Tensor) -> dict:
        if self.pos_weight is None:
            return {}
        weight = self.positive_weight
        if weight is None:
            raise ConfigError(
                f"tasks.{self.name}.pos_weight={self.pos_weight}: not fitted (the runner fits it from the "
                "training split); fit it with Task.with_pos_weight_fitted, or give a number"
            )
        return {"pos_weight": torch.tensor(weight, dtype=prediction.dtype, device=prediction.device)}

    def loss_per_sample(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss, shape [N] (for masked targets and sample weights)."""
        loss = LOSSES[self.kind][self.loss](
            prediction,
            self._prepare_target(prediction, target),
            reduction="none",
            **self._loss_options(prediction),
        )
        reduction = OUTPUT_REDUCTION[self.kind]
        if reduction == "none":
            return loss
        loss = loss.reshape(loss.shape[0], -1)
        return loss.sum(1) if reduction == "sum" else loss.mean(1)

    def loss_mean(
        self, prediction: Tensor, target: Tensor, mask: Tensor | None = None, weight: Tensor | None = None
    ) -> Tensor:
        """The batch loss: the mean of `loss_per_sample`, in one fused call (the training step's fast
        path); with a ``mask`` (bool [N], True = labelled) and/or sample ``weight`` (float [N]), the weighted
        mean over labelled rows: sum(w * l) / sum(w). It is exactly 0, with a zero gradient, when no row is
        labelled (or every weight is 0)."""
        if mask is None and weight is None:
            loss = LOSSES[self.kind][self.loss](
                prediction, self._prepare_target(prediction, target), **self._loss_options(prediction)
            )
            if OUTPUT_REDUCTION[self.kind] == "sum" and prediction.ndim > 1:
                loss = loss * (prediction[0].numel())
            return loss
        w = weight.to(prediction.dtype) if weight is not None else None
        if mask is not None:
            # unlabelled rows may hold any placeholder (even NaN): replace it, so their loss and gradient stay
            # finite before the zero weight removes them
            target = target.masked_fill(~mask.view(-1, *[1] * (target.ndim - 1)), 0)
            w = mask.to(prediction.dtype) if w is None else w * mask
        per_sample = self.loss_per_sample(prediction, target)
        total = w.sum()
        return (per_sample * w).sum() / torch.where(total > 0, total, torch.ones_like(total))

    def labelled(self, batch: Mapping) -> Tensor | None:
        """The batch's mask for this task's target (bool [N]), or None when every row is labelled."""
        masks = batch.get("mask")
        return masks.get(self.target) if masks else None

    def make_metrics(self) -> dict[str, torchmetrics.Metric]:
        return {name: METRICS[self.kind][name](self.num_classes or 0) for name in self.metrics}

    def metric_inputs(self, prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(preds, target) as torchmetrics wants them: probabilities and integer labels for classifiers;
        regression values in the target's original units (undoing ``target_scale``)."""
        prediction = prediction.float()
        if self.kind == "regression":
            if self.target_scale is not None:
                mean, std = self.target_scale
                return prediction * std + mean, target.float() * std + mean
            return prediction, target.float()
        return self.probabilities(prediction), target.long()

    def higher_is_better(self, metric: str) -> bool:
        return bool(METRICS[self.kind][metric](self.num_classes or 2).higher_is_better)

    def check_targets(self, target: Tensor, split: str) -> None:
        """Fail with a clear message when labels do not fit the task (out of range, not finite)."""
        where = f"task '{self.name}' (target '{self.target}', split {split})"
        if target.numel() == 0:
            raise ConfigError(f"{where}: no labels")
        if target.is_floating_point() and not torch.isfinite(target).all():
            raise ConfigError(f"{where}: labels contain NaN or inf; drop or fill those rows")
        if self.kind == "multiclass":
            if target.is_floating_point() and not torch.equal(target, target.round()):
                raise ConfigError(f"{where}: multiclass labels must be integers 0..{self.num_classes - 1}")
            low, high = int(target.min()), int(target.max())
            if low < 0 or high >= self.num_classes:
                raise ConfigError(
                    f"{where}: label {high if high >= self.num_classes else low} is out of range for "
                    f"num_classes={self.num_classes}; labels must lie in 0..{self.num_classes - 1} "
                    f"(set tasks.{self.name}.num_classes or fix the labels)"
                )
        if self.kind in ("binary", "multilabel"):
            bad = (target != 0) & (target != 1)
            if bad.any():
                raise ConfigError(
                    f"{where}: {self.kind} labels must be 0 or 1; found {target[bad][0].item()}"
                )
            if self.kind == "multilabel" and (target.ndim != 2 or target.shape[1] != self.num_classes):
                raise ConfigError(
                    f"{where}: multilabel targets must have shape [N, {self.num_classes}]; got {list(target.shape)}"
                )


def build_tasks(tasks_cfg: Mapping[str, Mapping]) -> dict[str, Task]:
    """Build the tasks from the ``tasks`` config node and check their ``inputs_from`` graph."""
    if not tasks_cfg:
        raise ConfigError("tasks: no tasks declared; the data config must declare at least one task")
    from mtlrun import auxiliary

    tasks = {}
    for name, spec in tasks_cfg.items():
        spec = auxiliary.complete_spec(name, dict(spec))  # what `generate` fixes: kind, num_classes, target
        kind = spec.pop("kind")
        tasks[name] = Task(
            name=name,
            kind=getattr(kind, "value", kind),
            target=spec.pop("target", None) or name,
            num_classes=spec.pop("num_classes", None),
            loss=spec.pop("loss", None) or "",
            metrics=tuple(spec.pop("metrics", None) or ()),
            inputs_from=tuple(spec.pop("inputs_from", None) or ()),
            detach=spec.pop("detach", True),
            columns=tuple(spec.pop("columns", None) or ()),
            classes=spec.pop("classes", None),
            pos_weight=spec.pop("pos_weight", None),
            standardize=bool(spec.pop("standardize", False)),
            auxiliary=bool(spec.pop("auxiliary", False)),
            generate=spec.pop("generate", None),
            reverse_gradient=spec.pop("reverse_gradient", None),
        )
        if spec:
            raise ConfigError(f"tasks.{name}: unknown keys {sorted(spec)}")
    topological_order(tasks)
    auxiliary.check_flags(tasks)
    return tasks


def topological_order(tasks: Mapping[str, Task]) -> list[str]:
    """Task names ordered so every task comes after the tasks it takes inputs from; cycles are errors."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ConfigError(f"tasks: inputs_from forms a cycle ({cycle}); remove one of these links")
        state[name] = "visiting"
        for source in tasks[name].inputs_from:
            if source not in tasks:
                raise ConfigError(
                    f"tasks.{name}.inputs_from: unknown task '{source}'; known tasks: {', '.join(tasks)}"
                )
            visit(source, [*path, name])
        state[name] = "done"
        order.append(name)

    for name in tasks:
        visit(name, [])
    return order
