"""Soft parameter sharing: one encoder column and one head per task, as in `SingleTask`, with nothing
shared by identity; a penalty added to the objective pulls corresponding layers of the columns together.

After Duong, Cohn, Bird & Cook (2015), "Low Resource Dependency Parsing: Cross-lingual Parameter
Sharing in a Neural Network Parser" (ACL), which adds an L2 distance between two parsers' weights to
the loss, and Yang & Hospedales (2017), "Trace Norm Regularised Deep Multi-Task Learning" (ICLR
workshop), which stacks the tasks' weights of a layer into one tensor and penalises its trace norm.

**The penalty.** For every parameter tensor of every tied encoder stage, let W_1 … W_T be the T
columns' copies (in task order), W̄ their mean, S = stack(W_1 … W_T) along a new last axis (the task
axis) and λ = `strength`. Summed over the tied parameter tensors, the penalty is

- `l2`: λ Σ_t ‖W_t − W̄‖², each column's squared distance to the columns' mean; with `pairwise`,
  λ Σ_(s < t) ‖W_s − W_t‖² over the pairs of columns, which is T times as large (for T = 2, Duong's
  ‖W_1 − W_2‖²);
- `trace_norm`: λ ‖S_(last)‖∗, with S_(last) the stack reshaped to [numel, T] (last-axis
  flattening) and ‖·‖∗ the nuclear norm, the sum of the singular values: it prefers columns that span
  a low-dimensional subspace (rank 1 when they are proportional);
- `tucker`: λ (1/N) Σ_k ‖S_(k)‖∗ over the N modes k of S, S_(k) being its mode-k unfolding
  [size_k, rest].

The mean form of `l2` costs O(T) and its gradient 2λ(W_t − W̄) pulls each column toward the
consensus. Every parameter of a tied stage is tied (weights, biases, batch-norm scales and shifts);
running statistics are buffers and stay per column. The heads are never tied: they are the
task-specific output layers, as in both papers. `penalty()` returns the term; the runner adds it to
the objective, never balances it, and logs it.

**Config keys.**

- `penalty`: which of the three terms above.
- `strength`: λ, ≥ 0. With λ = 0 the model is the single-task baseline: it is built in the same
  order as `SingleTask`, so the same seed gives the same weights.
- `tied_stages`: `all`, or a list of indices into the encoder's `stages` (negative ones count from
  the end): the stages whose parameters the penalty ties.
- `pairwise`: `l2` only; the sum over pairs of columns instead of the distances to the mean.

**Parameter roles.** The penalty involves every column, but no task's loss does: task t's loss
reaches only column t and head t. So column t is part `trunk` owned by task t (optimizer group
`shared`, as for `SingleTask`), head t is part `head` owned by task t, and gradient-based weighting
methods see no shared parameter (they fall back to the plain sum of the losses, plus the penalty).
There is no shared representation: each task reads its own column.

**Departures from the papers.** Duong et al. tie two networks with the pairwise distance; the mean
form generalises it to T columns (for T = 2 it is half the pairwise form, which `pairwise` restores).
The `tucker` term weighs every mode equally (1/N), and Yang & Hospedales' tensor-train variant is not
offered. Tasks here share one input, where Duong et al. tie parsers of two languages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory
from mtlrun.architecture.single_task import SingleTask
from mtlrun.encoder.stages import encoder_stages, select_stages
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

PENALTIES = ("l2", "trace_norm", "tucker")


def l2_spread(weights: Sequence[Tensor], pairwise: bool = False) -> Tensor:
    """Σ_t ‖W_t − W̄‖², or with `pairwise` the sum over pairs s < t of ‖W_s − W_t‖² (T times as large)."""
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


class SoftSharing(SingleTask):
    """One column and one head per task, as `SingleTask`, plus a penalty that ties the columns'
    stages (module docstring)."""

    # the penalty couples the columns, so runs of this design are not the single-task baseline
    independent_tasks = False

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
        check_choice("architecture.penalty", penalty, PENALTIES)
        if not strength >= 0:
            raise ConfigError(f"architecture.strength: the penalty's weight must be >= 0, got {strength}")
        super().__init__(encoder, tasks, heads)
        self.penalty_kind = penalty
        self.strength = float(strength)
        self.pairwise = pairwise
        first = next(iter(self.columns.values()))
        num_stages = len(encoder_stages(first, "architecture"))
        self.tied_stages = select_stages(tied_stages, num_stages, "architecture.tied_stages")

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
