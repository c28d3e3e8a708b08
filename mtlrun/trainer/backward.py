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

The engine also samples the pairwise cosine similarity of the task gradients every ``cosine_every`` steps:
free when the matrix is computed anyway, an extra T backward passes for loss-based methods (off unless
``cosine_for_loss_based``).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from mtlrun.architecture.base import MTLModel
from mtlrun.errors import ConfigError
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


def cosine_matrix(grads: Tensor) -> Tensor:
    unit = grads / grads.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


class BackwardEngine:
    def __init__(
        self,
        model: MTLModel,
        weighting: Weighting,
        cosine_every: int = 0,
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
        self.cosine_every = cosine_every if (weighting.needs_task_grads or cosine_for_loss_based) else 0
        self.shared = model.shared_parameters()
        self.owned = model.task_owned_parameters()
        self.steps = 0
        self.backward_passes = 0
        self._cosine_sum: Tensor | None = None
        self._cosine_count = 0
        self._penalty_sum: Tensor | None = None
        self._penalty_count = 0

    # ------------------------------------------------------------------------------------------- step
    def backward(self, losses: Tensor) -> Tensor:
        """Fill ``.grad`` of the model and weighting parameters; returns the scalar objective (detached)."""
        self.steps += 1
        sample_cosine = bool(self.cosine_every) and self.steps % self.cosine_every == 0 and bool(self.shared)
        w = self.weighting
        penalty = self._penalty()
        if not w.needs_task_grads:
            if sample_cosine:
                self._record_cosine(per_task_gradients(losses, self.shared))
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
            self._record_cosine(grads)
        return losses.sum().detach()

    def _plain(self, objective: Tensor, penalty: Tensor | None) -> Tensor:
        (objective if penalty is None else objective + penalty).backward()
        self.backward_passes += 1
        return objective.detach()

    def _penalty(self) -> Tensor | None:
        penalty = self.model.penalty()
        if penalty is not None:
            value = penalty.detach().float()
            self._penalty_sum = value if self._penalty_sum is None else self._penalty_sum + value
            self._penalty_count += 1
        return penalty

    def pop_penalty(self) -> dict[str, float]:
        """Mean model penalty since the last call: {"penalty": value}, or {} for designs without one."""
        if self._penalty_sum is None:
            return {}
        mean = (self._penalty_sum / self._penalty_count).item()
        self._penalty_sum, self._penalty_count = None, 0
        return {"penalty": mean}

    # ----------------------------------------------------------------------------------- diagnostics
    def _record_cosine(self, grads: Tensor) -> None:
        cos = cosine_matrix(grads.detach().float())
        self._cosine_sum = cos if self._cosine_sum is None else self._cosine_sum + cos
        self._cosine_count += 1

    def pop_cosines(self) -> dict[str, float]:
        """Mean pairwise cosine similarity of task gradients since the last call: {"a~b": value}."""
        if self._cosine_sum is None:
            return {}
        mean = (self._cosine_sum / self._cosine_count).tolist()
        names = self.weighting.task_names
        self._cosine_sum, self._cosine_count = None, 0
        return {f"{names[i]}~{names[j]}": mean[i][j] for i, j in itertools.combinations(range(len(names)), 2)}

    def passes_per_step(self) -> float:
        return self.backward_passes / max(self.steps, 1)

    # ------------------------------------------------------------------------------------------ state
    # The step counter decides when ``update_every`` recomputes the weights and when cosines are sampled, and
    # the running sums span a whole epoch: all of it goes into the checkpoint, so a resumed run takes the
    # same steps as an uninterrupted one.
    _STATE = ("steps", "backward_passes", "_cosine_sum", "_cosine_count", "_penalty_sum", "_penalty_count")

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state: dict) -> None:
        for key in self._STATE:
            setattr(self, key, state[key])
