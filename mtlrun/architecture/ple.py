"""Progressive Layered Extraction, PLE (Tang, Liu, Zhao & Gong 2020, "Progressive Layered Extraction
(PLE): A Novel Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys), and its
one-level form, Customized Gate Control, CGC (`architecture=cgc`, which sets `levels: 1`).

**Extraction.** Level j (1 … L) has, for each task t, m_t task-specific experts E_j,t,1 … E_j,t,m_t,
and m_s shared experts E_j,s,1 … E_j,s,m_s. Task t's gate mixes its own experts and the shared ones:

```text
S_j,t = [E_j,t,1(a_j,t), …, E_j,t,m_t(a_j,t), E_j,s,1(a_j,s), …, E_j,s,m_s(a_j,s)]
w_j,t = softmax(W_j,t · a_j,t)
g_j,t = Σ_i w_j,t[i] · S_j,t[i]
```

At every level but the last, a shared gate g_j,s = softmax(W_j,s · a_j,s) · [every expert of level j]
mixes all the level's experts, task-specific and shared, to feed the next level's shared experts. The
inputs are a_1,t = a_1,s = x at the first level (the experts read x, the gates read x flattened), and
a_j,t = g_j−1,t and a_j,s = g_j−1,s above it: each gate and expert reads the previous level's output
of its own branch. Task t's tower (its head) reads g_L,t. Gates have no bias.

**Config keys.**

- `levels`: L, at least 1; 1 is CGC, which has no shared gate.
- `specific_experts`: m_t, the task-specific experts per task and level (≥ 0): one count for every
  task, or a mapping {task: count} (tasks it leaves out get 1).
- `shared_experts`: m_s, the shared experts per level, at least 1.
- `hidden`: the hidden widths of the experts above the first level, the last being their output
  width; needed when L ≥ 2, unused by CGC.
- `activation`: the `torch.nn` activation class of those upper-level experts.

Experts of level 1 are encoders from the factory; the experts above are MLPs on the previous level's
width, since the encoder's input shape no longer applies there.

**Parameter roles** follow what each loss actually reaches. Task t's experts at a level j < L feed
that level's shared gate, hence the next level's shared experts, hence every task: below the last
level they are shared (part `trunk`, no task), although the design dedicates them to t. Only task t's
loss reaches its experts of the last level (part `trunk`, owned by t), its gates of the last two levels
(part `mixing`, owned by t: the gate of level L − 1 feeds only t's level-L experts and gate) and its
tower (part `head`). The gates of lower levels and the shared gates are shared `mixing`; the shared
experts are shared `trunk`. For CGC this is the paper's reading: task experts and gates belong to
their task.

**Shared representation.** The tensors that shared parameters compute and task-owned modules read:
the last level's shared-expert outputs and, when L ≥ 2, every expert output of level L − 1 and (L ≥ 3)
the inputs of level L − 1's task gates, flattened and concatenated to [N, K]. Task-owned modules read
views of that tensor, so gradients with respect to it are exact.

**Diagnostics.** Per task and level, the mean gate weight of each of its experts over the evaluation
forwards, rows `<task>, expert_usage/<level>/own<i>` and `…/shared<i>` (each level sums to 1), and the
shared gates' usage under `model, shared_gate_usage/<level>/<task>_own<i>` and `…/shared<i>`.

**Departures from the paper.** The first level's experts are the injected encoder (CNN, MLP or
tabular) and the experts above are MLPs of one configurable shape, where the paper's experts are
feed-forward networks throughout.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import InputFeatures, UsageMeter, mix
from mtlrun.encoder.layers import mlp
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


def cut(tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One [N, K] tensor made of `tensors` (each [N, ...], flattened and concatenated), and views of it
    shaped like each input: computation that reads the views depends on the inputs only through it."""
    flat = torch.cat([t.flatten(1) for t in tensors], dim=1)
    pieces = flat.split([math.prod(t.shape[1:]) for t in tensors], dim=1)
    return flat, [p.reshape(t.shape) for p, t in zip(pieces, tensors, strict=True)]


