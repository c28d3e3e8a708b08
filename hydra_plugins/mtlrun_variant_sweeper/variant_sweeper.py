"""``hydra/sweeper=variants``: a grid over ``params`` crossed with named variants.

Hydra's basic sweeper runs one Cartesian grid. A comparison often is not one: the single-task baseline needs one
run per seed, not one per weighting method; static weights have a weight axis that adaptive methods lack. Here
every variant (a name and a mapping of overrides, sweeps allowed) is crossed with the common grid (``params``
plus the command line), and the sweep runs the union of those grids, variant after variant:

    params: {seed: 0,1,2}
    variants:
      multi_task: {architecture: hard_sharing, weighting: "glob(*)"}   # every weighting option x 3 seeds
      single_task: {architecture: single_task, weighting: equal}      # 3 jobs, once per seed

A key that a variant sets may not also come from ``params`` or the command line (which value would win is not
obvious): the sweep stops before any job runs and names the override to change instead, e.g.
``'hydra.sweeper.variants.multi_task.weighting="equal,pcgrad"'`` (quoted: Hydra sweeps no ``hydra.`` key). A job that two variants both produce runs once.
Batches, launchers and the check that every job composes are the basic sweeper's. With no variants it is the
basic sweeper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException


class VariantsError(CompactHydraException):
    """A variants sweep that cannot be built; Hydra prints its message alone, without a stack."""


class VariantSweeper(BasicSweeper):
    """The basic sweeper, run once per variant over the variant's overrides plus the common grid."""

    def __init__(
        self,
        max_batch_size: int | None,
        params: Mapping[str, str] | None = None,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=dict(params or {}))
        self.variants = {str(name): dict(overrides or {}) for name, overrides in (variants or {}).items()}

    def split_arguments(  # type: ignore[override]  # the basic sweeper's is a staticmethod
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        """Batches of jobs (each a list of override strings): the union over variants of each variant's grid."""
        if not self.variants:
            return BasicSweeper.split_arguments(overrides, max_batch_size)
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        common = {_key(o) for o in overrides}
        jobs: dict[frozenset[str], list[str]] = {}
        for name, variant in self.variants.items():
            own = parser.parse_overrides([f"{key}={value}" for key, value in variant.items()])
            clash = sorted(common & {_key(o) for o in own})
            if clash:
                raise VariantsError(
                    f"variants sweeper: {', '.join(clash)} is set by variant '{name}' and also by "
                    f"hydra.sweeper.params or the command line; change the variant instead, e.g. "
                    f"'hydra.sweeper.variants.{name}.{clash[0]}=\"a,b\"'"
                )
            for job in BasicSweeper.split_arguments([*overrides, *own], None)[0]:
                jobs.setdefault(frozenset(job), job)
        every = list(jobs.values())
        size = max_batch_size if max_batch_size and max_batch_size > 0 else max(len(every), 1)
        return [every[i : i + size] for i in range(0, len(every), size)]


def _key(override: Override) -> str:
    """The config key an override sets, without its ``+``/``++``/``~`` prefix."""
    return (
        override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
    )
