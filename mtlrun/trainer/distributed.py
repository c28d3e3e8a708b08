"""Data-parallel training on torch.distributed: one run, N processes (ranks), each on its own rows of every batch.

``torchrun --nproc_per_node=N -m mtlrun ...`` starts the ranks (it sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``). Every rank builds the same model from the same seed
and draws the same batch order; ``trainer.batch_size`` is the *global* batch, of which rank r trains the
contiguous rows ``[r·n/N, (r+1)·n/N)``. Only rank 0 writes the run folder (the others write into a scratch
folder that is deleted at exit), so a data-parallel run is one run, with one folder.

The update equals the single-process update on the whole batch, for every weighting method:

* Losses. Task t's loss on the whole batch is L_t = Σ_r c_rt·l_rt / Σ_r c_rt, where l_rt is rank r's mean loss
  and c_rt its number of labelled rows (or their summed sample weights). Each rank continues with the
  value L_t, but a gradient of share_rt · ∂l_rt, share_rt = N·c_rt / Σ_r c_rt (`World.global_losses`).
  Whatever the weighting does with L (any function of it, learnable parameters included), the mean over ranks
  of the parameters' gradients is then the whole-batch gradient (`World.average_gradients`).
* Gradient-based methods, shared parameters: row t of the [T, P] matrix is the mean over ranks of the rows
  each rank computes (an all-reduce) before the method combines them.
* Gradient-based methods, representation: the rows are gradients with respect to each rank's own rows of the
  representation; the ranks' rows are gathered (scaled by 1/N) into the whole batch's matrix, the method
  combines it, and each rank backpropagates its own part of the direction (scaled by N, undone by the mean).

The ranks also agree on when to stop (a signal one of them got) and when to checkpoint (`World.agree`), one
small collective per step. Evaluation splits the batches the same way; losses are summed across ranks and
torchmetrics gathers its states across ranks in ``compute()``. Process groups: gloo for these control
messages, and for the tensors on CPU; NCCL for the tensors on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtlrun import ranks


def init_process_group() -> None:
    """Join the ranks torchrun started (gloo: the control messages, and tensors on CPU); once per process."""
    if ranks.launched()[1] > 1 and not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def leave_process_group() -> None:
    """Leave the ranks' process group (at the process's exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value``, on every rank (the run folder it claimed)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class World:
    """The ranks of a run: which one this process is, how many there are, and how their tensors meet."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: Any = None  # the process group for tensors on the training device (None: the default group)
    shard_rows: list[int] = field(default_factory=list)  # each rank's rows of the last batch sharded

    @classmethod
    def for_device(cls, device: torch.device) -> World:
        """This process's world; under torchrun, its process group for ``device`` (NCCL on CUDA)."""
        rank, size = ranks.launched()
        if size == 1:
            return cls()
        init_process_group()
        group = dist.new_group(backend="nccl") if device.type == "cuda" else None
        return cls(rank, size, ranks.local_rank(), group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """The rank's own GPU (``cuda:<LOCAL_RANK>``) when training on CUDA; ``device`` otherwise."""
        if device.type != "cuda" or not self.distributed:
            return device
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    # ---- batches ----

    def shard(self, batch: Mapping) -> dict:
        """This rank's contiguous rows of a (global) batch; remembers every rank's row count."""
        if not self.distributed:
            return dict(batch)
        n = len(batch["x"])
        bounds = [r * n // self.size for r in range(self.size + 1)]
        self.shard_rows = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
        start, end = bounds[self.rank], bounds[self.rank + 1]
        return _rows(batch, slice(start, end))

    def shards(self, batches: Iterable[Mapping]) -> Iterable[dict]:
        for batch in batches:
            yield self.shard(batch)

    # ---- losses and gradients ----

    def global_losses(self, losses: list[Tensor], batch: Mapping, tasks: Mapping[str, Any]) -> list[Tensor]:
        """The T task losses of the whole batch, from this rank's T scalar ``losses`` on its rows of it
        (``batch``); each differentiable through its own task's graph only, with the gradient share the
        module docstring derives."""
        if not self.distributed:
            return losses
        mine = torch.stack(losses).detach()
        local = label_counts(batch, tasks).to(mine.dtype)
        totals = torch.stack([mine * local, local])
        dist.all_reduce(totals, group=self.group)
        weighted, total = totals.unbind()
        safe = torch.where(total > 0, total, torch.ones_like(total))
        share, value = local * self.size / safe, weighted / safe
        return [loss * share[t] + (value[t] - loss.detach() * share[t]) for t, loss in enumerate(losses)]

    def average_gradients(self, *modules: torch.nn.Module) -> None:
        """Replace the ``.grad`` of every parameter of ``modules`` by its mean over the ranks (one collective
        for all of them)."""
        if not self.distributed:
            return
        grads = [p.grad for module in modules for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.group)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean_rows(self, grads: Tensor) -> Tensor:
        """The [T, P] gradients of the shared parameters on the whole batch: the mean over the ranks."""
        if self.distributed:
            dist.all_reduce(grads, group=self.group)
            grads /= self.size
        return grads

    def gather_rows(self, grads: Tensor, rows: int) -> tuple[Tensor, slice, int]:
        """The [T, n·D] gradients with respect to the whole batch's representation, from this rank's
        [T, rows·D] ones; the slice of its own columns; and the factor its part of a direction is scaled by
        before backpropagating it (so that the mean over ranks is the whole-batch gradient)."""
        if not self.distributed:
            return grads, slice(None), 1
        width = grads.shape[1] // rows
        most = max(self.shard_rows)
        padded = grads.new_zeros(grads.shape[0], most * width)
        padded[:, : grads.shape[1]] = grads
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        full = torch.cat([p[:, : n * width] for p, n in zip(parts, self.shard_rows, strict=True)], dim=1)
        start = sum(self.shard_rows[: self.rank]) * width
        return full / self.size, slice(start, start + grads.shape[1]), self.size

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over the ranks (evaluation's loss sums and counts)."""
        if self.distributed:
            dist.all_reduce(values, group=self.group if values.is_cuda else None)
        return values

    # ---- control ----

    def agree(self, signum: int | None, checkpoint_due: bool) -> tuple[int | None, bool]:
        """The stop signal any rank received, and whether any rank's checkpoint clock ran out: all ranks
        then stop, or checkpoint, at the same step."""
        if not self.distributed:
            return signum, checkpoint_due
        flags = torch.tensor([signum or 0, int(checkpoint_due)])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # the default (gloo) group: no device sync
        return (int(flags[0]) or None), bool(flags[1])


def label_counts(batch: Mapping, tasks: Mapping[str, Any]) -> Tensor:
    """[T] the rows each task's batch loss is averaged over: its labelled rows, weighted by the rows' sample
    weights when the batch has them (the denominator of ``Task.loss_mean``)."""
    n = len(batch["x"])
    weight = batch.get("weight")
    counts = []
    for task in tasks.values():
        mask = task.labelled(batch)
        if weight is None:
            counts.append(
                torch.tensor(float(n), device=batch["x"].device) if mask is None else mask.sum().float()
            )
        else:
            counts.append(weight.float().sum() if mask is None else (weight.float() * mask).sum())
    return torch.stack(counts)


def _rows(value: Any, index: slice) -> Any:
    if isinstance(value, Mapping):
        return {k: _rows(v, index) for k, v in value.items()}
    return value[index]
