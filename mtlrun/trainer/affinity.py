"""Lookahead inter-task affinity, measured during an ordinary run (``trainer.affinity_every``, off by default).

After Fifty, Amid, Zhao, Yu, Anil & Finn (2021), "Efficiently Identifying Task Groupings for Multi-Task
Learning" (NeurIPS; TAG). At a measured step t, on the step's own training batch X, with θ_s the shared
parameters and θ_j task j's own: take a step of θ_s on task i's loss alone, the lookahead θ_(s|i), and ask
how much it changed every task j's loss on the same batch,

    Z(i→j) = 1 − L_j(X, θ_(s|i), θ_j) / L_j(X, θ_s, θ_j).

Z(i→j) > 0: task i's step lowered task j's loss (i helps j); < 0: it raised it. The run's matrix is the mean
Ẑ(i→j) over its measurements; ``mtlrun groups RUN`` turns it into task groups (mtlrun/grouping.py).

**The lookahead step** (``trainer.affinity_update``):

* ``optimizer`` (default): the update the run's own optimizer would make from its current state if task i's
  gradient were the whole gradient: ∇_(θ_s) L_i goes into the shared parameters' ``.grad`` (every other
  parameter's ``.grad`` is None, so a torch optimizer leaves them alone), ``optimizer.step()`` runs, and the
  state of the shared parameters (Adam's moments and step count, SGD's momentum buffer) is put back exactly
  as it was. So the lookahead has the run's learning rate at this step, its weight decay, Adam's
  preconditioning and momentum. With momentum the step also carries the momentum every task shares (Adam's
  β₁ = 0.9: 90 % of the first moment), so the rows of Z differ less than under ``sgd``.
* ``sgd``: θ_(s|i) = θ_s − η ∇_(θ_s) L_i with η the current learning rate of each parameter's group: the
  paper's equation, the task's gradient alone.

No clipping (``trainer.grad_clip``) and no weighting: the paper steps on the raw task loss.

**Exactness.** The measurement leaves the run's trajectory bit-identical: the shared parameters are copied
back after each lookahead, the optimizer state is restored, every model buffer (batch-norm statistics) is
restored, the ``.grad`` of every parameter is put back, and the random-number state is reset before each of
the forwards and restored at the end (the same dropout masks in every forward of a measurement, and none
drawn from the run's stream). The forwards run in training mode, as the step's own.

**Cost.** Per measurement: 1 + T forward passes (the base losses, with their graph, then one lookahead per
task without one) and T backward passes (each task's gradient over the shared parameters), plus T optimizer
steps; measured every ``trainer.affinity_every`` steps.

**Departures from the paper.** None in the definition. The paper measures on every step of a dedicated
run; here every N-th step of any run, and Z of a pair is averaged over the measurements where L_j(θ_s) > 0
(a task with no labelled row in the batch has no loss to compare).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from mtlrun.architecture.base import MTLModel
from mtlrun.errors import ConfigError
from mtlrun.grouping import AFFINITY_FILE, HEATMAP_FILE, Affinity, write_affinity
from mtlrun.tasks import Task
from mtlrun.trainer.step import per_task_losses

log = logging.getLogger("mtlrun")

UPDATES = ("optimizer", "sgd")


class TaskAffinity:
    """The running mean of Z(i→j) (module docstring); ``every=0``: off, it measures and writes nothing."""

    def __init__(
        self,
        task_names: Sequence[str] = (),
        every: int = 0,
        model: MTLModel | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        update: str = "optimizer",
    ) -> None:
        self.task_names = list(task_names)
        self.every = every
        self.model = model
        self.optimizer = optimizer
        self.update = getattr(update, "value", update)
        self.steps = 0  # training steps seen (the measurement is due every `every`-th)
        self.total: Tensor | None = None  # [T, T] float64 sums of Z over the measurements where it is defined
        self.count: Tensor | None = None  # [T, T] how many measurements each sum holds
        self.measurements = 0
        self.seconds = 0.0  # time spent measuring

    @classmethod
    def build(
        cls,
        every: int,
        update: str,
        model: MTLModel,
        optimizer: torch.optim.Optimizer,
        tasks: Mapping[str, Task],
        world_size: int = 1,
    ) -> TaskAffinity:
        """The run's measurement, or an inactive one with ``every=0``; a ConfigError for a run it cannot
        measure."""
        if not every:
            return cls(tasks)
        update = getattr(update, "value", update)
        if update not in UPDATES:
            raise ConfigError(f"trainer.affinity_update: '{update}' is not one of {', '.join(UPDATES)}")
        if world_size > 1:
            raise ConfigError(
                f"trainer.affinity_every={every}: task affinity is not measured in data-parallel runs "
                f"({world_size} processes); run on one process (no torchrun) or set trainer.affinity_every=0"
            )
        if not model.shared_parameters():
            raise ConfigError(
                f"trainer.affinity_every={every}: {type(model).__name__} shares no parameter, so every "
                "affinity is 0 by construction; measure it with an architecture that shares (e.g. "
                "architecture=hard_sharing) or set trainer.affinity_every=0"
            )
        return cls(tasks, every, model, optimizer, update)

    # ------------------------------------------------------------------------------------- measuring

    def observe(self, batch: dict, tasks: Mapping[str, Task], autocast=None) -> None:
        """Called before every training step on its batch: measures when due (every ``every``-th step)."""
        if not self.every:
            return
        self.steps += 1
        if self.steps % self.every:
            return
        start = time.perf_counter()
        z = self.measure(batch, tasks, autocast)
        self.seconds += time.perf_counter() - start
        self.record(z)

    def record(self, z: Tensor) -> None:
        """Add one [T, T] measurement (NaN cells: undefined this time) to the running mean."""
        z = z.detach().double().cpu()
        defined = torch.isfinite(z)
        if self.total is None:
            self.total = torch.zeros_like(z)
            self.count = torch.zeros(z.shape, dtype=torch.long)
        self.total += torch.where(defined, z, torch.zeros_like(z))
        self.count += defined.long()
        self.measurements += 1

    def mean(self) -> Tensor | None:
        """[T, T] Ẑ, NaN where no measurement was defined; None before the first measurement."""
        if self.total is None:
            return None
        return self.total / self.count.clamp_min(1) + torch.where(self.count > 0, 0.0, torch.nan)

    def measure(self, batch: dict, tasks: Mapping[str, Task], autocast=None) -> Tensor:
        """One [T, T] matrix Z(i→j) on ``batch``; leaves the model, the optimizer and the RNG as they were."""
        model = self.model
        assert model is not None and self.optimizer is not None, "an inactive TaskAffinity measures nothing"
        shared = model.shared_parameters()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved_grads = [p.grad for p in params]
        saved_values = [p.detach().clone() for p in shared]
        saved_buffers = [b.detach().clone() for b in model.buffers()]
        rng = _rng_state(shared[0].device)
        autocast = autocast or nullcontext()

        def fresh_forward() -> None:  # the same buffers and dropout masks in every forward
            _set_rng_state(rng, shared[0].device)
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved_buffers, strict=True):
                    buffer.copy_(value)

        try:
            fresh_forward()
            with autocast:
                predictions = model(batch)
            losses = per_task_losses(predictions, batch, tasks)
            base = torch.stack(losses).detach().float()
            gradients = []  # T backward passes; the graph is freed with the last one
            for t, loss in enumerate(losses):
                if not loss.requires_grad:
                    gradients.append([None] * len(shared))
                    continue
                keep = t < len(losses) - 1
                gradients.append(torch.autograd.grad(loss, shared, retain_graph=keep, allow_unused=True))
            del predictions, losses
            z = torch.full((len(base), len(base)), torch.nan)
            defined = torch.isfinite(base) & (base > 0)
            for i, grads in enumerate(gradients):
                self._lookahead(shared, grads, params)
                fresh_forward()
                with torch.no_grad(), autocast:
                    after = torch.stack(per_task_losses(model(batch), batch, tasks)).float()
                z[i] = torch.where(defined, 1.0 - after / base.clamp_min(1e-30), torch.nan).cpu()
                _copy_into(shared, saved_values)
        finally:
            _copy_into(shared, saved_values)
            with torch.no_grad():
                for buffer, value in zip(model.buffers(), saved_buffers, strict=True):
                    buffer.copy_(value)
            for p, g in zip(params, saved_grads, strict=True):
                p.grad = g
            _set_rng_state(rng, shared[0].device)
        return z

    def _lookahead(
        self, shared: list[torch.nn.Parameter], grads: Sequence[Tensor | None], params: list
    ) -> None:
        """Move the shared parameters one lookahead step along ``grads`` (None: the loss does not reach it)."""
        if self.update == "sgd":
            lr = {id(p): group["lr"] for group in self.optimizer.param_groups for p in group["params"]}
            with torch.no_grad():
                for p, g in zip(shared, grads, strict=True):
                    if g is not None:
                        p.sub_(g.to(p.dtype), alpha=lr[id(p)])
            return
        state = self.optimizer.state
        saved = {p: _clone_state(state[p]) if p in state else None for p in shared}
        for p in params:
            p.grad = None
        for p, g in zip(shared, grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g.to(p.dtype)
        try:
            self.optimizer.step()
        finally:
            for p, value in saved.items():
                if value is None:
                    state.pop(p, None)
                else:
                    state[p] = value
            for p in shared:
                p.grad = None

    # --------------------------------------------------------------------------------------- outputs

    def write(self, folder: Path, heatmap: bool = False) -> None:
        """task_affinity.csv (and with ``heatmap`` task_affinity.png) in ``folder``; nothing when off or
        before the first measurement. A failed heatmap only warns."""
        mean = self.mean()
        if mean is None:
            return
        counts = self.count.min(dim=1).values.tolist()
        write_affinity(folder / AFFINITY_FILE, Affinity(self.task_names, mean.tolist(), counts))
        log.info(
            "task affinity: %d measurement(s), %.1f ms each, in %s",
            self.measurements,
            1000 * self.seconds / self.measurements,
            folder / AFFINITY_FILE,
        )
        if heatmap:
            try:
                draw_heatmap(folder / HEATMAP_FILE, self.task_names, mean.tolist(), self.measurements)
            except Exception as err:  # a plot must never fail a run
                log.warning("could not draw %s (%s: %s)", folder / HEATMAP_FILE, type(err).__name__, err)

    # The running sums, the step counter and the time go into the checkpoint: a resumed run measures at the
    # same steps and keeps averaging where it stopped.
    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "total": self.total,
            "count": self.count,
            "measurements": self.measurements,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: dict | None) -> None:
        """``None`` (a checkpoint written without the measurement): start from nothing."""
        state = state or {}
        self.steps = state.get("steps", 0)
        self.total, self.count = state.get("total"), state.get("count")
        self.measurements = state.get("measurements", 0)
        self.seconds = state.get("seconds", 0.0)


def draw_heatmap(
    path: Path, names: Sequence[str], values: Sequence[Sequence[float]], measurements: int
) -> None:
    """A diverging heatmap of Ẑ (red: i helps j, blue: i hurts j), the values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    z = np.array(values, dtype=float)
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    size = 1.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(z, cmap="RdBu_r", vmin=-bound or -1, vmax=bound or 1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("task j (whose loss changes)")
    ax.set_ylabel("task i (stepping)")
    ax.set_title(f"lookahead affinity Z(i→j), {measurements} measurements")
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(z[i, j]):
                    ax.text(j, i, f"{z[i, j]:+.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _clone_state(state: dict) -> dict:
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in state.items()}


def _copy_into(params: Sequence[torch.nn.Parameter], values: Sequence[Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip(params, values, strict=True):
            p.copy_(value)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
