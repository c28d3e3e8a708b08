"""The ``mtlrun`` command: a Hydra app that trains one run per config (or one per job of a sweep).

torch is imported only inside the task function, so ``mtlrun --help`` (mtlrun/app_help.py), ``mtlrun --cfg job``
and the config errors found before a run starts never import it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mtlrun import app_help, plugins, schema, signals
from mtlrun.paths import config_dir

log = logging.getLogger("mtlrun")


def train(cfg: DictConfig) -> float | None:
    """The Hydra task: one run. Returns the number ``cfg.objective`` names (mtlrun/objective.py), which a
    sweeper such as Optuna optimises; None when the run failed in a multirun (the sweeper records a failed
    trial). Exit codes: 1 when the run failed, 128 + the signal's number when a stop signal ended it."""
    from mtlrun import resume
    from mtlrun.objective import build_objective, check_direction
    from mtlrun.trainer.runner import run

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.resume:  # the run its folder describes, not what the command line would compose today
            cfg = resume.continued_config(cfg, base_config(hydra_cfg.job.config_name))
        objective = build_objective(cfg)  # before training: a bad baseline or direction fails in seconds
        check_direction(objective, hydra_cfg.sweeper)
        summary = run(cfg, out_dir)
        return objective.value(summary)
    except signals.Interrupted as stop:
        signals.hand_over(stop.signum)  # e.g. submitit's handler: requeue the job from the checkpoint
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        from mtlrun.trainer.summary import record_failure

        log.error(describe_error(err))
        record_failure(out_dir, f"{type(err).__name__}: {err}")
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return None  # the sweep goes on; its report lists the failed job
        raise SystemExit(1) from None


def base_config(config_name: str) -> DictConfig:
    """The config the command line composes without its overrides (what a resume compares them against)."""
    from hydra import compose

    return compose(config_name=config_name, overrides=[])


def describe_error(err: Exception) -> str:
    """One paragraph for an error a user can act on (their config or data, the disk); the traceback for
    anything else, which is a bug."""
    from mtlrun.errors import MtlrunError

    if isinstance(err, MtlrunError):
        return f"error: {err}"
    return f"error: {disk_error(err)}" if isinstance(err, OSError) else "failed:\n" + traceback.format_exc()


def disk_error(err: OSError) -> str:
    """A failed read or write (a full disk, a file too large, a read-only or vanished folder) in one line."""
    where = f" {err.filename}" if err.filename else ""
    return f"could not read or write{where} ({err.strerror or err}); check the disk space and permissions"


def compose_error(err: BaseException) -> str | None:
    """One paragraph for a mistake in the command line or a config file that Hydra found while composing (an
    unknown key or option, a wrong type, an override it cannot parse, a YAML syntax error); None for other
    errors."""
    import difflib

    import yaml
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for cause in chain:
        if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
            mark = cause.problem_mark
            return (
                f"{mark.name}: not valid YAML ({cause.problem} at line {mark.line + 1}, column "
                f"{mark.column + 1}); fix the file"
            )
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(cause, "full_key", None):
            known = [str(k) for k in getattr(cause.parent_node, "keys", list)()]
            close = difflib.get_close_matches(str(cause.key), known, n=1)
            parent = str(cause.full_key).rpartition(".")[0]
            hint = f"did you mean '{parent + '.' if parent else ''}{close[0]}'? " if close else ""
            return f"{cause.full_key}: unknown key; {hint}`mtlrun --cfg job` lists every key"
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    first = chain[0]
    if isinstance(first, MissingConfigException):
        return str(first).split("\nConfig search path")[0].replace("\n\n", "\n")
    if isinstance(first, OverrideParseException):
        return f"cannot parse an override ({str(first).splitlines()[0]}); check its brackets and quotes"
    if isinstance(first, HydraException):
        return str(first)
    return None


SUBCOMMANDS = {
    "report": "mtlrun.report.cli",  # mtlrun report PATH... : comparison tables and plots of runs and sweeps
    "predict": "mtlrun.predict",  # mtlrun predict run=PATH data.path=FILE : a trained run's predictions
    "groups": "mtlrun.grouping",  # mtlrun groups RUN [--max-groups K] : task groups from a run's task affinity
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
    signals.install()  # a stop signal during start-up stops the run before its first step, cleanly
    sys.argv[1:] = schema.task_key_overrides(sys.argv[1:])
    schema.register()
    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(train)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra's errors reach main(), which words them below
    logging.raiseExceptions = False  # a log file the disk refuses: no traceback per line (the error says it)
    try:
        if app_help.show(sys.argv[1:], config_dir()):  # --help without Hydra's slow help formatter
            return
        app()
    except signals.Interrupted as stop:  # a second signal outside a run (composing, waiting for jobs)
        print(f"interrupted by {signals.name(stop.signum)}", file=sys.stderr)
        sys.exit(stop.exit_code)
    except Exception as err:  # raised by Hydra itself, outside a run (a run words its own errors)
        message = compose_error(err) or (disk_error(err) if isinstance(err, OSError) else None)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    from mtlrun import callbacks

    if callbacks.FAILED_JOBS:
        sys.exit(1)


if __name__ == "__main__":
    main()
