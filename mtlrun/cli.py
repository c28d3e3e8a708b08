"""The ``mtlrun`` command: a Hydra app that trains one run per config (or one per job of a sweep).

torch is imported only inside the task function, so ``mtlrun --help`` and ``mtlrun --cfg job`` stay fast.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlrun import plugins, schema

log = logging.getLogger("mtlrun")


def config_dir() -> str:
    """Absolute path of the shipped configs: ``mtlrun/conf`` in a wheel, else ``<repo>/conf``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError(f"mtlrun: no conf/ folder found beside {package}; reinstall the package")


def _write_failed_summary(out_dir: Path, message: str) -> None:
    """Make sure a failed job leaves summary.json with status 'failed', even when it failed before the
    runner wrote one."""
    import json

    from mtlrun.trainer.outputs import write_json

    path = out_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    if summary.get("status") != "failed":
        summary |= {"status": "failed", "error": message}
        write_json(path, summary)


def train(cfg: DictConfig) -> float | None:
    """The Hydra task: one run. Returns the number ``cfg.objective`` names (mtlrun/objective.py), which a
    sweeper such as Optuna optimises; None when the run failed in a multirun (the sweeper records a failed
    trial)."""
    from mtlrun.errors import MtlrunError
    from mtlrun.objective import build_objective, check_direction
    from mtlrun.trainer.runner import run

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        objective = build_objective(cfg)  # before training: a bad baseline or direction fails in seconds
        check_direction(objective, hydra_cfg.sweeper)
        summary = run(cfg, out_dir)
        return objective.value(summary)
    except MtlrunError as err:
        log.error("error: %s", err)
        _write_failed_summary(out_dir, f"{type(err).__name__}: {err}")
        if multirun:
            return None
        raise SystemExit(1) from None
    except Exception as err:
        if not multirun:
            raise
        # Hydra's launchers would print only the first failure and drop the traceback from the job's log:
        # log it here, keep the sweep going, and let the sweep callback report the failure.
        log.error("job failed:\n%s", traceback.format_exc())
        _write_failed_summary(out_dir, f"{type(err).__name__}: {err}")
        return None


SUBCOMMANDS = {
    "report": "mtlrun.report.cli",  # mtlrun report PATH... : comparison tables and plots of runs and sweeps
    "predict": "mtlrun.predict",  # mtlrun predict run=PATH data.path=FILE : a trained run's predictions
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        # `mtlrun report ...` / `mtlrun predict ...`: plain commands beside the Hydra app; each module's
        # main(argv) parses its own arguments and returns the exit code.
        import importlib

        command = importlib.import_module(SUBCOMMANDS[sys.argv[1]])
        sys.exit(command.main(sys.argv[2:]))
    missing = plugins.missing_plugin(sys.argv[1:])
    if missing:  # one line naming the extra to install, not Hydra's "Could not find ..." stack
        print(f"error: {missing}", file=sys.stderr)
        sys.exit(1)
    schema.register()
    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(train)
    app()
    from mtlrun import callbacks

    if callbacks.FAILED_JOBS:
        sys.exit(1)


if __name__ == "__main__":
    main()
