"""GradDrop: gradient sign dropout (Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, NeurIPS 2020,
"Just pick a sign").

Per coordinate, the positive sign purity of the task gradients is

    P = 1/2 (1 + sum_t g_t / sum_t |g_t|)          (in [0, 1]; 1 where every g_t >= 0, 0 where every g_t <= 0)

and with U ~ Uniform(0, 1) drawn once per coordinate, the positive components are kept where U < P and
the negative ones where U >= P: one sign survives per coordinate, the more popular one more often. The
update is the sum over tasks of (l_t + (1 - l_t) M_t) g_t, with M_t the mask of kept components and l_t
the task's leak (0 in the paper's multi-task experiments: only the masked gradients flow; 1 lets a task's
gradient through unmasked, the paper's transfer-learning setting). Where all task gradients agree in
sign nothing is dropped, so equal gradients give T g.

The paper inserts GradDrop at an activation layer and masks the gradients with respect to those
activations: ``grad_source=representation`` does exactly that at the model's shared representation
(per element, batch included: the paper's variant that first sums over the batch, weighted by the
activations' signs, needs the activations themselves, which the gradient contract does not pass). With
``grad_source=shared_params`` the masks act on the shared parameters' gradients instead, one draw per
parameter. The direction is not a weighted sum of the task gradients; ``last_weights`` are the least-
squares weights that come closest to it. The draw uses torch's global generator.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mtlrun.errors import ConfigError
from mtlrun.tasks import Task
from mtlrun.weighting.base import GradientWeighting, effective_weights


class GradDrop(GradientWeighting):
    randomized = True

    def __init__(
        self,
        tasks: Mapping[str, Task],
        leak: float | Mapping[str, float] = 0.0,
        grad_source: str = "shared_params",
        update_every: int = 1,
    ) -> None:
        super().__init__(tasks, grad_source=grad_source, update_every=update_every)
        if isinstance(leak, int | float):
            leaks = dict.fromkeys(self.task_names, float(leak))
        else:
            leaks = {str(k): float(v) for k, v in dict(leak).items()}
            unknown = set(leaks) - set(self.task_names)
            if unknown:
                raise ConfigError(
                    f"weighting.leak: unknown task(s) {sorted(unknown)}; tasks are {', '.join(self.task_names)}"
                )
        values = [leaks.get(t, 0.0) for t in self.task_names]
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"weighting.leak: every leak must be in [0, 1]; got {leaks}")
        self.register_buffer(
            "leak", torch.tensor(values), persistent=False
        )  # from the config, not the checkpoint

    def aggregate(self, grads: Tensor, losses: Tensor | None = None) -> Tensor:
        leak = self.leak.to(grads.dtype).to(grads.device)
        purity = 0.5 * (1.0 + grads.sum(0) / grads.abs().sum(0).clamp_min(torch.finfo(grads.dtype).tiny))
        keep_positive = torch.rand_like(purity) < purity  # else keep the negative components
        masked = 1.0 - leak
        direction = torch.where(keep_positive, masked @ grads.clamp_min(0.0), masked @ grads.clamp_max(0.0))
        if bool((leak > 0).any()):
            direction = direction + leak @ grads
        self.last_weights = effective_weights(grads, direction)
        return direction

    def expected_direction_when_equal(self, g: Tensor) -> Tensor:
        """All signs agree, so nothing is dropped: the sum T g."""
        return g * len(self.task_names)
