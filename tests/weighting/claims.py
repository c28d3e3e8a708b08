"""What each shipped weighting option promises, as the tests read it: one entry per conf/weighting/<name>.yaml,
for the option with its shipped defaults.

The runner never reads these facts (it reads the class declarations `needs_task_grads`,
`needs_shared_parameters`, `direction_is_weighted_sum`, `adaptive`, `grad_source`, `update_every`), so they
live here rather than on the classes. Each claim restates what the method's module docstring documents.
test_claims.py checks that the table names exactly the shipped options and that every claim holds;
test_weighting_properties.py uses them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Claim:
    # The output depends on a draw from torch's global generator (task order, dropped signs, sampled
    # weights): two calls with different seeds differ, so tests that compare two calls skip the method.
    randomized: bool = False
    # Gradient-based methods only: the direction when every one of the T task gradients equals g, as a
    # function of (g, T). None for loss-based methods.
    direction_when_equal: Callable[[Tensor, int], Tensor] | None = None


def mean_of(g: Tensor, num_tasks: int) -> Tensor:
    """The mean of T copies of g: g itself."""
    return g


def sum_of(g: Tensor, num_tasks: int) -> Tensor:
    """The sum of T copies of g."""
    return num_tasks * g


CAGRAD_C = 0.4  # conf/weighting/cagrad.yaml; `rescale: true`


def cagrad_equal(g: Tensor, num_tasks: int) -> Tensor:
    """Every g_w is g, so d = g₀ + c g = (1 + c) g, divided by 1 + c² (rescale)."""
    return (1 + CAGRAD_C) / (1 + CAGRAD_C**2) * g


def nashmtl_equal(g: Tensor, num_tasks: int) -> Tensor:
    """α_i = 1 / (√T ‖g‖), so d = √T g / ‖g‖, then clipped to norm `max_norm: 1.0`."""
    return min(math.sqrt(num_tasks), 1.0) * g / g.norm()


CLAIMS: dict[str, Claim] = {
    # loss-based
    "dwa": Claim(),
    "equal": Claim(),
    "famo": Claim(),
    "gls": Claim(),
    "gradnorm": Claim(),
    "rlw": Claim(randomized=True),  # fresh softmax-of-normal weights every step
    "static": Claim(),
    "uncertainty": Claim(),
    # gradient-based
    "aligned_mtl": Claim(direction_when_equal=sum_of),  # `reduction: sum`: B w = 1 for rank-1 G
    "cagrad": Claim(direction_when_equal=cagrad_equal),
    "graddrop": Claim(randomized=True, direction_when_equal=sum_of),  # signs agree: nothing dropped
    "gradvac": Claim(randomized=True, direction_when_equal=sum_of),  # cosine 1: no adjustment; `sum`
    "imtl": Claim(direction_when_equal=mean_of),  # weights sum to 1
    "mgda": Claim(direction_when_equal=mean_of),  # the hull of T copies of g is g; `combine: original`
    "nashmtl": Claim(direction_when_equal=nashmtl_equal),
    "pcgrad": Claim(randomized=True, direction_when_equal=sum_of),  # no conflict: no projection; `sum`
    "upgrad": Claim(direction_when_equal=mean_of),  # no conflict: the mean; `reduction: mean`
}
