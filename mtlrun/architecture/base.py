"""The model contract shared by every architecture.

* `forward(batch) -> {task: prediction}` (raw outputs: logits for classifiers, values for regression).
* `parameter_roles()` says, for every parameter, which part of the design it belongs to (`trunk`,
  `head` or `mixing`) and which task owns it (`None`: shared by every task). The optimizer groups
  follow the part (trunk -> `shared`, head -> `heads`/`heads.<task>`, mixing -> `mixing`); the
  per-task gradient engine differentiates only the parameters no task owns.
* `shared_representation` holds the features every task reads in the last forward pass, for
  architectures that have one (`has_representation`); gradient methods may differentiate against it.
* `penalty()` returns the design's regularisation term for the last forward pass (soft sharing's
  distance between columns, sluice's orthogonality), or None. The runner adds it to the objective (its
  gradient is never balanced by a weighting method) and logs it as the `model/penalty` row.
* `diagnostics()` returns statistics gathered during the last evaluation pass ({task: {name: value}},
  e.g. the mean expert usage of each task's gate); the runner writes them next to the split's metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch.nn as nn
from torch import Tensor

from mtlrun.tasks import Task

EncoderFactory = Callable[[], nn.Module]
Part = Literal["trunk", "head", "mixing"]


@dataclass(frozen=True)
class ParamRole:
    part: Part
    task: str | None = None  # the task that owns the parameter; None when all tasks share it


class MTLModel(nn.Module):
    """Base class: subclasses build their modules, implement `forward` and `parameter_roles`."""

    has_representation: bool = False
    # True where the tasks do not interact at all (one network per task): such runs are the single-task
    # baseline that reports compute Δm% against.
    independent_tasks: ClassVar[bool] = False

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        super().__init__()
        self.tasks = dict(tasks)
        self.shared_representation: Tensor | None = None

    def forward(self, batch: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def parameter_roles(self) -> dict[str, ParamRole]:
        raise NotImplementedError

    def representation_views(self) -> dict[str, Tensor]:
        """Each task's own view of `shared_representation` in the last forward pass, where each task's loss
        reaches the representation only through its view (then one backward pass gives all T per-task
        gradients with respect to it); {} where that does not hold."""
        return {}

    def penalty(self) -> Tensor | None:
        """Regularisation term of the last forward pass, added to the training objective; None if none."""
        return None

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Statistics gathered since the last call during evaluation forwards (then reset)."""
        return {}

    @classmethod
    def check_tasks(cls, tasks: Mapping[str, Task], options: Mapping, batch: Mapping | None = None) -> None:
        """Raise a ConfigError where the design cannot serve these tasks with its config keys `options` (e.g.
        ESMM needs two binary tasks); with a training `batch`, also where its labels do not suit the design.
        Any tasks are fine here. A design that overrides it calls it when built and on its first training
        batch; the contract tests expect a ConfigError exactly where it raises one."""

    def extra_estimates(self) -> dict[str, Tensor]:
        """Estimates of the last forward pass besides the tasks' own ({column name: [N]}, e.g. ESMM's pCVR);
        `mtlrun predict` writes each as a column after the tasks' columns. None here."""
        return {}

    def fit_structure(self, data: Any, seed: int) -> None:
        """Fit the model's shape to the data before the run's optimizer is built (`setup_model` calls it once
        the model is on its device): a design that grows itself (adaptive_branching) trains briefly on
        `data`'s training split and rebuilds its modules here. The result must depend only on `data`,
        `seed` and the config, so a resumed run rebuilds the shape its checkpoint holds. `data` has no
        `splits` when predicting (`NewInput`); the shape then comes from the saved weights. No-op here."""

    def artifacts(self) -> dict[str, str]:
        """Files describing the model to write into the run folder after setup ({file name: text}), e.g.
        a grown structure; none here."""
        return {}

    def task_layers(self) -> list[dict[str, nn.Linear]]:
        """Groups of task-specific layers a regulariser may couple (mtlrun/regularizer/), by depth: each group
        maps every task to one nn.Linear. By default the heads' Linear layers (`TaskHeads.linear_layers`)."""
        heads = getattr(self, "heads", None)
        return heads.linear_layers() if heads is not None else []

    def roles_by_prefix(self, prefixes: Mapping[str, ParamRole]) -> dict[str, ParamRole]:
        """Assign each named parameter the role of the longest prefix that matches its name."""
        roles = {}
        ordered = sorted(prefixes, key=len, reverse=True)
        for name, _ in self.named_parameters():
            match = next((p for p in ordered if name == p or name.startswith(p + ".")), None)
            if match is None:
                raise RuntimeError(
                    f"{type(self).__name__}: parameter '{name}' has no role; extend parameter_roles"
                )
            roles[name] = prefixes[match]
        return roles

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters that no single task owns (what per-task gradients are taken of)."""
        roles = self.parameter_roles()
        return [p for n, p in self.named_parameters() if p.requires_grad and roles[n].task is None]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the last shared layer (GradNorm's W): the last module, in registration order, whose
        own parameters are all shared. Empty when nothing is shared."""
        shared = {id(p) for p in self.shared_parameters()}
        last: list[nn.Parameter] = []
        for module in self.modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params and all(id(p) in shared for p in params):
                last = params
        return last

    def task_owned_parameters(self) -> list[nn.Parameter]:
        roles = self.parameter_roles()
        return [p for n, p in self.named_parameters() if p.requires_grad and roles[n].task is not None]

    def parameter_counts(self) -> dict[str, int]:
        """Number of scalar parameters: total, shared, mixing, and per task."""
        counts = {"total": 0, "shared": 0, "mixing": 0} | {f"task.{t}": 0 for t in self.tasks}
        roles = self.parameter_roles()
        for name, p in self.named_parameters():
            role = roles[name]
            counts["total"] += p.numel()
            if role.part == "mixing":
                counts["mixing"] += p.numel()
            elif role.task is None:
                counts["shared"] += p.numel()
            else:
                counts[f"task.{role.task}"] += p.numel()
        return counts
