"""Multi-gate Mixture-of-Experts (MMoE; Ma et al., KDD 2018) and its one-gate variant (OMoE).

E experts f_1..f_E, each a fresh encoder from the factory, read the input x. Task t has a gate

    w_t(x) = softmax(W_t u(x)),   W_t in R^{E x d}        (no bias, as in the paper's eq. 8)

and its tower (the task head) reads the mixture h_t(x) = sum_e w_t(x)_e f_e(x), so y_t = tower_t(h_t(x)).
u(x), the gate's input (``gate_input``), is

* ``input`` (the paper): x flattened, d = its size. The model is built before it sees data, so d comes from
  the encoder's ``in_shape`` (see :class:`InputFeatures`).
* ``experts``: the expert outputs concatenated, [f_1(x), ..., f_E(x)] (d = E * D): gates that read learned
  features rather than raw pixels.

OMoE (``shared_gate: true``) has a single gate w(x) for every task, so every tower reads the same mixture.

Roles: the experts are the shared trunk; the gate of task t is ``mixing`` owned by t (only task t's loss
reaches it); OMoE's single gate is ``mixing`` shared by all; the towers are the heads.

Shared representation (the tensor through which every shared parameter reaches the losses):

* MMoE: the expert outputs [N, E, D], flattened to [N, E * D] (expert-major: columns e*D..(e+1)*D-1 are
  expert e) because representations are [N, K] by contract. The gates mix views of that very tensor, so
  gradients with respect to it (``weighting.grad_source=representation``) are exact.
* OMoE: the mixture h(x) [N, D], which every tower reads (like hard sharing's trunk output); the shared gate
  lies below it.

Diagnostics: during evaluation forwards, each task's gate weights are averaged over the examples; the
runner writes them as rows ``<task>, expert_usage/<e>`` (they sum to 1 per task) and the sums reset when
read. ``gate_weights`` holds the last forward's weights, {task: [N, E]}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

GATE_INPUTS = ("input", "experts")


class InputFeatures(nn.Module):
    """The raw input as a gate reads it: x flattened to [N, d], with d from the encoder's ``in_shape``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        shape = getattr(encoder, "in_shape", None)
        if shape is None:
            raise ConfigError(
                f"architecture.gate_input=input: {type(encoder).__name__} does not say its input shape "
                "(in_shape); use gate_input=experts"
            )
        self.shape = tuple(int(s) for s in shape)
        self.out_dim = math.prod(self.shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def mix(weights: Tensor, experts: Tensor) -> Tensor:
    """sum_e weights[n, e] * experts[n, e, :]: [N, E] x [N, E, D] -> [N, D]."""
    return torch.bmm(weights.unsqueeze(1).to(experts.dtype), experts).squeeze(1)


class UsageMeter:
    """Sums gate weights over evaluation examples; ``pop`` returns the mean weight of each expert and resets."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], Tensor] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._names: dict[tuple[str, str], list[str]] = {}

    def add(self, row: str, prefix: str, names: Sequence[str], weights: Tensor) -> None:
        key = (row, prefix)
        total = weights.detach().float().sum(0)
        self._sums[key] = total + self._sums[key] if key in self._sums else total
        self._counts[key] = self._counts.get(key, 0) + weights.shape[0]
        self._names[key] = list(names)

    def pop(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (row, prefix), total in self._sums.items():
            means = (total / max(self._counts[(row, prefix)], 1)).tolist()
            names = self._names[(row, prefix)]
            out.setdefault(row, {}).update({f"{prefix}{n}": m for n, m in zip(names, means, strict=True)})
        self._sums, self._counts, self._names = {}, {}, {}
        return out


class MMoE(MTLModel):
    """E shared experts, one softmax gate per task (or one for all: OMoE), the task heads as towers."""

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
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Mean gate weight of each expert per task over the evaluation forwards since the last call."""
        return self._usage.pop()
