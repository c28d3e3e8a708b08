"""From per-task losses to gradients in ``.grad``, for both families of weighting methods.

Loss-based methods give one scalar: one backward pass. Gradient-based methods need the [T, P] matrix of
per-task gradients, computed only for them and only for the shared part:

* ``grad_source=shared_params``: T backward passes through the shared part (the graph is kept between
  them); the method's direction is written into the shared parameters' ``.grad``.
* ``grad_source=representation``: T cheap backward passes from the losses to the shared representation
  (through the heads only); the method's direction over the representation is then backpropagated once
  through the trunk (MGDA-UB's trick).

Task-owned parameters (the heads) ride along in those T passes: their gradients, summed over tasks, are
the ordinary gradient of each head's own loss. Methods whose direction is a weighted sum of the task gradients
may recompute only every ``update_every`` steps; in between, the last weights weigh the losses and one
backward pass does.

It hands the per-task gradients it computes, and the model's penalty, to the run's
`StepDiagnostics` (gradient cosines, penalty means).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtlrun.architecture.base import MTLModel
from mtlrun.errors import ConfigError
from mtlrun.trainer.diagnostics import StepDiagnostics
from mtlrun.weighting.base import Weighting


def per_task_gradients(
    losses: Tensor, inputs: list[Tensor], owned: list[torch.nn.Parameter] = (), retain_graph: bool = True
) -> Tensor:
    """[T, P]: row t is the gradient of losses[t] with respect to ``inputs``, flattened and concatenated.

    ``owned`` parameters (task heads) ride along in the same backward passes: their gradients are summed
    over tasks into ``.grad``, which is the ordinary gradient of the summed losses, at no extra pass.
    """
    owned = list(owned)
    targets = [*inputs, *owned]
    rows = []
    for t in range(losses.shape[0]):
        keep = retain_graph or t < losses.shape[0] - 1
        grads = torch.autograd.grad(losses[t], targets, retain_graph=keep, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(x)).reshape(-1)
                    for g, x in zip(grads, inputs, strict=False)
                ]
            )
        )
        for p, g in zip(owned, grads[len(inputs) :], strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    return torch.stack(rows)


def add_flat_grad(direction: Tensor, params: list[torch.nn.Parameter]) -> None:
    """Add a flat [P] direction to the ``.grad`` of ``params``."""
    offset = 0
    for p in params:
        n = p.numel()
        g = direction[offset : offset + n].view_as(p).to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


class BackwardEngine:
    def __init__(
        self,
        model: MTLModel,
        weighting: Weighting,
        diagnostics: StepDiagnostics | None = None,
        cosine_for_loss_based: bool = False,
    ) -> None:
        self.model = model
        self.weighting = weighting
        self.source = weighting.grad_source or "shared_params"
        self.update_every = weighting.update_every
        if weighting.needs_task_grads and self.source == "representation" and not model.has_representation:
            raise ConfigError(
                f"weighting.grad_source=representation: {type(model).__name__} exposes no shared representation; "
                "use weighting.grad_source=shared_params"
            )
        self.diagnostics = diagnostics or StepDiagnostics(weighting.task_names, cosine_every=0)
        # free where the [T, P] matrix is computed anyway; T extra passes for loss-based methods: when asked
        self.samples_cosines = weighting.needs_task_grads or cosine_for_loss_based
        self.shared = model.shared_parameters()
        self.owned = model.task_owned_parameters()
        self.steps = 0
        self.backward_passes = 0

    def backward(self, losses: Tensor) -> Tensor:
        """Fill ``.grad`` of the model and weighting parameters; returns the scalar objective (detached)."""
        self.steps += 1
        sample_cosine = self.samples_cosines and self.diagnostics.cosine_due(self.steps) and bool(self.shared)
        w = self.weighting
        penalty = self.model.penalty()
        if penalty is not None:
            self.diagnostics.record_penalty(penalty)
        if not w.needs_task_grads:
            if sample_cosine:
                self.diagnostics.record_cosines(per_task_gradients(losses, self.shared))
                self.backward_passes += len(losses)
            return self._plain(w.combine(losses), penalty)
        if not self.shared:  # designs that share nothing (single_task) have nothing to balance
            return self._plain(losses.sum(), penalty)
        if (self.steps - 1) % self.update_every:
            return self._plain((w.last_weights.to(losses.dtype) * losses).sum(), penalty)

        if penalty is not None:  # its own gradient, never balanced by the method; the passes below add to it
            penalty.backward(retain_graph=True)

        if self.source == "representation":
            rep = self.model.shared_representation
            grads = per_task_gradients(losses, [rep], self.owned)
            direction = w.aggregate(grads, losses.detach())
            torch.autograd.backward(rep, direction.view_as(rep).to(rep.dtype), inputs=self.shared)
            self.backward_passes += len(losses) + 1
        else:
            grads = per_task_gradients(losses, self.shared, self.owned, retain_graph=False)
            add_flat_grad(w.aggregate(grads, losses.detach()), self.shared)
            self.backward_passes += len(losses)
        if sample_cosine:
            self.diagnostics.record_cosines(grads)
        return losses.sum().detach()

    def _plain(self, objective: Tensor, penalty: Tensor | None) -> Tensor:
        (objective if penalty is None else objective + penalty).backward()
        self.backward_passes += 1
        return objective.detach()

    def passes_per_step(self) -> float:
        return self.backward_passes / max(self.steps, 1)

    # The step counter decides when ``update_every`` recomputes the weights and when cosines are sampled: it
    # goes into the checkpoint, so a resumed run takes the same steps as an uninterrupted one.
    def state_dict(self) -> dict:
        return {"steps": self.steps, "backward_passes": self.backward_passes}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.backward_passes = state["steps"], state["backward_passes"]
