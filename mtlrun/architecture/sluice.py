"""Sluice networks (Ruder, Bingel, Augenstein & Søgaard, "Latent Multi-task Architecture Learning", AAAI 2019).

One column (a fresh encoder) per task, run stage by stage. With T tasks, S subspaces and the output of
column t at stage k split along its feature/channel axis into S equal subspaces G_{t,k,1..S}:

* **α (cross-stitch over subspaces).** After every stage k the T·S subspaces are mixed by a learned
  (T·S)×(T·S) matrix: G̃_{k,i} = Σ_j α_k[i, j] · G_{k,j}, with i, j running over (task, subspace) pairs in
  task-major order. Column t's next stage reads the concatenation of its mixed subspaces G̃_{k,(t,1..S)}.
* **β (layer stitch).** Task t's head reads h_t = Σ_k β_t[k] · G̃_{k,(t,·)}, a learned weighted sum of its
  column's mixed stage outputs. The paper's layers all share one width; stages of an injected encoder need
  not (CNN stages are [C, H, W] maps, its last stage a vector), so β runs over the stages whose output
  shape equals the last stage's (MLP encoders with equal hidden widths: all of them; the CNN encoder: only
  its last, flattening stage, where β_t is a single learned scale). This keeps the paper's formula exact
  and adds no parameters; projecting every stage to the head width would add T·(K−1) learned maps that
  the design does not have.
* **Orthogonality penalty.** penalty = λ · Σ_t Σ_k Σ_{s<s'} ‖G_{t,k,s}ᵀ G_{t,k,s'} / R‖²_F on each
  column's own (pre-α) stage outputs, where the rows of G are the R observations of the batch (examples,
  or examples × positions for feature maps: channels are the features) and λ is ``orthogonality``. It
  follows the paper's formula (after the difference loss of domain separation networks); the authors'
  code applies it to LSTM weight matrices instead, but a stage of an injected encoder is a black box whose
  subspaces exist only in its output. Dividing by R keeps λ independent of the batch size.

Initialisation follows the authors' code: α ``balanced`` (every entry 1/(T·S), their command-line default)
or ``imbalanced`` (0.9 on the diagonal, the rest 0.1/(T·S−1): their one-subspace scheme, generalised);
β ``imbalanced`` (0.9 on the last stage, 0.1 shared by the others, their default) or ``balanced``.

Roles: α mixes every task's subspaces, so every column's parameters receive gradients from every task's
loss; the columns are therefore shared (part ``trunk``, task None, optimizer group ``shared``), as are the
α matrices (part ``mixing``, task None). β_t is read only by task t's head, so task t owns it (part
``mixing``, task t): gradient methods leave it out of the shared Jacobian and it gets its task's ordinary
gradient. The heads are task-owned as always.

There is no shared representation (``has_representation`` is False): each task reads its own column's
mixed outputs, so no single tensor carries everything the tasks read.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

INIT_SCHEMES = ("balanced", "imbalanced")


def orthogonality(h: Tensor, subspaces: int) -> Tensor:
    """Σ_{s<s'} ‖G_sᵀ G_s' / R‖²_F for the S subspaces of ``h`` ([N, C] or [N, C, *spatial]), split along C.

    The rows of each G are the R = N·(spatial size) observations; its columns the C/S features of one
    subspace."""
    rows = h.movedim(1, -1).reshape(-1, h.shape[1])  # [R, C]
    parts = rows.chunk(subspaces, dim=1)
    total = h.new_zeros(())
    for s in range(subspaces):
        for r in range(s + 1, subspaces):
            total = total + (parts[s].T @ parts[r] / rows.shape[0]).pow(2).sum()
    return total


def initial_alpha(tasks: int, subspaces: int, scheme: str) -> Tensor:
    """The (T·S)×(T·S) α of one stage under ``scheme`` (rows sum to 1 either way)."""
    n = tasks * subspaces
    if scheme == "balanced" or n == 1:
        return torch.full((n, n), 1.0 / n)
    alpha = torch.full((n, n), 0.1 / (n - 1))
    alpha.fill_diagonal_(0.9)
    return alpha


def initial_beta(stages: int, scheme: str) -> Tensor:
    """β over ``stages`` stitched stages under ``scheme`` (sums to 1 either way)."""
    if scheme == "balanced" or stages == 1:
        return torch.full((stages,), 1.0 / stages)
    beta = torch.full((stages,), 0.1 / (stages - 1))
    beta[-1] = 0.9
    return beta


class Sluice(MTLModel):
    """One column per task; α mixes the tasks' subspaces after every stage, β weighs each task's stage
    outputs, an orthogonality penalty keeps a column's subspaces apart. No shared representation
    (``has_representation`` False): each task reads its own column (see the module docstring)."""

    has_representation = False

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        subspaces: int = 2,
        orthogonality: float = 1e-3,
        alpha_init: str = "balanced",
        beta_init: str = "imbalanced",
    ) -> None:
        super().__init__(tasks)
        if subspaces < 1:
            raise ConfigError(f"architecture.subspaces: must be at least 1; got {subspaces}")
        if orthogonality < 0:
            raise ConfigError(f"architecture.orthogonality: must be >= 0; got {orthogonality}")
        for key, value in (("alpha_init", alpha_init), ("beta_init", beta_init)):
            check_choice(f"architecture.{key}", value, INIT_SCHEMES)
        self.subspaces = subspaces
        self.orthogonality = orthogonality
        self.columns = nn.ModuleList([encoder() for _ in self.tasks])
        first = self.columns[0]
        self.stage_shapes: list[tuple[int, ...]] = [tuple(s) for s in first.stage_shapes]
        if not self.stage_shapes:
            raise ConfigError("architecture=sluice: the encoder has no stages to mix between")
        for k, shape in enumerate(self.stage_shapes):
            if shape[0] % subspaces:
                raise ConfigError(
                    f"architecture.subspaces: stage {k} of the encoder has {shape[0]} features/channels, "
                    f"which {subspaces} subspaces cannot split equally; choose a divisor"
                )
        self.alpha = nn.ParameterList(
            [nn.Parameter(initial_alpha(len(self.tasks), subspaces, alpha_init)) for _ in self.stage_shapes]
        )
        # the stages β weighs: those whose output shape equals the last stage's (see the module docstring)
        self.beta_stages = [k for k, s in enumerate(self.stage_shapes) if s == self.stage_shapes[-1]]
        self.beta = nn.ParameterDict(
            {name: nn.Parameter(initial_beta(len(self.beta_stages), beta_init)) for name in self.tasks}
        )
        self.heads = TaskHeads(first.out_dim, self.tasks, heads)
        self._penalty: Tensor | None = None

    def mix(self, alpha: Tensor, outputs: list[Tensor]) -> list[Tensor]:
        """α applied to the columns' outputs of one stage: each [N, C, ...] -> the mixed [N, C, ...]."""
        t, s = len(outputs), self.subspaces
        h = torch.stack(outputs)  # [T, N, C, ...]
        h = h.unflatten(2, (s, h.shape[2] // s)).movedim(2, 1).flatten(0, 1)  # [T*S, N, C/S, ...]
        mixed = torch.einsum("ij,j...->i...", alpha.to(h.dtype), h)
        mixed = mixed.unflatten(0, (t, s)).movedim(1, 2).flatten(2, 3)  # [T, N, C, ...]
        return list(mixed.unbind(0))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        inputs = [batch["x"]] * len(self.columns)
        penalty = batch["x"].new_zeros((), dtype=torch.float32) if self.orthogonality > 0 else None
        stitched: dict[int, list[Tensor]] = {}
        for k in range(len(self.stage_shapes)):
            outputs = [col.stages[k](h) for col, h in zip(self.columns, inputs, strict=True)]
            if penalty is not None and self.subspaces > 1:
                penalty = penalty + sum(orthogonality(h.float(), self.subspaces) for h in outputs)
            inputs = self.mix(self.alpha[k], outputs)
            if k in self.beta_stages:
                stitched[k] = inputs
        self._penalty = None if penalty is None else self.orthogonality * penalty
        features = {}
        for t, name in enumerate(self.tasks):
            beta = self.beta[name]
            layers = [stitched[k][t] for k in self.beta_stages]
            features[name] = sum(beta[j].to(h.dtype) * h for j, h in enumerate(layers))
        return self.heads(features)

    def penalty(self) -> Tensor | None:
        """λ times the subspace orthogonality term of the last forward pass; None when λ = 0."""
        return self._penalty

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Per task: β over the stitched stages (``beta_stage<k>``) and, per stage, the share of the α mass
        of the task's subspaces that comes from its own column (``alpha_self_stage<k>``; 1 = no sharing)."""
        stats: dict[str, dict[str, float]] = {}
        s = self.subspaces
        for t, name in enumerate(self.tasks):
            beta = self.beta[name].detach()
            row = {f"beta_stage{k}": float(b) for k, b in zip(self.beta_stages, beta, strict=True)}
            for k, alpha in enumerate(self.alpha):
                mass = alpha.detach().abs()[t * s : (t + 1) * s]
                row[f"alpha_self_stage{k}"] = float(
                    mass[:, t * s : (t + 1) * s].sum() / mass.sum().clamp_min(1e-12)
                )
            stats[name] = row
        return stats

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer is the last stage's α (every task's read-out goes through it)."""
        return [self.alpha[-1]] if self.alpha[-1].requires_grad else []

    def parameter_roles(self) -> dict[str, ParamRole]:
        prefixes = {"columns": ParamRole("trunk"), "alpha": ParamRole("mixing")}
        prefixes |= {f"beta.{t}": ParamRole("mixing", t) for t in self.tasks}
        prefixes |= {f"heads.heads.{t}": ParamRole("head", t) for t in self.tasks}
        return self.roles_by_prefix(prefixes)
