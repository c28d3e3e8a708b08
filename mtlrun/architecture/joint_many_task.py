"""Joint many-task model, JMT (Hashimoto, Xiong, Tsuruoka & Socher 2017, "A Joint Many-Task Model: Growing a
Neural Network for Multiple NLP Tasks", EMNLP): the tasks stand in a declared order, and each task has its
own layer stacked on the previous task's, so later tasks build on what earlier ones computed and predicted.

**Wiring.** With z the trunk's output (the shared encoder), tasks in the order τ_0 … τ_K−1, ℓ_k task
τ_k's layer (Linear → activation, of width `hidden`), f_k its head and E_k its label embedding:

```text
h_0 = ℓ_0(z)                           ŷ_0 = f_0(h_0)
h_k = ℓ_k([z ; h_k−1 ; E_k−1 p_k−1])   ŷ_k = f_k(h_k)        (k = 1 … K − 1)
```

where p_k−1 = sg(estimate(ŷ_k−1)) is task τ_k−1's estimate (class probabilities for classifiers, values
for regression; `Task.estimate`) under a stop-gradient sg, and [· ; ·] concatenates features. The z in
every layer's input is the paper's shortcut connection from the word representations. E_k is a linear map
without bias from the estimate to `label_dim` features: for a classifier, E p = Σ_c p(c) e_c, the
probability-weighted sum of learned label embeddings e_c (the columns of E), as in the paper; for a
regression target, the value times a learned vector. With `label_dim: null` the raw estimate is fed
instead. A task's own `inputs_from` still works: its head reads h_k concatenated with the sources'
estimates (the sources must come earlier in the order).

**Successive regularisation.** With δ = `successive_regularization` > 0, `penalty()` returns

```text
R = δ ‖θ_s − θ_s′‖²
```

where θ_s are the shared parameters (every parameter the losses of two or more tasks reach: the trunk,
and the layers and label embeddings below the last task's; see the roles below) and θ_s′ a snapshot of
them. The snapshot is taken at the first training step and then every `snapshot_every` steps, counted in
the calls of `penalty()` in training mode (the training step makes one per optimisation step), before the
step's term is computed: so R = 0 on a snapshot's own step, and afterwards R pulls θ_s back toward where it
stood at the snapshot. The snapshot is a set of buffers (`snapshot.*`) and the step count the module's extra
state, so checkpoints carry both and a resumed run regularises exactly as an uninterrupted one.

**Config keys.**

- `order`: the tasks, lowest layer first (every task exactly once); null: the order the data set
  declares them in.
- `hidden`: the width of every task layer.
- `activation`: the layers' activation, a torch.nn class name.
- `label_dim`: width of the label embeddings E_k; null feeds the raw estimate.
- `successive_regularization`: δ ≥ 0; 0 turns the term off (`penalty()` returns None).
- `snapshot_every`: steps between snapshots of θ_s (≥ 1).

**Parameter roles.** Task τ_k's layer feeds its own head and, through h_k, every later layer: the losses of
τ_k … τ_K−1 reach it. A parameter is owned by a task only when that task's loss alone reaches it, so the
last task's layer (and the label embedding feeding it, reached by the last task alone) is part `trunk`
owned by that task, and every other layer and label embedding is part `trunk` shared (task None): gradient
methods differentiate them per task, and the rows of tasks below them are zero. The trunk is part `trunk`,
shared by all tasks. Heads are part `head`, owned by their task: the stop-gradient on the estimates keeps
later tasks' losses out of earlier heads. There is no shared representation (`has_representation` is false):
task k reads h_k, not z, and the shared layers lie above z.

**Departures from the paper.** The paper's layers are bi-LSTMs over words, here an MLP block over the
trunk's features. The paper trains layer by layer, one task per epoch in order, taking the snapshot θ_s′
after the previous task's epoch; mtlrun trains all tasks jointly every step, so the snapshot is instead
refreshed every `snapshot_every` steps and θ_s is every shared parameter rather than the layers below the
task being trained. The paper lets a higher task's loss reach a lower task's classifier through the label
embeddings; here the estimate is a stop-gradient (as `inputs_from` does by default), so every head stays
owned by its task while later tasks still reach earlier layers through h_k. The paper's task-specific
features (character n-grams, the dependency parser's pairwise scoring) and its weight decay on all
parameters are left to the encoder, heads and optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.encoder.layers import mlp
from mtlrun.errors import ConfigError, check_int
from mtlrun.tasks import Task


def task_order(order: Sequence[str] | None, tasks: Mapping[str, Task]) -> list[str]:
    """The tasks in `order` (null: declared order), checked: every task exactly once, sources of
    `inputs_from` before their readers."""
    if order is None:
        names = list(tasks)
    elif isinstance(order, str) or not isinstance(order, Sequence):
        raise ConfigError(f"architecture.order: expected a list of task names or null, got {order!r}")
    else:
        names = [str(name) for name in order]
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise ConfigError(f"architecture.order: unknown task(s) {unknown}; the tasks are {', '.join(tasks)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"architecture.order: {repeated} listed more than once; list every task once")
    missing = [name for name in tasks if name not in names]
    if missing:
        raise ConfigError(
            f"architecture.order: missing task(s) {missing}; list every task once (or null for the declared order)"
        )
    for k, name in enumerate(names):
        later = [src for src in tasks[name].inputs_from if names.index(src) > k]
        if later:
            raise ConfigError(
                f"architecture.order: task '{name}' reads the estimate of {later} (tasks.{name}.inputs_from), "
                "so those must come before it in the order"
            )
    return names


class JointManyTask(MTLModel):
    """A shared trunk, then one layer per task stacked in the task order, each reading the trunk's
    features, the previous layer and the previous task's estimate (module docstring)."""

    has_representation = False

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        order: Sequence[str] | None = None,
        hidden: int = 64,
        activation: str = "ReLU",
        label_dim: int | None = 16,
        successive_regularization: float = 1e-2,
        snapshot_every: int = 100,
    ) -> None:
        super().__init__(tasks)
        check_int("architecture.hidden", hidden, 1)
        check_int("architecture.label_dim", label_dim, 1, allow_none=True)
        check_int("architecture.snapshot_every", snapshot_every, 1)
        delta = successive_regularization
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not delta >= 0:
            raise ConfigError(
                f"architecture.successive_regularization: expected a number >= 0 (0 = off), got {delta!r}"
            )
        self.order = task_order(order, self.tasks)
        self.delta = float(delta)
        self.snapshot_every = snapshot_every
        self.trunk = encoder()
        width = self.trunk.out_dim
        self.layers = nn.ModuleDict()
        self.label_embeddings = nn.ModuleDict()  # E_k, for every task but the last in the order
        for k, name in enumerate(self.order):
            extra = 0
            if k > 0:
                previous = self.tasks[self.order[k - 1]]
                extra = hidden + (previous.feature_dim if label_dim is None else label_dim)
            self.layers[name] = mlp(width + extra, [hidden], activation, 0.0)
            if k < len(self.order) - 1 and label_dim is not None:
                self.label_embeddings[name] = nn.Linear(self.tasks[name].feature_dim, label_dim, bias=False)
        self.heads = TaskHeads(hidden, self.tasks, heads)
        self._penalty_calls = 0  # training-mode calls of penalty(): the step count the snapshots follow
        roles = self.parameter_roles()
        self._regularized = [n for n, r in roles.items() if r.task is None and r.part == "trunk"]
        self.snapshot = nn.Module()  # θ_s′, one buffer per tensor of θ_s ('.' in its name becomes '__')
        if self.delta > 0:
            for name, p in self.regularized_parameters().items():
                self.snapshot.register_buffer(name.replace(".", "__"), p.detach().clone())

    def forward(self, batch: dict) -> dict[str, Tensor]:
        z = self.trunk(batch["x"])
        out: dict[str, Tensor] = {}
        h: Tensor | None = None
        for k, name in enumerate(self.order):
            if k == 0:
                h = self.layers[name](z)
            else:
                previous = self.order[k - 1]
                estimate = self.tasks[previous].estimate(out[previous]).detach().to(z.dtype)
                if previous in self.label_embeddings:
                    estimate = self.label_embeddings[previous](estimate)
                h = self.layers[name](torch.cat([z, h, estimate], dim=-1))
            out[name] = self.heads.predict(name, h, out)
        return {name: out[name] for name in self.tasks}

    def _reached_by(self, k: int) -> str | None:
        """The owner of a parameter that the losses of tasks k … K−1 reach: the last task when k is the last
        index, else None (shared)."""
        return self.order[-1] if k == len(self.order) - 1 else None

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"trunk": ParamRole("trunk")}
        for k, name in enumerate(self.order):
            prefixes[f"layers.{name}"] = ParamRole("trunk", self._reached_by(k))
            # E_k feeds layer k + 1: the losses of tasks k + 1 … K − 1 reach it
            prefixes[f"label_embeddings.{name}"] = ParamRole("trunk", self._reached_by(k + 1))
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The trunk's last layer with parameters (GradNorm's W): z is the one tensor every task reads."""
        last: list[nn.Parameter] = []
        for module in self.trunk.modules():
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                last = params
        return last

    # ------------------------------------------------------------------------------ successive regularisation
    def regularized_parameters(self) -> dict[str, nn.Parameter]:
        """θ_s: the parameters no single task owns, by name."""
        params = dict(self.named_parameters())
        return {name: params[name] for name in self._regularized}

    def take_snapshot(self) -> None:
        """θ_s′ ← θ_s."""
        with torch.no_grad():
            for name, p in self.regularized_parameters().items():
                getattr(self.snapshot, name.replace(".", "__")).copy_(p)

    def successive_term(self) -> Tensor:
        """‖θ_s − θ_s′‖², without δ."""
        terms = [
            (p - getattr(self.snapshot, name.replace(".", "__"))).pow(2).sum()
            for name, p in self.regularized_parameters().items()
        ]
        return torch.stack(terms).sum() if terms else next(self.parameters()).new_zeros(())

    def penalty(self) -> Tensor | None:
        """δ ‖θ_s − θ_s′‖²; in training mode, first refresh the snapshot when it is due (module docstring)."""
        if self.delta == 0:
            return None
        if self.training:
            if self._penalty_calls % self.snapshot_every == 0:
                self.take_snapshot()
            self._penalty_calls += 1
        return self.delta * self.successive_term()

    def get_extra_state(self) -> dict:
        return {"penalty_calls": self._penalty_calls}

    def set_extra_state(self, state: dict) -> None:
        self._penalty_calls = int(state["penalty_calls"])
