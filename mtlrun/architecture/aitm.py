"""AITM, the Adaptive Information Transfer Multi-task framework (Xi, Chen, Yan, Zhang, Zhu, Zhuang & Chen
2021, "Modeling the Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning
in Targeted Display Advertising", KDD): tasks that are steps of a funnel (impression → click → purchase),
each tower passing what it learned to the next step's tower through an attention unit.

**The towers.** A shared trunk (the injected encoder; the paper's shared embeddings) reads the input x;
each task t has a tower, an MLP whose output q_t has width k (the last of `tower_hidden`).

**The transfer unit (AIT).** For the tasks of the `sequence` s_1 → s_2 → … → s_T, the first keeps its
tower's output, z_1 = q_1. Each later step t takes the previous step's result through a learned
projection, p_(t−1) = g_t(z_(t−1)) (one linear layer and a ReLU), and attends over the two candidates
u ∈ {p_(t−1), q_t} with three linear projections h_1 (values), h_2 (keys), h_3 (queries):

```text
w_u = softmax_u(⟨h_2(u), h_3(u)⟩ / √k),     z_t = Σ_u w_u · h_1(u)
```

(the paper's equations: each candidate is scored by its own key and query). Head t (the paper's output
MLP and sigmoid) reads z_t; tasks outside the sequence read their tower's q_t. So step t's prediction
depends on every earlier step's tower, and no step's on a later one's. `attention_weights` holds the last
forward's [N, 2] weights of each step (on p_(t−1), then q_t), rows that sum to 1.

**The behavioural expectation calibrator.** A later step of a funnel cannot be more likely than an earlier
one (a purchase needs a click). With `calibrator_strength` α > 0 the model adds the penalty

```text
α · Σ_(t=2..T) mean_n max(ŷ_t(x_n) − ŷ_(t−1)(x_n), 0)
```

over the sequence's adjacent pairs, ŷ_t being task t's probability (`Task.probabilities`, so a `pos_weight`
is undone first); it is 0 where the estimates are already ordered. `penalty()` returns it and the runner
adds it to the objective. The calibrator needs binary tasks whose targets are funnel steps over every
impression (the later step 0 where the earlier one is 0): its first training batch is checked, and a later
step unlabelled (or 1) where the earlier step is 0 is a ConfigError; for the example feed, point the
purchase task at its `conversion` column.

**Config keys.**

- `sequence`: the funnel's tasks in order, at least two; null: every task, in declared order. The transfer
  works for any task kind (it passes tower features, not predictions).
- `tower_hidden`: the widths of each task's tower; the last one is k, the width of the transfer unit.
- `activation`, `dropout`: the towers' activation (a torch.nn class name) and dropout rate in [0, 1).
- `calibrator_strength`: α ≥ 0; 0 turns the calibrator off. With α > 0 every task of the sequence must be
  binary.

**Parameter roles.** The trunk: part `trunk`, shared. Tower t: part `trunk`; transfer unit t: part
`mixing`. Both reach the losses of step t and, through z_t, of every later step of the sequence, so they
are owned by task t only when t is the sequence's last step (or not in it), and shared (no owner)
otherwise: gradient-balancing methods see the earlier towers as the shared parameters they are. The heads:
part `head`, each owned by its task. There is no per-task view of the trunk's output, since later steps
reach it through earlier towers.

**Diagnostics.** During evaluation each step's attention weights are averaged over the examples: rows
`<task>, transfer/previous` and `transfer/own` (they sum to 1).

**Departures from the paper.** The trunk is the injected encoder rather than the paper's embedding layer
alone, and the output MLPs are the configurable heads. The paper's experiments use α = 0.6 on tasks that
are all binary funnel steps; the default here is 0 (off), so the design applies to every task kind, and
`sequence` defaults to all tasks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.esmm import check_chain_names, check_funnel_labels
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import UsageMeter
from mtlrun.encoder.layers import mlp
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task

DEFAULTS = {"sequence": None, "tower_hidden": (64, 32), "calibrator_strength": 0.0}


class TransferUnit(nn.Module):
    """AIT: z_t = Σ_u w_u h_1(u) over u ∈ {g(z_(t−1)), q_t}, w = softmax(⟨h_2(u), h_3(u)⟩ / √k)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.info = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())  # g: what the previous step passes on
        self.value = nn.Linear(dim, dim)  # h_1
        self.key = nn.Linear(dim, dim)  # h_2
        self.query = nn.Linear(dim, dim)  # h_3
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, previous: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        """(z_t [N, k], the weights [N, 2] on p_(t−1) and q_t)."""
        candidates = torch.stack([self.info(previous), own], dim=1)  # [N, 2, k]
        scores = (self.key(candidates) * self.query(candidates)).sum(-1) * self.scale
        weights = scores.softmax(-1)
        return (weights.unsqueeze(-1) * self.value(candidates)).sum(1), weights


