"""Factorised task layers for DMTRL (`mtlrun.architecture.dmtrl`): T affine maps whose stacked weights are one
low-rank tensor.

Task t's affine map R^D → R^O is x ↦ [x, 1] W_t with W_t ∈ R^{(D+1)×O} (the bias is the last row). The T
matrices stacked on a last (task) axis form W ∈ R^{D₁×D₂×T}, D₁ = D + 1, D₂ = O, stored as one of

- `tucker`: W = G ×₁ A ×₂ B ×₃ C, with the core G ∈ R^{r₁×r₂×r₃} and the factor matrices A ∈ R^{D₁×r₁},
  B ∈ R^{D₂×r₂}, C ∈ R^{T×r₃} (×ₖ the mode-k product); so W_t = Σ_k C[t, k] · A G[:, :, k] Bᵀ;
- `tt` (tensor train): W[i, j, t] = Σ_(a, b) U₁[i, a] U₂[a, j, b] U₃[b, t], with U₁ ∈ R^{D₁×r₁},
  U₂ ∈ R^{r₁×D₂×r₂}, U₃ ∈ R^{r₂×T} (the chain of three cores, the outer ranks being 1);
- `laf` (last-axis flattening): W_(T) = U V, where W_(T) ∈ R^{T×D₁D₂} holds vec(W_t) in row t, U ∈ R^{T×r}
  and V ∈ R^{r×D₁D₂}.

In each form exactly one factor is indexed by task: C's row t, U₃'s column t, U's row t. It is stored as T
vectors, one parameter per task (`task_factors.<task>`), because only task t's loss reaches it; every other
factor is shared by all tasks.

**Ranks** (`rank`: one int for every mode, or a list: tucker [r₁, r₂, r₃], tt [r₁, r₂], laf [r]). Each is
capped at the largest value that adds expressiveness: tucker rₖ ≤ min(Dₖ, ∏_(j≠k) Dⱼ); tt r₁ ≤ min(D₁, D₂T),
r₂ ≤ min(r₁D₂, T); laf r ≤ min(T, D₁D₂). At those caps the form represents any T independent matrices
(`set_from` then reconstructs them exactly); below them the tasks share a subspace (tucker: W_t's rows lie in
span A and its columns in span B; laf r = 1: every W_t is a multiple of one matrix).

**Initialisation.** The shared factor matrices get orthonormal columns (V orthonormal rows), each task's
vector is a random unit vector, and the remaining shared factor (G, U₂, V) is scaled so that
E‖W_t‖²_F = D₂: the reconstructed weights have mean square 1/D₁, the scale of a LeCun (Kaiming, gain 1)
normal initialisation with fan-in D₁. `set_from(W)` instead sets the factors from given weights by HOSVD
(tucker), TT-SVD (tt) or an SVD of W_(T) (laf), truncated to the ranks: the paper's initialisation from
trained single-task layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.errors import ConfigError, check_choice

METHODS = ("tucker", "tt", "laf")


RANK_NAMES = {"tucker": "[r_in, r_out, r_task]", "tt": "[r1, r2]", "laf": "[r]"}


def resolve_ranks(
    method: str, rank: int | Sequence[int], dims: tuple[int, int, int], prefix: str
) -> list[int]:
    """The ranks of `method` for a [D₁, D₂, T] tensor from the config's `rank`, capped (module docstring);
    a ConfigError naming `<prefix>.method` or `<prefix>.rank` for a value that cannot work."""
    check_choice(f"{prefix}.method", method, METHODS)
    wanted = len(RANK_NAMES[method].split(","))
    ranks = [rank] * wanted if isinstance(rank, int) else list(rank) if isinstance(rank, Sequence) else [rank]
    if len(ranks) != wanted or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ConfigError(
            f"{prefix}.rank: {method} takes one positive int or a list {RANK_NAMES[method]}; got {rank!r}"
        )
    d1, d2, t = dims
    if method == "tucker":
        caps = [min(d1, d2 * t), min(d2, d1 * t), min(t, d1 * d2)]
        return [min(r, c) for r, c in zip(ranks, caps, strict=True)]
    if method == "tt":
        r1 = min(ranks[0], d1, d2 * t)
        return [r1, min(ranks[1], r1 * d2, t)]
    return [min(ranks[0], t, d1 * d2)]


def orthonormal(rows: int, cols: int) -> Tensor:
    """A random [rows, cols] matrix with orthonormal columns (rows ≥ cols) or rows."""
    return nn.init.orthogonal_(torch.empty(rows, cols))


def unit_vector(size: int) -> Tensor:
    v = torch.randn(size)
    return v / v.norm()


class FactorisedTaskLinear(nn.Module):
    """T affine maps R^in → R^out whose stacked weights W ∈ R^{(in+1)×out×T} are a Tucker, tensor-train or
    LAF factorisation (module docstring). `forward` takes [T, N, in] (task t's inputs in row t) and returns
    [T, N, out]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        tasks: Sequence[str],
        method: str = "tucker",
        rank: int | Sequence[int] = 8,
        prefix: str = "architecture",
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.method = method
        self.dims = (in_dim + 1, out_dim, len(self.tasks))
        self.ranks = resolve_ranks(method, rank, self.dims, prefix)
        d1, d2, _ = self.dims
        if method == "tucker":
            r1, r2, r3 = self.ranks
            self.in_factor = nn.Parameter(orthonormal(d1, r1))  # A
            self.out_factor = nn.Parameter(orthonormal(d2, r2))  # B
            self.core = nn.Parameter(torch.randn(r1, r2, r3) * math.sqrt(d2 / (r1 * r2)))  # G
            task_size = r3  # C's rows
        elif method == "tt":
            r1, r2 = self.ranks
            self.in_core = nn.Parameter(orthonormal(d1, r1))  # U₁
            self.mid_core = nn.Parameter(torch.randn(r1, d2, r2) / math.sqrt(r1))  # U₂
            task_size = r2  # U₃'s columns
        else:
            (r,) = self.ranks
            self.basis = nn.Parameter(orthonormal(r, d1 * d2) * math.sqrt(d2))  # V
            task_size = r  # U's rows
        self.task_factors = nn.ParameterDict({t: nn.Parameter(unit_vector(task_size)) for t in self.tasks})

    def task_matrix(self) -> Tensor:
        """The task-indexed factor, [T, r]: C (tucker), U₃ᵀ (tt) or U (laf)."""
        return torch.stack([self.task_factors[t] for t in self.tasks])

    def weight(self) -> Tensor:
        """The reconstructed W ∈ R^{(in+1)×out×T}; W[:, :, t] is task t's weight with its bias as last row."""
        tasks = self.task_matrix()
        if self.method == "tucker":
            core = torch.einsum("abk,tk->abt", self.core, tasks)  # G ×₃ C
            return torch.einsum("ia,abt,jb->ijt", self.in_factor, core, self.out_factor)
        if self.method == "tt":
            tail = torch.einsum("ajb,tb->ajt", self.mid_core, tasks)  # U₂ · U₃
            return torch.einsum("ia,ajt->ijt", self.in_core, tail)
        d1, d2, t = self.dims
        return (tasks @ self.basis).T.reshape(d1, d2, t)  # W_(T) = U V, row t = vec(W_t)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight().to(x.dtype)
        return torch.einsum("tni,ijt->tnj", x, w[:-1]) + w[-1].T.unsqueeze(1)

    @torch.no_grad()
    def set_from(self, weights: Tensor) -> None:
        """Set the factors from a [in+1, out, T] tensor by HOSVD (tucker), TT-SVD (tt) or an SVD of the
        task-mode unfolding (laf), truncated to the ranks: exact where the ranks are at their caps."""
        if tuple(weights.shape) != self.dims:
            raise ValueError(f"expected weights of shape {self.dims}, got {tuple(weights.shape)}")
        w = weights.detach().to(device="cpu", dtype=torch.float64)
        d1, d2, t = self.dims
        if self.method == "tucker":
            factors = []
            for mode, r in enumerate(self.ranks):  # leading left singular vectors of each unfolding
                unfolding = w.movedim(mode, 0).reshape(w.shape[mode], -1)
                factors.append(torch.linalg.svd(unfolding, full_matrices=False)[0][:, :r])
            a, b, c = factors
            core = torch.einsum("ijt,ia,jb,tk->abk", w, a, b, c)
            self._assign({"in_factor": a, "out_factor": b, "core": core}, c)
        elif self.method == "tt":
            r1, r2 = self.ranks
            u, s, vh = torch.linalg.svd(w.reshape(d1, d2 * t), full_matrices=False)
            first, rest = u[:, :r1], (s[:r1, None] * vh[:r1]).reshape(r1 * d2, t)
            u, s, vh = torch.linalg.svd(rest, full_matrices=False)
            mid, last = u[:, :r2].reshape(r1, d2, r2), s[:r2, None] * vh[:r2]
            self._assign({"in_core": first, "mid_core": mid}, last.T)
        else:
            (r,) = self.ranks
            u, s, vh = torch.linalg.svd(w.reshape(d1 * d2, t).T, full_matrices=False)  # W_(T) = U S Vᵀ
            self._assign({"basis": s[:r, None] * vh[:r]}, u[:, :r])

    def _assign(self, shared: dict[str, Tensor], tasks: Tensor) -> None:
        for name, value in shared.items():
            getattr(self, name).copy_(value)
        for row, name in zip(tasks, self.tasks, strict=True):
            self.task_factors[name].copy_(row)
