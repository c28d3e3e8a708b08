"""``mtlrun --help``: the config groups of conf/ with their options, and the composed config.

Hydra's own ``--help`` lists each group's options through a fresh config repository per option, and each
repository deep-copies the ConfigStore: about 0.6 s of CPU for ~100 options, most of it for the ``hydra/``
groups that the help does not even print. Here the groups and their options are read from the config folder
itself (`config_groups`: a group is a folder holding ``.yaml`` files, as Hydra sees it; ``hydra/`` is left out,
as Hydra's help does), and the config is composed once (Hydra's compose API, with the command line's
overrides). The text follows ``hydra.help.template`` (conf/config.yaml sets its header and footer), and each
group says which of its options the composed config uses. No torch.

Other help-like command lines (``--hydra-help``, ``--config-dir``, ``-cn``, a template that asks for
``$HYDRA_CONFIG_GROUPS``) stay Hydra's: `show` returns False for them.
"""

from __future__ import annotations

import os
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HELP_FLAGS = ("--help", "-h")
# flags that may come with --help and change nothing in what it shows (Hydra composes its help in run mode)
COMPATIBLE_FLAGS = ("--resolve", "--multirun", "-m")


def asked(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (without the program) is ``--help`` with overrides that `show` renders; anything
    else (another flag beside it, such as ``--config-dir``) is left to Hydra."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return False
    return all(arg in HELP_FLAGS or arg in COMPATIBLE_FLAGS or not arg.startswith("-") for arg in argv)


def config_groups(root: Path | str, skip: tuple[str, ...] = ("hydra",)) -> dict[str, list[str]]:
    """{group: sorted options} for every folder under ``root`` that holds ``.yaml`` files (its options, the
    file names without the suffix), nested groups as ``parent/child``; groups named in ``skip`` (and their
    subgroups) left out."""
    root = Path(root)
    groups: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        if group.split("/")[0] in skip or "__pycache__" in group.split("/"):
            continue
        options = sorted(f.name[: -len(".yaml")] for f in folder.glob("*.yaml") if f.is_file())
        if options:
            groups[group] = options
    return groups


def format_groups(groups: Mapping[str, Sequence[str]], choices: Mapping[str, object]) -> str:
    """One line per group: its options, then the one the composed config uses, if any."""
    lines = []
    for group, options in sorted(groups.items()):
        chosen = choices.get(group)
        in_use = f"  (in use: {chosen})" if isinstance(chosen, str) and chosen in options else ""
        lines.append(f"{group}: {', '.join(options)}{in_use}\n")
    return "".join(lines)


def show(argv: Sequence[str], config_dir: str, config_name: str = "config") -> bool:
    """Print the help for ``argv`` (its overrides compose the config shown); False, printing nothing, when
    Hydra's own help should answer instead. Composition errors propagate (the CLI words them)."""
    if not asked(argv):
        return False
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    overrides = [arg for arg in argv if not arg.startswith("-")]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name="mtlrun"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} resolves in the help and in --resolve
    template = str(cfg.hydra.help.template)
    if "HYDRA_CONFIG_GROUPS" in template:
        return False  # a template of the user's that lists Hydra's groups: Hydra's help has them
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    values = {
        "APP_CONFIG_GROUPS": format_groups(config_groups(config_dir), choices),
        "FLAGS_HELP": _flags_help() if "FLAGS_HELP" in template else "",
    }
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    values["CONFIG"] = OmegaConf.to_yaml(cfg, resolve="--resolve" in argv)
    text = string.Template(template).substitute(values)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `mtlrun --help | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return True


def _flags_help() -> str:
    """Hydra's flags, as Hydra's help prints them (only for a template that asks for ``$FLAGS_HELP``)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    return Hydra.format_args_help(get_args_parser())
