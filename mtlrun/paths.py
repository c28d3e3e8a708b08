"""Where the shipped files live, in a source checkout and in an installed wheel alike.

Torch-free and Hydra-free, so that any module (the CLI, ``mtlrun.weighting.load``, the tests) can ask.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir() -> str:
    """Absolute path of the shipped configs: ``mtlrun/conf`` in a wheel, else ``<repo>/conf``."""
    for candidate in (PACKAGE / "conf", PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").exists():
            return str(candidate)
    raise FileNotFoundError(f"mtlrun: no conf/ folder found beside {PACKAGE}; reinstall the package")
