"""Δm%: the mean relative change of every metric against the single-task baseline (docs/concepts.md, "Δm%").

    Δm% = mean over metrics k of (−1)^{higher_is_better_k} · (M_k − B_k) / B_k · 100

Lower is better; a negative value means the multi-task model beats the single-task baseline on average.
A metric where higher is better counts its gain as negative (an improvement), a metric where lower is
better counts its drop as negative. Keys are ``"task/metric"`` strings, e.g. ``"left/accuracy"``.

The change is divided by |B_k|, which is B_k for the usual positive metrics (accuracy, F1, AUROC, MAE,
RMSE, MSE); for a metric that can be negative (R², whose baseline may be below zero on a hard task) the
absolute value keeps "an improvement counts negative" true, where dividing by a negative B_k would flip it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mtlrun.errors import ConfigError


def delta_m(
    metrics: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: Mapping[str, bool]
) -> float:
    """Δm% of ``metrics`` against ``baseline`` over every key of ``baseline``.

    ``metrics``, ``baseline`` and ``higher_is_better`` are keyed by ``"task/metric"``; ``metrics`` and
    ``higher_is_better`` must cover every key of ``baseline`` (extra keys in ``metrics`` are ignored).
    Raises ``ConfigError`` when the baseline is empty, a key is missing, or a baseline value is zero or not
    finite (a relative change is undefined there). A NaN in ``metrics`` gives NaN (a diverged run).
    """
    if not baseline:
        raise ConfigError("Δm%: the baseline has no metrics; pass the single-task runs' test metrics")
    missing = sorted(set(baseline) - set(metrics))
    if missing:
        raise ConfigError(
            f"Δm%: the runs lack the baseline metric(s) {', '.join(missing)}; "
            "compare runs that train the same tasks and metrics as the baseline"
        )
    undirected = sorted(set(baseline) - set(higher_is_better))
    if undirected:
        raise ConfigError(
            f"Δm%: no direction (higher or lower is better) for {', '.join(undirected)}; "
            "pass higher_is_better for every baseline metric"
        )
    changes = []
    for key, base in baseline.items():
        if base == 0 or not math.isfinite(base):
            raise ConfigError(
                f"Δm%: the baseline value of {key} is {base}; a relative change needs a finite, non-zero "
                "baseline: drop that metric or use another baseline"
            )
        sign = -1.0 if higher_is_better[key] else 1.0
        changes.append(sign * (float(metrics[key]) - base) / abs(base) * 100.0)
    return sum(changes) / len(changes)
