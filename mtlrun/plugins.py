"""Config options that need a Hydra plugin, and the pip extra that installs it.

Without the plugin, Hydra stops with a long stack ending in "Could not find 'hydra/launcher/joblib'" or
"Error locating target 'hydra_plugins...'". `check_plugins` looks at the command line before Hydra runs
and turns that into one line naming the extra to install (``mtlrun.cli.main`` prints it and exits 1). It sees the options typed on the command line;
shipped presets pick no plugin option in their defaults lists, so nothing slips past it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

JOBLIB = "hydra_plugins.hydra_joblib_launcher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
OPTUNA = "hydra_plugins.hydra_optuna_sweeper"

# "group=option" (or "group" for every option of it) -> the plugin module it needs. Not listed: the options
# that mtlrun ships with their plugin, hydra/launcher=parallel (hydra_plugins/mtlrun_parallel_launcher/) and
# hydra/sweeper=variants (hydra_plugins/mtlrun_variant_sweeper/).
PLUGIN_OF_OPTION: dict[str, str] = {
    "hydra/launcher=joblib": JOBLIB,  # the plugin's own node
    "hydra/launcher=slurm": SUBMITIT,
    "hydra/launcher=slurm_local": SUBMITIT,
    "hydra/launcher=submitit_slurm": SUBMITIT,
    "hydra/launcher=submitit_local": SUBMITIT,
    "hydra/sweeper=optuna_study": OPTUNA,
    "hydra/sweeper=optuna": OPTUNA,
    "hparams_search": OPTUNA,  # every preset of conf/hparams_search/ runs an Optuna study
}

# plugin module -> (pip distribution, mtlrun extra that installs it)
EXTRA_OF_PLUGIN: dict[str, tuple[str, str]] = {
    JOBLIB: ("hydra-joblib-launcher", "sweep"),
    OPTUNA: ("hydra-optuna-sweeper", "sweep"),
    SUBMITIT: ("hydra-submitit-launcher", "slurm"),
}


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing too
        return False


def chosen_options(argv: Sequence[str]) -> list[str]:
    """``group=option`` for every group choice in ``argv`` (``+``/``++`` prefixes dropped, sweeps split)."""
    chosen = []
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if not sep or key.startswith(("-", "~")):
            continue
        chosen += [
            f"{key}={option.strip()}" for option in value.split(",") if option.strip() not in ("", "null")
        ]
    return chosen


def missing_plugin(argv: Sequence[str]) -> str | None:
    """The message for the first option in ``argv`` whose plugin is not installed; None when all are."""
    for option in chosen_options(argv):
        group = option.partition("=")[0]
        module = PLUGIN_OF_OPTION.get(option) or PLUGIN_OF_OPTION.get(group)
        if module is None or is_installed(module):
            continue
        distribution, extra = EXTRA_OF_PLUGIN[module]
        return f"{option} needs the Hydra plugin {distribution}: pip install 'mtlrun[{extra}]'"
    return None
