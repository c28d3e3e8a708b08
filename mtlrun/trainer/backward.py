"""From per-task losses to gradients in ``.grad``, for both families of weighting methods.

Loss-based methods give one scalar: one backward pass. Gradient-based methods need the [T, P] matrix G of
per-task gradients, computed only for them and only for the shared part. The engine receives the T losses
twice: stacked into the [T] vector every method reads, and as the T scalars they were stacked from. Row t of
G comes from one autograd pass that starts at task t's own scalar L_t, so it runs through task t's head
(and, with ``inputs_from`` not detached, through the heads whose estimates it reads: its graph reaches them by
itself), never back through the stack into the other heads:

* ``grad_source=shared_params``: row t = ∂L_t/∂θ over the shared parameters θ, flattened; T passes through
  the trunk (the graph is kept until the last). The method's direction d is written into θ's ``.grad``.
* ``grad_source=representation``: row t = ∂L_t/∂z over the shared representation z (the trunk's output);
  T passes through the heads only; or one, where each head reads z through a view of its own and no task
  reads another's estimate without a stop-gradient (`MTLModel.representation_views`: hard sharing): the
  gradient of Σ_t L_t with respect to task t's view is row t (`gradients_through_views`). The direction d
  over z is then backpropagated once through the trunk: θ's ``.grad`` = (∂z/∂θ)ᵀ d (MGDA-UB's trick).

Each pass writes its row straight into one preallocated [T, P] tensor. Task-owned parameters (the heads) ride
along in the same T passes: task t's pass returns ∂L_t/∂φ for every head φ its loss reaches, which is added
in place to φ's ``.grad``, so after the T passes φ.grad = Σ_t ∂L_t/∂φ, the ordinary gradient of the summed
losses, with no extra pass.

Then ``direction = weighting.aggregate(G, losses)``, the method's [P] combination, is applied as above.
Methods whose direction is a weighted sum of the task gradients may recompute only every ``update_every``
steps; in between, the last weights w weigh the losses and one backward pass of Σ_t w_t L_t does.

There is no vmapped variant: measured on a CPU (one thread, an MLP trunk, T = 3, 8 and 40, both sources), the
T per-task passes beat one ``autograd.grad(..., is_grads_batched=True)`` pass on the stacked losses, which
carries T cotangents through every head, T − 1 of them zero.

The penalty added to the objective is the model's own (`MTLModel.penalty`) plus the run's regulariser's
(`regularizer=`, mtlrun/regularizer/), gathered in one place (`penalty`); gradient-based methods never
balance it. The engine hands the [T, P] matrix it computes, and both penalty terms, to the run's
`StepDiagnostics` (gradient cosines, penalty means).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from mtlrun.architecture.base import MTLModel
from mtlrun.errors import ConfigError
from mtlrun.regularizer.base import Regularizer
from mtlrun.trainer.diagnostics import StepDiagnostics
from mtlrun.trainer.distributed import World
from mtlrun.weighting.base import Weighting


def per_task_gradients(
    losses: Sequence[Tensor],
    inputs: Sequence[Tensor],
    owned: Sequence[torch.nn.Parameter] = (),
    retain_graph: bool = True,
) -> Tensor:
    """[T, P]: row t is the gradient of the scalar ``losses[t]`` with respect to ``inputs``, flattened and
    concatenated (zeros where the loss does not reach an input), from one autograd pass per task.

    Pass the T scalars the losses were stacked from, not elements of the stacked vector: a pass from
    ``stacked[t]`` goes back through the stack into every task's part of the graph with zero gradients.
    ``owned`` parameters (task heads) ride along in the same passes: each pass adds its gradient in place to
    their ``.grad``, which ends as the gradient of the summed losses. ``retain_graph=False`` frees the graph
    with the last pass.
    """
    inputs, owned = list(inputs), list(owned)
    sizes = [x.numel() for x in inputs]
    rows = _rows(len(losses), inputs)
    targets = [*inputs, *owned]
    seen: set[int] = set()  # buffers handed to a ``.grad`` in this call
    for t, loss in enumerate(losses):
        if not loss.requires_grad:  # a loss that depends on no parameter: a zero row
            rows[t].zero_()
            continue
        keep = retain_graph or t < len(losses) - 1
        grads = torch.autograd.grad(loss, targets, retain_graph=keep, allow_unused=True)
        for part, g in zip(rows[t].split(sizes), grads[: len(inputs)], strict=True):
            if g is None:  # the loss does not reach this input
                part.zero_()
            else:
                part.view_as(g).copy_(g)
        _add_to_grads(owned, grads[len(inputs) :], seen)
    return rows


def gradients_through_views(
    losses: Sequence[Tensor], views: Sequence[Tensor], owned: Sequence[torch.nn.Parameter] = ()
) -> Tensor:
    """[T, P]: row t is the gradient of ``losses[t]`` with respect to the shared representation, where task t's
    loss reaches the representation only through its own view ``views[t]`` of it. Then the gradient of the
    summed losses with respect to view t is row t, so ONE backward pass gives all T rows (the T passes of
    `per_task_gradients` each repeat autograd's fixed cost). ``owned`` parameters ride along as there. The
    graph is kept: the direction is backpropagated through the trunk afterwards."""
    views, owned = list(views), list(owned)
    rows = _rows(len(views), views[:1])
    reaching = [loss for loss in losses if loss.requires_grad]
    if not reaching:
        return rows.zero_()
    grads = torch.autograd.grad(sum(reaching), [*views, *owned], retain_graph=True, allow_unused=True)
    for row, g in zip(rows, grads[: len(views)], strict=True):
        if g is None:
            row.zero_()
        else:
            row.view_as(g).copy_(g)
    _add_to_grads(owned, grads[len(views) :], set())
    return rows


def _rows(count: int, inputs: Sequence[Tensor]) -> Tensor:
    """An uninitialised [count, P] matrix for gradients over ``inputs``, at least float32 (the methods' solvers
    run in float32 even when the forward ran in bf16)."""
    dtype = functools.reduce(torch.promote_types, [x.dtype for x in inputs], torch.float32)
    return torch.empty(count, sum(x.numel() for x in inputs), dtype=dtype, device=inputs[0].device)


def _add_to_grads(
    params: Sequence[torch.nn.Parameter], grads: Sequence[Tensor | None], seen: set[int]
) -> None:
    """Add each gradient to its parameter's ``.grad`` in place (None: the loss did not reach it)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        if p.grad is not None:
            p.grad.add_(g)
            continue
        # autograd may hand one buffer to several parameters (or an expanded view): keep a copy then, so that
        # adding to one parameter's .grad later never changes another's
        fresh = g.is_contiguous() and g.data_ptr() not in seen
        p.grad = g if fresh else g.clone(memory_format=torch.contiguous_format)
        seen.add(g.data_ptr())


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
        world: World | None = None,
        regularizer: Regularizer | None = None,
    ) -> None:
        self.model = model
        self.regularizer = regularizer or Regularizer()  # the base class adds nothing
        self.world = world or World()  # data-parallel: the ranks whose per-task gradients are combined
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

    def backward(self, losses: Tensor, per_task: Sequence[Tensor] | None = None) -> Tensor:
        """Fill ``.grad`` of the model and weighting parameters; returns the scalar objective (detached).

        ``losses``: the [T] task losses. ``per_task``: the T scalars they were stacked from, where each
        task's gradient pass starts (module docstring); without them the passes start from ``losses[t]``,
        which gives the same gradients at the cost of sending zeros back through every head."""
        self.steps += 1
        if per_task is None:
            per_task = list(losses.unbind())
        sample_cosine = self.samples_cosines and self.diagnostics.cosine_due(self.steps) and bool(self.shared)
        w = self.weighting
        penalty = self.penalty()
        if not w.needs_task_grads:
            if sample_cosine:
                self.diagnostics.record_cosines(
                    self.world.mean_rows(per_task_gradients(per_task, self.shared))
                )
                self.backward_passes += len(per_task)
            return self._plain(w.combine_task_losses(losses, per_task), penalty)
        if not self.shared:  # designs that share nothing (single_task) have nothing to balance
            return self._plain(losses.sum(), penalty)
        if (self.steps - 1) % self.update_every:
            return self._plain((w.last_weights.to(losses.dtype) * losses).sum(), penalty)

        if penalty is not None:  # its own gradient, never balanced by the method; the passes below add to it
            penalty.backward(retain_graph=True)

        by_representation = self.source == "representation"
        rep = self.model.shared_representation
        views = self.model.representation_views() if by_representation else {}
        if views:  # one pass for the T rows
            grads = gradients_through_views(per_task, [views[t] for t in w.task_names], self.owned)
        else:
            inputs = [rep] if by_representation else self.shared
            grads = per_task_gradients(per_task, inputs, self.owned, retain_graph=by_representation)  # [T, P]
        if by_representation:  # data-parallel: the whole batch's rows (mtlrun/trainer/distributed.py)
            grads, mine, scale = self.world.gather_rows(grads, rep.shape[0])
        else:
            grads = self.world.mean_rows(grads)
        direction = w.aggregate(grads, losses.detach())  # [P]
        if by_representation:
            own_part = (direction[mine] * scale).view_as(rep)
            torch.autograd.backward(rep, own_part.to(rep.dtype), inputs=self.shared)
        else:
            add_flat_grad(direction, self.shared)
        self.backward_passes += (1 if views else len(per_task)) + by_representation
        if sample_cosine:
            self.diagnostics.record_cosines(grads)
        return losses.sum().detach()

    def penalty(self) -> Tensor | None:
        """The model's penalty plus the regulariser's (after its update due at this step), each recorded as
        its own ``model`` row (``penalty``, ``regularizer``); None when there is neither."""
        self.regularizer.on_step(self.steps)
        terms = []
        for name, term in (("penalty", self.model.penalty()), ("regularizer", self.regularizer.penalty())):
            if term is not None:
                self.diagnostics.record_penalty(term, name)
                if term.requires_grad:  # a proximal regulariser's term is logged only (its step: after_step)
                    terms.append(term)
        return sum(terms[1:], terms[0]) if terms else None

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
