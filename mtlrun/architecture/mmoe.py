"""Multi-gate Mixture-of-Experts, MMoE (Ma, Zhao, Yi, Chen, Hong & Chi 2018, "Modeling Task Relationships
in Multi-task Learning with Multi-gate Mixture-of-Experts", KDD), and its one-gate baseline OMoE
(`architecture=omoe`, which sets `shared_gate: true`).

**The gates.** E experts f_1 … f_E, each a fresh encoder from the factory, read the input x. Task t has
a gate

```text
w_t(x) = softmax(W_t · u(x))
```

with W_t an E×d matrix and no bias, as in the paper's gates. Task t's tower (its head) reads the
mixture h_t(x) = Σ_e w_t(x)[e] · f_e(x), so y_t = tower_t(h_t(x)). OMoE has a single gate w(x) for
every task, so every tower reads the same mixture h(x).

**Config keys.**

- `num_experts`: E, at least 1.
- `shared_gate`: `true` for OMoE's single gate, `false` for one gate per task (MMoE).
- `gate_input`: what the gates read, u(x): `input`, x flattened (the paper; d is its size, taken from
  the encoder's `in_shape` because the model is built before it sees data), or `experts`, the expert
  outputs concatenated [f_1(x), …, f_E(x)] (d = E·D): gates that read learned features rather than
  raw pixels.

**Parameter roles.** The experts: part `trunk`, shared by all tasks. Task t's gate: part `mixing`,
owned by task t (only its loss reaches it). OMoE's single gate: part `mixing`, shared. The towers: part
`head`, owned by their task.

**Shared representation** (the tensor through which every shared parameter reaches the losses). MMoE:
the expert outputs [N, E, D], flattened expert-major to [N, E·D] (columns e·D … (e+1)·D − 1 are expert
e) because representations are [N, K] by contract; the gates mix views of that very tensor, so
gradients with respect to it (`weighting.grad_source=representation`) are exact. OMoE: the mixture h(x)
[N, D] that every tower reads (like hard sharing's trunk output); the shared gate lies below it.

**Diagnostics.** During evaluation forwards each task's gate weights are averaged over the examples;
the runner writes them as rows `<task>, expert_usage/<e>` (they sum to 1 per task), and the sums reset
when read. `gate_weights` holds the last forward's weights, {task: [N, E]}.

**Departures from the paper.** The experts are whatever encoder the config injects (CNN, MLP or
tabular) rather than the paper's feed-forward experts, and the towers are the configurable task heads.
`gate_input: experts` is an addition.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import InputFeatures, UsageMeter, mix
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

GATE_INPUTS = ("input", "experts")


class MMoE(MTLModel):
    """Shared experts, one softmax gate per task or one for all (OMoE), the task heads as towers (module
    docstring)."""

    has_representation = True

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        num_experts: int = 8,
        shared_gate: bool = False,
        gate_input: str = "input",
    ) -> None:
        super().__init__(tasks)
        if num_experts < 1:
            raise ConfigError(f"architecture.num_experts: need at least one expert; got {num_experts}")
        check_choice("architecture.gate_input", gate_input, GATE_INPUTS)
        experts = [encoder() for _ in range(num_experts)]
        dim = experts[0].out_dim
        self.num_experts = num_experts
        self.shared_gate = shared_gate
        self.input_features = InputFeatures(experts[0]) if gate_input == "input" else None
        gate_dim = self.input_features.out_dim if self.input_features is not None else num_experts * dim
        # OMoE's gate is registered before the experts, so the last shared module (GradNorm's W) is an expert
        if shared_gate:
            self.gate = nn.Linear(gate_dim, num_experts, bias=False)
        else:
            self.gates = nn.ModuleDict({t: nn.Linear(gate_dim, num_experts, bias=False) for t in self.tasks})
        self.experts = nn.ModuleList(experts)
        self.heads = TaskHeads(dim, self.tasks, heads)
        self.gate_weights: dict[str, Tensor] = {}
        self._usage = UsageMeter()
        self._expert_names = [str(e) for e in range(num_experts)]

    def _gate_features(self, x: Tensor, experts: Tensor) -> Tensor:
        return self.input_features(x) if self.input_features is not None else experts

    def forward(self, batch: dict) -> dict[str, Tensor]:
        x = batch["x"]
        outputs = [expert(x) for expert in self.experts]
        if self.shared_gate:
            stacked = torch.stack(outputs, dim=1)  # [N, E, D]
            weights = self.gate(self._gate_features(x, stacked.flatten(1))).softmax(-1)
            mixed = mix(weights, stacked)
            self.shared_representation = mixed
            self.gate_weights = dict.fromkeys(self.tasks, weights)
            features: Tensor | dict[str, Tensor] = mixed
        else:
            flat = torch.cat(outputs, dim=1)  # [N, E * D], expert-major
            self.shared_representation = flat
            stacked = flat.unflatten(1, (self.num_experts, -1))  # a view of the representation
            u = self._gate_features(x, flat)
            self.gate_weights = {t: gate(u).softmax(-1) for t, gate in self.gates.items()}
            features = {t: mix(w, stacked) for t, w in self.gate_weights.items()}
        if not self.training:
            for task, weights in self.gate_weights.items():
                self._usage.add(task, "expert_usage/", self._expert_names, weights)
        return self.heads(features)

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"experts": ParamRole("trunk"), "gate": ParamRole("mixing")}
        prefixes |= {f"gates.{t}": ParamRole("mixing", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Mean gate weight of each expert per task over the evaluation forwards since the last call."""
        return self._usage.pop()
