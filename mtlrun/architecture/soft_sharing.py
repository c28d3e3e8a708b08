"""Soft parameter sharing: one full encoder column per task, nothing shared by identity; a penalty ties the
corresponding layers of the columns together.

References: Duong, Cohn, Bird & Cook (2015), "Low Resource Dependency Parsing: Cross-lingual Parameter
Sharing in a Neural Network Parser" (ACL), which adds an L2 distance between two parsers' weights to the
loss; Yang & Hospedales (2017), "Trace Norm Regularised Deep Multi-Task Learning" (ICLR workshop), which
stacks the tasks' weights of a layer into one tensor and penalises its tensor trace norm.

For every parameter tensor of every tied encoder stage, let W_1..W_T be the T columns' copies (task order),
W̄ their mean, S = stack(W_1..W_T) on a new last axis (the task axis) and λ = ``strength``:

* ``l2``          λ Σ_t ||W_t − W̄||²      (distance of each column to the columns' mean)
  ``pairwise``    λ Σ_{s<t} ||W_s − W_t||²  (= T times the above; for T = 2 exactly Duong's ||W_1 − W_2||²)
* ``trace_norm``  λ ||S_(last)||_*  with S_(last) = S reshaped to [numel, T] ("last-axis flattening"; the
                  nuclear norm ||·||_* sums the singular values, so the penalty prefers columns spanning a
                  low-dimensional subspace: rank 1 when the columns are proportional)
* ``tucker``      λ (1/N) Σ_k ||S_(k)||_*  over the N modes k of S, S_(k) its mode-k unfolding
                  [size_k, rest] (Yang & Hospedales' Tucker variant, with equal mode weights 1/N)

summed over the tied parameter tensors. The mean form of L2 is the default because it costs O(T) and its
gradient 2λ(W_t − W̄) pulls each column toward the consensus; for T = 2 it is half the pairwise form.
Every parameter of a tied stage is tied (weights, biases, batch-norm scales and shifts; running
statistics are buffers and stay per column); the heads are never tied: they are the task-specific output
layers, as in both papers. ``tied_stages`` picks the stages: ``all`` (default, as both papers tie every
hidden layer) or a list of indices into the encoder's ``stages`` (negative indices count from the end).

With ``strength: 0`` the model is the single-task baseline (same construction order, so the same seed
gives the same weights). The penalty involves every column, but no task's loss does: the loss of task t
reaches only column t and head t, so each column is owned by its task (part ``trunk``, optimizer group
``shared``, like single_task's columns), and gradient-based weighting methods see no shared parameter
(they fall back to the plain sum, plus the penalty, which the runner never balances).

There is no shared representation: every task reads its own column (``has_representation = False``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

PENALTIES = ("l2", "trace_norm", "tucker")


def select_stages(spec: str | Sequence[int], num_stages: int, key: str) -> list[int]:
    """Sorted stage indices from ``"all"`` or a list of indices (negative ones count from the end)."""
    if isinstance(spec, str):
        if spec != "all":
            raise ConfigError(f"{key}: expected 'all' or a list of stage indices, got '{spec}'")
        return list(range(num_stages))
    chosen = set()
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_stages <= index < num_stages:
            raise ConfigError(
                f"{key}: {index!r} is not a stage of this encoder, which has {num_stages} stages "
                f"(0..{num_stages - 1}, or negative indices from the end)"
            )
        chosen.add(index % num_stages)
    return sorted(chosen)


def encoder_stages(encoder: nn.Module, key: str) -> nn.ModuleList:
    stages = getattr(encoder, "stages", None)
    if not isinstance(stages, nn.ModuleList) or len(stages) == 0:
        raise ConfigError(
            f"{key}: {type(encoder).__name__} exposes no `stages`; column designs need an encoder built "
            "from stages (encoder=mlp or encoder=cnn)"
        )
    return stages


def l2_spread(weights: Sequence[Tensor], pairwise: bool = False) -> Tensor:
    """Σ_t ||W_t − W̄||², or with ``pairwise`` Σ_{s<t} ||W_s − W_t||² (which is T times as large)."""
    stacked = torch.stack(list(weights))
    spread = (stacked - stacked.mean(0)).pow(2).sum()
    return spread * len(weights) if pairwise else spread


def laf_trace_norm(weights: Sequence[Tensor]) -> Tensor:
    """Nuclear norm of the T tensors stacked on a last (task) axis and flattened to [numel, T]."""
    stacked = torch.stack(list(weights), dim=-1)
    return torch.linalg.matrix_norm(stacked.reshape(-1, len(weights)), ord="nuc")


def tucker_trace_norm(weights: Sequence[Tensor]) -> Tensor:
    """Mean over the modes of the stacked tensor of the nuclear norms of its mode unfoldings."""
    stacked = torch.stack(list(weights), dim=-1)
    norms = [
        torch.linalg.matrix_norm(stacked.movedim(k, 0).reshape(stacked.shape[k], -1), ord="nuc")
        for k in range(stacked.ndim)
    ]
    return torch.stack(norms).mean()


class SoftSharing(MTLModel):
    """One encoder column and one head per task; a penalty on the columns' tied stages (module docstring).
    No shared representation: each task reads its own column."""

    has_representation = False

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        penalty: str = "l2",
        strength: float = 1e-2,
        tied_stages: str | list[int] = "all",
        pairwise: bool = False,
    ) -> None:
        super().__init__(tasks)
        check_choice("architecture.penalty", penalty, PENALTIES)
        if not strength >= 0:
            raise ConfigError(f"architecture.strength: the penalty's weight must be >= 0, got {strength}")
        self.penalty_kind = penalty
        self.strength = float(strength)
        self.pairwise = pairwise
        self.columns = nn.ModuleDict({name: encoder() for name in self.tasks})
        first = next(iter(self.columns.values()))
        num_stages = len(encoder_stages(first, "architecture"))
        self.tied_stages = select_stages(tied_stages, num_stages, "architecture.tied_stages")
        self.heads = TaskHeads(first.out_dim, self.tasks, heads)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return self.heads({name: column(batch["x"]) for name, column in self.columns.items()})

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {f"columns.{t}": ParamRole("trunk", t) for t in self.tasks}
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)

    def tied_parameters(self) -> list[list[nn.Parameter]]:
        """For each parameter tensor of each tied stage, the T columns' copies in task order."""
        columns = list(self.columns.values())
        groups = []
        for index in self.tied_stages:
            named = [dict(column.stages[index].named_parameters()) for column in columns]
            groups += [[params[name] for params in named] for name in named[0]]
        return groups

    def tie_term(self) -> Tensor:
        """The penalty without its strength λ."""
        groups = self.tied_parameters()
        if not groups:
            return next(self.parameters()).new_zeros(())
        if self.penalty_kind == "l2":
            terms = [l2_spread(g, self.pairwise) for g in groups]
        elif self.penalty_kind == "trace_norm":
            terms = [laf_trace_norm(g) for g in groups]
        else:
            terms = [tucker_trace_norm(g) for g in groups]
        return torch.stack(terms).sum()

    def penalty(self) -> Tensor:
        if self.strength == 0:  # the single-task baseline: skip the work, still log a 0
            return next(self.parameters()).new_zeros(())
        return self.strength * self.tie_term()
