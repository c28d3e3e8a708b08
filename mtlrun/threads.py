"""How many CPU threads torch runs a run's operators on (``trainer.num_threads``).

torch splits each CPU operator over a pool of intra-op threads: by default one per physical core (fewer when
``OMP_NUM_THREADS`` says so). That suits a run that has the machine to itself. Processes that share the cores
(the jobs of a parallel sweep, other people's work) should take fewer: with more threads than free cores,
OpenMP's threads wait for each other at every operator, and small models suffer most (on a busy 2-core
machine a small model ran up to 15x faster with one thread than with two).

* ``trainer.num_threads=N``: the run uses N threads (`use_threads`, first thing in the run's setup).
* ``null`` (the default): the count the process already has: torch's own for a run alone; under
  ``hydra/launcher=parallel``, the launcher's share for each job, `share` (cores // n_jobs, at least 1).

summary.json records the count in effect (``provenance.threads``). Hydra-free; torch is imported only when
the count is set.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a SLURM or taskset allotment)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share(n_jobs: int) -> int:
    """Threads for each of ``n_jobs`` processes running at once, so that together they fill the cores without
    oversubscribing them."""
    return max(1, available_cores() // max(1, n_jobs))


def use_threads(num_threads: int | None) -> int:
    """Set torch's intra-op thread count to ``num_threads`` (None: leave it as it is); return the count in
    effect."""
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return torch.get_num_threads()
