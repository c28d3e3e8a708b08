"""Where a number came from: versions, code, machine and command, recorded in every summary.json."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

import mtlrun


def provenance(device: torch.device) -> dict:
    """The mtlrun version, the git commit (and whether the checkout had uncommitted changes) when mtlrun runs
    from a checkout, the Python and torch versions, the device and thread count, the host and the command."""
    return {
        "mtlrun": mtlrun.__version__,
        "git": git_state(Path(mtlrun.__file__).resolve().parents[1]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),  # in effect: trainer.num_threads or the default (mtlrun/threads.py)
        "host": socket.gethostname(),
        "command": shlex.join(["mtlrun", *sys.argv[1:]]),
        "cwd": os.getcwd(),
    }


def git_state(root: Path) -> dict | None:
    """{"commit": sha, "dirty": bool} of the checkout at ``root``; None for an installed package (no .git)
    or where git is missing."""
    if not (root / ".git").exists():
        return None
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()
