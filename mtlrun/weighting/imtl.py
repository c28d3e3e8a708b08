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
overflowing.

**Solver.** Everything comes from the T×T Gram matrix M = G Gᵀ (float64, on the CPU), the only pass over the
[T, P] gradients besides the final d = Gᵀα. With N = diag(‖g_t‖) (‖g_t‖ = √M_tt) and the (T−1)×T difference
matrix Δ = [1 | −I], the rows above are D = ΔG and U = ΔN⁻¹G, so the closed form reads

```text
(Δ N⁻¹ M Δᵀ) α_(2:T) = Δ N⁻¹ M e_1,        α = e_1 − Δᵀ α_(2:T)
```

Forming the system from M costs relative accuracy when gradients are nearly parallel: its entries are
differences of nearly equal products, exact to about ε / (1 − cos θ) relative (ε the precision of the
gradients' dtype, in which M is multiplied).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, gram_matrix


class IMTL(GradientWeighting):
    direction_is_weighted_sum = True

    def __init__(
        self, tasks: Mapping[str, Task], grad_source: str = "shared_params", update_every: int = 1
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        gram = gram_matrix(grads)  # M = G Gᵀ, float64 on the CPU: the only pass over the gradients
        eps = torch.finfo(grads.dtype).eps
        norms = gram.diagonal().sqrt()
        smallest, largest = norms.aminmax()
        if float(smallest) > eps * float(largest):
            weights = _weights(gram, norms, eps)
        else:  # zero gradients: weight 0, and left out of the conditions
            weights = torch.zeros(len(gram), dtype=torch.float64)
            kept = (norms > eps * largest).nonzero().flatten()
            if len(kept) == 0:
                weights += 1.0 / len(gram)
            else:
                weights[kept] = _weights(gram[kept][:, kept], norms[kept], eps)
        return self.apply_weights(weights, grads)


def _weights(m: Tensor, n: Tensor, eps: float) -> Tensor:
    """α from the Gram matrix m of non-zero gradients and their norms n (module docstring): the system in
    minimum-norm least squares, singular values below eps · T times the largest cut off."""
    if len(m) == 1:
        return torch.ones(1, dtype=m.dtype)
    delta, right = _differences(len(m))
    both = delta @ (m / n[:, None]) @ right  # [Δ N⁻¹ M e_1 | Δ N⁻¹ M Δᵀ]
    rest = torch.linalg.pinv(both[:, 1:], rtol=eps * len(m)) @ both[:, 0]
    return right[:, 0] - delta.T @ rest


@functools.lru_cache(maxsize=16)
def _differences(num: int) -> tuple[Tensor, Tensor]:
    """Δ = [1 | −I], (T−1)×T, and [e_1 | Δᵀ], T×T, in float64 (never written to)."""
    delta = torch.cat(
        [torch.ones(num - 1, 1, dtype=torch.float64), -torch.eye(num - 1, dtype=torch.float64)], 1
    )
    return delta, torch.cat([torch.eye(num, 1, dtype=torch.float64), delta.T], 1)