class CGCLevel(nn.Module):
    """One extraction level: task-specific experts, shared experts, one gate per task, and (except at the
    last level) a shared gate over all experts."""

    def __init__(
        self,
        make_expert: Callable[[], nn.Module],
        counts: Mapping[str, int],
        shared: int,
        gate_dim: int,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.specific = nn.ModuleDict(
            {t: nn.ModuleList(make_expert() for _ in range(m)) for t, m in counts.items()}
        )
        self.shared = nn.ModuleList(make_expert() for _ in range(shared))
        self.gates = nn.ModuleDict(
            {t: nn.Linear(gate_dim, m + shared, bias=False) for t, m in counts.items()}
        )
        total = sum(counts.values()) + shared
        self.shared_gate = nn.Linear(gate_dim, total, bias=False) if shared_gate else None


class PLE(MTLModel):
    """`levels` stacked extraction levels of task-specific and shared experts; the task heads are the
    towers (module docstring)."""

    has_representation = True

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        levels: int = 2,
        specific_experts: int | dict[str, int] = 1,
        shared_experts: int = 1,
        hidden: list[int] | tuple[int, ...] = (64,),
        activation: str = "ReLU",
    ) -> None:
        super().__init__(tasks)
        if levels < 1:
            raise ConfigError(f"architecture.levels: need at least one level; got {levels}")
        if shared_experts < 1:
            raise ConfigError(
                f"architecture.shared_experts: need at least one shared expert; got {shared_experts}"
            )
        counts = self._counts(specific_experts)
        hidden = list(hidden or [])
        if levels > 1 and not hidden:
            raise ConfigError("architecture.hidden: levels above the first need expert widths (e.g. [64])")

        first = encoder()
        self.input_features = InputFeatures(first)
        spare = [first]  # the probe encoder becomes the first expert

        def from_factory() -> nn.Module:
            return spare.pop() if spare else encoder()

        width, gate_dim = first.out_dim, self.input_features.out_dim
        self.levels = nn.ModuleList()
        for j in range(levels):
            make = from_factory if j == 0 else functools.partial(mlp, width, hidden, activation, 0.0)
            self.levels.append(CGCLevel(make, counts, shared_experts, gate_dim, shared_gate=j < levels - 1))
            width = width if j == 0 else hidden[-1]
            gate_dim = width  # gates above the first level read the previous level's gate outputs
        self.heads = TaskHeads(width, self.tasks, heads)
        self.counts, self.num_shared = counts, shared_experts
        self.gate_weights: dict[tuple[str | None, int], Tensor] = {}  # (task or None: shared gate, level)
        self._usage = UsageMeter()

    def _counts(self, specific: int | Mapping[str, int]) -> dict[str, int]:
        if isinstance(specific, Mapping):
            unknown = sorted(set(specific) - set(self.tasks))
            if unknown:
                raise ConfigError(
                    f"architecture.specific_experts: unknown task(s) {unknown}; tasks: {list(self.tasks)}"
                )
            counts = {t: int(specific.get(t, 1)) for t in self.tasks}
        else:
            counts = dict.fromkeys(self.tasks, int(specific))
        bad = {t: m for t, m in counts.items() if m < 0}
        if bad:
            raise ConfigError(f"architecture.specific_experts: counts must be >= 0; got {bad}")
        return counts

    # ------------------------------------------------------------------------------------------ forward
    def _gate(
        self, gate: nn.Linear, gate_in: Tensor, experts: list[Tensor], key: tuple[str | None, int]
    ) -> Tensor:
        weights = gate(gate_in).softmax(-1)
        self.gate_weights[key] = weights
        return mix(weights, torch.stack(experts, dim=1))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        x = batch["x"]
        u = self.input_features(x)
        tasks, last = list(self.tasks), len(self.levels) - 1
        self.gate_weights = {}
        task_in, task_gate_in = dict.fromkeys(tasks, x), dict.fromkeys(tasks, u)
        shared_in, shared_gate_in = x, u
        deferred: tuple[dict[str, list[Tensor]], list[Tensor]] | None = None

        # levels with a shared gate (all but the last): shared modules, except the task gates of level L-1
        for j, level in enumerate(self.levels[:-1]):
            spec = {t: [e(task_in[t]) for e in level.specific[t]] for t in tasks}
            shar = [e(shared_in) for e in level.shared]
            every = [*itertools.chain.from_iterable(spec.values()), *shar]
            shared_out = self._gate(level.shared_gate, shared_gate_in, every, (None, j))
            if j < last - 1:
                task_out = {
                    t: self._gate(level.gates[t], task_gate_in[t], spec[t] + shar, (t, j)) for t in tasks
                }
                task_in = task_gate_in = task_out
            else:
                deferred = (spec, shar)
            shared_in = shared_gate_in = shared_out
        top = self.levels[-1]
        top_shared = [e(shared_in) for e in top.shared]

        # the representation: what task-owned modules read from shared computation
        parts = list(top_shared)
        if deferred is not None:
            spec, shar = deferred
            parts += [*itertools.chain.from_iterable(spec[t] for t in tasks), *shar]
            if last >= 2:
                parts += [task_gate_in[t] for t in tasks]
        self.shared_representation, views = cut(parts)
        it = iter(views)
        top_shared = [next(it) for _ in top_shared]
        if deferred is not None:  # the task gates of level L-1, on views of the representation
            spec = {t: [next(it) for _ in spec[t]] for t in tasks}
            shar = [next(it) for _ in shar]
            if last >= 2:
                task_gate_in = {t: next(it) for t in tasks}
            level = self.levels[last - 1]
            task_out = {
                t: self._gate(level.gates[t], task_gate_in[t], spec[t] + shar, (t, last - 1)) for t in tasks
            }
            task_in = task_gate_in = task_out

        features = {}
        for t in tasks:
            own = [e(task_in[t]) for e in top.specific[t]]
            features[t] = self._gate(top.gates[t], task_gate_in[t], own + top_shared, (t, last))
        if not self.training:
            self._record_usage()
        return self.heads(features)

    def _record_usage(self) -> None:
        shared = [f"shared{i}" for i in range(self.num_shared)]
        for (row, j), weights in self.gate_weights.items():
            if row is None:  # a shared gate
                names = [f"{t}_own{i}" for t, m in self.counts.items() for i in range(m)] + shared
                self._usage.add("model", f"shared_gate_usage/{j + 1}/", names, weights)
            else:
                names = [f"own{i}" for i in range(self.counts[row])] + shared
                self._usage.add(row, f"expert_usage/{j + 1}/", names, weights)

    # ------------------------------------------------------------------------------------------- roles
    def parameter_roles(self) -> dict[str, ParamRole]:
        last = len(self.levels) - 1
        prefixes = self.heads.roles("heads")
        for j in range(len(self.levels)):
            prefixes[f"levels.{j}.shared"] = ParamRole("trunk")
            prefixes[f"levels.{j}.shared_gate"] = ParamRole("mixing")
            for t in self.tasks:
                prefixes[f"levels.{j}.specific.{t}"] = ParamRole("trunk", t if j == last else None)
                prefixes[f"levels.{j}.gates.{t}"] = ParamRole("mixing", t if j >= last - 1 else None)
        return self.roles_by_prefix(prefixes)

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Mean gate weight of each expert, per task and level (and per shared gate), since the last call."""
        return self._usage.pop()
