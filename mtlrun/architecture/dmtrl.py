"""DMTRL, deep multi-task representation learning by tensor factorisation (Yang & Hospedales 2017, "Deep
Multi-task Representation Learning: A Tensor Factorisation Approach", ICLR): the tasks' layers at one depth
are stacked into one tensor, which is learned as a low-rank factorisation, so the tasks share its factors.

**The design.** The encoder, the trunk, maps x to z ∈ R^D, read by every task. Each task then has a tower
of affine layers (widths `tower`, each followed by `activation`) and its head reads the tower's output:

```text
h_t⁰ = z,   h_tˡ = σ([h_tˡ⁻¹, 1] W_tˡ),   y_t = head_t(h_t^L)
```

At depth l the T matrices W_tˡ ∈ R^{(Dˡ⁻¹+1)×Dˡ} (the bias folded in as the last row) are the slices of one
tensor Wˡ ∈ R^{(Dˡ⁻¹+1)×Dˡ×T}, stored factorised by `method` (`mtlrun.architecture.tensor_factors`):

- `tucker`: Wˡ = G ×₁ A ×₂ B ×₃ C, core G ∈ R^{r₁×r₂×r₃}, A, B the input and output factor
  matrices, C ∈ R^{T×r₃}; task t's layer is W_t = Σ_k C[t, k] A G[:, :, k] Bᵀ;
- `tt`: the tensor train W[i, j, t] = U₁[i, :] U₂[:, j, :] U₃[:, t], three cores with ranks r₁, r₂;
- `laf`: last-axis flattening, W_(T) = U V: row t of W_(T) ∈ R^{T×(Dˡ⁻¹+1)Dˡ} is vec(W_t), U ∈ R^{T×r}
  holds each task's coefficients and V ∈ R^{r×(Dˡ⁻¹+1)Dˡ} a basis of r layers every task mixes.

Low ranks make the tasks share: with laf r = 1 every W_t is a multiple of one matrix; with tucker every W_t
reads its input through the r₁-dimensional span of A and writes into the r₂-dimensional span of B. At full
ranks the factorisation represents any T independent layers.

**Config keys.**

- `method`: `tucker`, `tt` or `laf`.
- `rank`: one int for every mode, or a list: tucker [r_in, r_out, r_task], tt [r₁, r₂], laf [r]. Each is
  capped at the largest value that adds expressiveness (tucker rₖ ≤ min(Dₖ, ∏ⱼ≠ₖ Dⱼ); tt r₁ ≤ min(D₁, D₂T),
  r₂ ≤ min(r₁D₂, T); laf r ≤ min(T, D₁D₂)), so laf with r ≥ T, or tucker and tt at their caps, share
  nothing between the towers. The capped ranks of each depth are in `ranks`.
- `tower`: the hidden widths of the factorised layers, at least one.
- `activation`: a `torch.nn` class name, after every factorised layer.

**Parameter roles.** The trunk: part `trunk`, shared. The factorised layers' task-indexed factor (C's row t,
U₃'s column t, U's row t) is stored as one vector per task, `tower.<l>.task_factors.<t>`: part `trunk`, owned
by task t (only its loss reaches it). Every other factor (G, A, B; U₁, U₂; V): part `trunk`, shared. The
heads: part `head`, owned by their task.

**Shared representation.** The trunk's output z, which every tower reads; each tower reads it through a view
of its own, so `representation_views` holds (where no task reads another's estimate without a stop-gradient)
and `weighting.grad_source=representation` takes one backward pass for the T rows.

**Initialisation.** Random (the paper's needs trained single-task networks): orthonormal shared factor
matrices, a random unit vector per task, and the core (tucker: G; tt: U₂; laf: V) scaled so that the
reconstructed W_t has mean square 1/(Dˡ⁻¹+1), a LeCun (Kaiming, gain 1) normal scale.
`FactorisedTaskLinear.set_from(W)` sets the factors from given layers by HOSVD, TT-SVD or SVD, the paper's
initialisation, for use outside the runner.

**Departures from the paper.** The paper factorises every layer of the network (convolutions as 5-way
tensors) and shares nothing else; here the injected encoder is hard-shared and only the tower layers are
factorised, as the paper's fully connected layers are, and the output layers are the configurable task heads,
as in its heterogeneous setting. The paper initialises the factors by decomposing single-task networks
trained first and picks the ranks from a relative error threshold on their singular values; here the
initialisation is random and the ranks are set directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import torch
import torch.nn as nn
from torch import Tensor

from mtlrun.architecture.base import EncoderFactory, MTLModel, ParamRole
from mtlrun.architecture.heads import TaskHeads
from mtlrun.architecture.tensor_factors import FactorisedTaskLinear, resolve_ranks
from mtlrun.encoder.layers import activation as make_activation
from mtlrun.errors import ConfigError
from mtlrun.tasks import Task


class DMTRL(MTLModel):
    """A shared trunk, per-task towers whose layers are tensor factorisations, the heads (module docstring)."""

    has_representation = True

    def __init__(
        self,
        encoder: EncoderFactory,
        tasks: Mapping[str, Task],
        heads: Mapping,
        method: str = "tucker",
        rank: int | list[int] = 8,
        tower: list[int] = (64,),
        activation: str = "ReLU",
    ) -> None:
        super().__init__(tasks)
        widths = list(tower)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(
                f"architecture.tower: a list of at least one positive width; got {list(tower)} "
                "(without a factorised layer the design is hard sharing: architecture=hard_sharing)"
            )
        resolve_ranks(method, rank, (2, 2, 2), "architecture")  # the config's mistakes before any building
        self.trunk = encoder()
        dims = [self.trunk.out_dim, *widths]
        self.tower = nn.ModuleList(
            FactorisedTaskLinear(a, b, list(self.tasks), method, rank) for a, b in pairwise(dims)
        )
        self.activation = make_activation(activation)
        self.ranks = [layer.ranks for layer in self.tower]
        self.heads = TaskHeads(dims[-1], self.tasks, heads)
        self._views: dict[str, Tensor] = {}

    def forward(self, batch: dict) -> dict[str, Tensor]:
        z = self.trunk(batch["x"])
        self.shared_representation = z
        self._views = {name: z.view_as(z) for name in self.tasks}
        h = torch.stack(list(self._views.values()))  # [T, N, D]: row t is task t's own view
        for layer in self.tower:
            h = self.activation(layer(h))
        return self.heads({name: h[i] for i, name in enumerate(self.tasks)})

    def representation_views(self) -> dict[str, Tensor]:
        return self._views if self.heads.separable else {}

    def parameter_roles(self) -> dict[str, ParamRole]:
        owned = {
            f"tower.{depth}.task_factors.{t}": ParamRole("trunk", t)
            for depth in range(len(self.tower))
            for t in self.tasks
        }
        shared = {"trunk": ParamRole("trunk"), "tower": ParamRole("trunk")}
        return self.roles_by_prefix(shared | owned | self.heads.roles("heads"))