class AITM(MTLModel):
    """A shared trunk, a tower per task, attention units passing each step's information to the next, an
    optional calibrator penalty (module docstring)."""

    has_representation = True

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        sequence: Sequence[str] | None = None,
        tower_hidden: Sequence[int] = (64, 32),
        activation: str = "ReLU",
        dropout: float = 0.0,
        calibrator_strength: float = 0.0,
    ) -> None:
        options = {
            "sequence": sequence,
            "tower_hidden": tower_hidden,
            "calibrator_strength": calibrator_strength,
        }
        self.check_tasks(tasks, options)
        super().__init__(tasks)
        self.sequence = list(sequence) if sequence is not None else list(self.tasks)
        self.strength = float(calibrator_strength)
        trunk = encoder()
        width = int(tower_hidden[-1])
        # towers and transfer units are registered before the trunk, so the last shared module (GradNorm's W)
        # is the trunk's, which every task reaches
        self.towers = nn.ModuleDict(
            {t: mlp(trunk.out_dim, [int(h) for h in tower_hidden], activation, dropout) for t in self.tasks}
        )
        self.transfer = nn.ModuleDict({t: TransferUnit(width) for t in self.sequence[1:]})
        self.trunk = trunk
        self.heads = TaskHeads(width, self.tasks, heads)
        self.attention_weights: dict[str, Tensor] = {}
        self._predictions: dict[str, Tensor] = {}
        self._usage = UsageMeter()
        self._labels_checked = False

    @classmethod
    def check_tasks(cls, tasks: Mapping[str, Task], options: Mapping, batch: Mapping | None = None) -> None:
        values = DEFAULTS | dict(options)
        sequence = values["sequence"]
        if sequence is not None and (isinstance(sequence, str) or len(sequence) < 2):
            raise ConfigError(
                f"architecture.sequence: {sequence!r}; give at least two tasks in funnel order, e.g. [click, "
                "purchase] (or null for every task in declared order)"
            )
        check_chain_names("architecture.sequence", sequence, tasks, "two or more tasks in funnel order")
        sequence = list(sequence) if sequence is not None else list(tasks)
        if len(sequence) < 2:
            raise ConfigError("architecture.sequence: AITM transfers between tasks and needs at least two")
        hidden = values["tower_hidden"]
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ConfigError(
                f"architecture.tower_hidden: {hidden!r}; give one or more positive widths (the last is the "
                "transfer unit's width)"
            )
        strength = values["calibrator_strength"]
        if not strength >= 0:
            raise ConfigError(
                f"architecture.calibrator_strength: must be >= 0 (0 turns it off), got {strength}"
            )
        if strength == 0:
            return
        other = [t for t in sequence if tasks[t].kind != "binary"]
        if other:
            raise ConfigError(
                f"architecture.calibrator_strength={strength}: the calibrator orders probabilities, but task "
                f"'{other[0]}' of the sequence is {tasks[other[0]].kind}; list binary funnel steps only in "
                "architecture.sequence, or set calibrator_strength=0"
            )
        if batch is not None:
            for earlier, later in pairwise(sequence):
                check_funnel_labels(
                    "architecture.sequence",
                    batch,
                    tasks[earlier],
                    tasks[later],
                    "the calibrator would hold its estimate below the earlier step's on rows it is not a step of",
                )

    def forward(self, batch: dict) -> dict[str, Tensor]:
        if self.training and not self._labels_checked and "y" in batch:
            options = {"sequence": self.sequence, "calibrator_strength": self.strength}
            self.check_tasks(self.tasks, options, batch)
            self._labels_checked = True
        self.shared_representation = self.trunk(batch["x"])
        features = {t: tower(self.shared_representation) for t, tower in self.towers.items()}
        self.attention_weights = {}
        for previous, step in pairwise(self.sequence):
            features[step], self.attention_weights[step] = self.transfer[step](
                features[previous], features[step]
            )
        if not self.training:
            for step, weights in self.attention_weights.items():
                self._usage.add(step, "transfer/", ["previous", "own"], weights)
        out = self.heads(features)
        self._predictions = out if self.strength > 0 else {}
        return out

    def calibrator(self, predictions: Mapping[str, Tensor]) -> Tensor:
        """Σ over the sequence's adjacent pairs of mean_n max(ŷ_t − ŷ_(t−1), 0), without α."""
        probabilities = {t: self.tasks[t].probabilities(predictions[t].float()) for t in self.sequence}
        terms = [
            (probabilities[later] - probabilities[earlier]).clamp(min=0).mean()
            for earlier, later in pairwise(self.sequence)
        ]
        return torch.stack(terms).sum()

    def penalty(self) -> Tensor | None:
        if self.strength == 0 or not self._predictions:
            return None
        return self.strength * self.calibrator(self._predictions)

    def parameter_roles(self) -> dict[str, ParamRole]:
        later = set(self.sequence[:-1])  # reached by later steps' losses too: shared
        owner = {t: None if t in later else t for t in self.tasks}
        prefixes = {"trunk": ParamRole("trunk")}
        prefixes |= {f"towers.{t}": ParamRole("trunk", owner[t]) for t in self.tasks}
        prefixes |= {f"transfer.{t}": ParamRole("mixing", owner[t]) for t in self.transfer}
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Mean attention weight on the previous step's information and on the step's own, per step."""
        return self._usage.pop()
