"""``hydra/launcher=slurm`` and ``slurm_local``: hydra-submitit-launcher's launchers, requeued as resumes.

When SLURM preempts a job, or its time limit is near, submitit sends the job SIGUSR2 (``signal_delay_s``
before the limit), calls the launcher's ``checkpoint()`` and requeues the job with the submission it returns.
mtlrun's runner takes the signal first: it finishes the step, writes a checkpoint and records the run as
interrupted, then hands the signal to submitit (mtlrun/signals.py). The submission returned here is the same
job with ``resume=<its own folder>`` added, so the requeued job continues that run in place from the
checkpoint, and ends with the table an uninterrupted job would have written. ``max_num_timeout`` caps how
often a job that runs out of time is requeued; preemptions do not count.

Defined only where the ``slurm`` extra (hydra-submitit-launcher) is installed.
"""

from __future__ import annotations

from typing import Any

from mtlrun.callbacks import path_override

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _submitit
except ImportError:  # pip install 'mtlrun[slurm]' adds the launchers
    _submitit = None


def resume_overrides(overrides: list[str], folder: str) -> list[str]:
    """``overrides`` with ``resume=`` pointing at the job's own folder (replacing one there was)."""
    kept = [o for o in overrides if not o.lstrip("+").startswith("resume=")]
    return [*kept, path_override("resume", folder)]


if _submitit is not None:

    class _Resuming:
        def checkpoint(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
            """The job again, as a resume of the run in its own folder (submitit pickles and requeues it)."""
            from hydra.core.hydra_config import HydraConfig

            folder = str(HydraConfig.get().runtime.output_dir)
            return super().checkpoint(resume_overrides(list(sweep_overrides), folder), *args, **kwargs)

    class SlurmLauncher(_Resuming, _submitit.SlurmLauncher):
        pass

    class LocalLauncher(_Resuming, _submitit.LocalLauncher):
        pass
