"""IMTL-G, the gradient part of impartial multi-task learning (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang,
"Towards Impartial Multi-task Learning", ICLR 2021).

IMTL-G combines the task gradients so that the update has the same projection on every unit task gradient:
every task sees the same progress along its own direction, whatever its gradient's norm.

**Update rule.** d = Σ_t α_t g_t with Σ_t α_t = 1 and dᵀu_1 = dᵀu_t for every t, u_t = g_t / ‖g_t‖. With
task 1 as reference, the rows D_t = g_1 − g_t and U_t = u_1 − u_t (t = 2..T) give the paper's closed form

```text
α_(2:T) = g_1 Uᵀ (D Uᵀ)⁻¹,        α_1 = 1 − Σ_(t≥2) α_t
```

a (T−1)×(T−1) linear system. The weights (`last_weights`) may be negative; they sum to 1, so T equal
gradients g give d = g.

**Options.**

- `grad_source`: `shared_params` (gradients of the shared parameters) or `representation` (of the shared
  representation, as the paper does).
- `update_every`: solve every k steps and reuse the weights in between.

**Departures from the paper.** The paper also has a loss-balancing part (IMTL-L), not included here. Guards
the paper does not need: a task whose gradient is zero (below machine precision times the largest norm) has
no unit gradient, so it is left out of the equal-projection conditions and gets weight 0 (all rows zero:
weights 1/T, d = 0). The system is solved by least squares with a cut-off on small singular values, so a
singular system (equal or linearly dependent gradients) gets its minimum-norm solution instead of
overflowing; D and U are formed from the gradients themselves rather than from the Gram matrix, which keeps
the digits that nearly parallel gradients would cancel.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting


class IMTL(GradientWeighting):
    direction_is_weighted_sum = True

    def __init__(
        self, tasks: Mapping[str, Task], grad_source: str = "shared_params", update_every: int = 1
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        num = len(grads)
        eps = torch.finfo(grads.dtype).eps
        norms = grads.norm(dim=1)
        keep = (norms > eps * norms.max()).nonzero().flatten()
        weights = torch.zeros(num, dtype=torch.float64)  # solved on the CPU in float64, like the system
        if len(keep) == 0:
            weights += 1.0 / num
        elif len(keep) == 1:
            weights[keep.cpu()] = 1.0
        else:
            g = grads[keep]
            u = g / norms[keep, None]
            d_rows, u_rows = g[:1] - g[1:], u[:1] - u[1:]
            system = (u_rows @ d_rows.T).to("cpu", torch.float64)  # (D U')' = U D'
            rhs = (u_rows @ g[0]).to("cpu", torch.float64)  # (g_1 U')'
            rest = torch.linalg.lstsq(system, rhs[:, None], rcond=eps * len(keep), driver="gelsd")
            alpha = rest.solution[:, 0]
            weights[keep.cpu()] = torch.cat([1.0 - alpha.sum().reshape(1), alpha])
        return self.apply_weights(weights, grads)
