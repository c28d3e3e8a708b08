"""Sluice networks (Ruder, Bingel, Augenstein & Søgaard 2019, "Latent Multi-task Architecture
Learning", AAAI): one column (a fresh encoder) per task, run stage by stage; α mixes the tasks'
subspaces after every stage, β weighs each task's stage outputs, and an orthogonality penalty keeps a
column's subspaces apart.

With T tasks and S subspaces, the output of column t at stage k is split along its feature (channel)
axis into S equal subspaces G_t,k,1 … G_t,k,S.

**α, a cross-stitch over subspaces.** After every stage k the T·S subspaces are mixed by a learned
(T·S)×(T·S) matrix α_k: G̃_k,i = Σ_j α_k[i, j] · G_k,j, with i and j running over (task, subspace) pairs
in task-major order. Column t's next stage reads the concatenation of its mixed subspaces
G̃_k,(t,1) … G̃_k,(t,S).

**β, a layer stitch.** Task t's head reads h_t = Σ_k β_t[k] · G̃_k,(t,·), a learned weighted sum of its
column's mixed stage outputs, over the stages whose output shape equals the last stage's.

**The orthogonality penalty.**

```text
penalty = λ · Σ_t Σ_k Σ_(s < s′) ‖G_t,k,sᵀ · G_t,k,s′ / R‖²_F
```

over tasks t, stages k and pairs of subspaces s < s′ (‖·‖_F is the Frobenius norm), on each column's
own stage outputs before α mixes them. The rows of G are the R observations of the batch (examples,
or examples × positions for feature maps, whose channels are the features). Dividing by R keeps λ
independent of the batch size. `penalty()` returns it; the runner adds it to the objective, never
balances it, and logs it.

**Config keys.**

- `subspaces`: S, at least 1; it must divide the width (channels) of every stage's output.
- `orthogonality`: λ, ≥ 0; 0 turns the penalty off (and its log row).
- `alpha_init`: `balanced`, every entry 1/(T·S) (the authors' command-line default), or `imbalanced`,
  0.9 on the diagonal and 0.1/(T·S − 1) elsewhere (their one-subspace scheme, generalised).
- `beta_init`: `imbalanced`, 0.9 on the last stage and 0.1 shared by the others (the authors'
  default), or `balanced`, equal weights.

**Parameter roles.** α mixes every task's subspaces, so every column's parameters receive gradients
from every task's loss: the columns are shared (part `trunk`, no task, optimizer group `shared`), and
so are the α matrices (part `mixing`, no task). β_t is read only by task t's head, so task t owns it
(part `mixing`): gradient methods leave it out of the shared Jacobian and it gets its task's ordinary
gradient. The heads: part `head`, owned by their task.

There is no shared representation (`has_representation` is false): each task reads its own column's
mixed outputs, so no single tensor carries everything the tasks read. `diagnostics()` reports, per
task, β over the stitched stages (`beta_stage<k>`) and, per stage, the share of the α mass of the
task's subspaces that comes from its own column (`alpha_self_stage<k>`; 1 means no sharing).

**Departures from the paper.**

- β: the paper's layers all share one width, but stages of an injected encoder need not (CNN stages
  are [C, H, W] maps, its last stage a vector). So β runs only over the stages whose output shape
  equals the last stage's: all of them for an MLP encoder with equal hidden widths, only the last,
  flattening stage for the CNN encoder (where β_t is a single learned scale). This keeps the paper's
  formula exact and adds no parameters, where projecting every stage to the head's width would add
  T·(K − 1) learned maps that the design does not have.
- The penalty follows the paper's formula (after the difference loss of domain separation networks)
  on stage outputs; the authors' code applies it to LSTM weight matrices instead, but a stage of an
  injected encoder is a black box whose subspaces exist only in its output.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.mixing import convex_init
from mtlrun.encoder.stages import encoder_stages
from mtlrun.errors import ConfigError, check_choice
from mtlrun.tasks import Task

INIT_SCHEMES = ("balanced", "imbalanced")


def orthogonality(h: Tensor, subspaces: int) -> Tensor:
    """The sum over pairs s < s′ of ‖G_sᵀ · G_s′ / R‖²_F, for the S subspaces of `h` (`[N, C]` or
    `[N, C, *spatial]`) split along C.

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
    """The (T·S)×(T·S) α of one stage under `scheme`: `balanced`, 1/(T·S) everywhere; `imbalanced`, 0.9 on
    the diagonal and the rest of each row shared out equally (rows sum to 1 either way)."""
    n = tasks * subspaces
    return convex_init(n, 0.9 if scheme == "imbalanced" else 1.0 / n)


def initial_beta(stages: int, scheme: str) -> Tensor:
    """β over `stages` stitched stages under `scheme`: `balanced`, equal weights; `imbalanced`, 0.9 on the
    last stage and the rest shared out equally (sums to 1 either way)."""
    return convex_init(stages, 0.9 if scheme == "imbalanced" else 1.0 / stages)[-1].clone()


class Sluice(MTLModel):
    """One column per task; α mixes the tasks' subspaces after every stage, β weighs each task's stage
    outputs (module docstring)."""

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
        encoder_stages(first, "architecture")
        self.stage_shapes: list[tuple[int, ...]] = [tuple(s) for s in first.stage_shapes]
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
        """Per task: β over the stitched stages (`beta_stage<k>`) and, per stage, the share of the α mass
        of the task's subspaces that comes from its own column (`alpha_self_stage<k>`; 1 = no sharing)."""
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
        return self.roles_by_prefix(prefixes | self.heads.roles("heads"))
