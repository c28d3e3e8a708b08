"""Draw the figures of the documentation with mtlrun itself, and copy them into docs/assets/figures/.

    python scripts/docs_figures.py          # about 2 minutes on 2 CPU cores

It runs one real sweep, the static-weight front of ``experiment=static_front`` with one seed (16 jobs, two at
a time), whose report draws ``tradeoff.png``, ``val_curves.png`` and ``task_weights.png``, and copies those
plus one job's own ``curves.png`` (the uncertainty-weighted run). ``figures.json`` beside the PNGs records the
command, the date, the commit and the machine; the docs print them under each figure.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "assets" / "figures"
COMMAND = ["mtlrun", "-m", "experiment=static_front", "seed=0", "hydra/launcher=parallel"]
ENV = {"OMP_NUM_THREADS": "1"}
REPORT_FIGURES = ("tradeoff.png", "val_curves.png", "task_weights.png")
RUN_FIGURE_METHOD = "Uncertainty"  # the job whose curves.png is shown


def mtlrun_executable() -> str:
    """The mtlrun next to this Python (the project's .venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("mtlrun")
    return str(beside) if beside.exists() else (shutil.which("mtlrun") or "mtlrun")


def machine() -> str:
    """CPU cores and GPU of this machine, in words (the sweep runs on the GPU when there is one)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {gpu}, {platform.system()}"


def git_commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mtlrun-docs-figures-") as tmp:
        sweep = Path(tmp) / "sweep"
        command = [mtlrun_executable(), *COMMAND[1:], f"hydra.sweep.dir={sweep}"]
        print("running:", " ".join(f"{k}={v}" for k, v in ENV.items()), " ".join(COMMAND), flush=True)
        done = subprocess.run(command, cwd=tmp, env=os.environ | ENV)
        if done.returncode != 0:
            print(f"the sweep exited {done.returncode}", file=sys.stderr)
            return done.returncode
        OUT.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FIGURES:
            shutil.copyfile(sweep / name, OUT / name)
        for summary in sorted(sweep.glob("*/summary.json")):
            if json.loads(summary.read_text())["weighting"]["method"] == RUN_FIGURE_METHOD:
                shutil.copyfile(summary.parent / "curves.png", OUT / "curves.png")
                break
        else:
            print(f"no {RUN_FIGURE_METHOD} job in the sweep", file=sys.stderr)
            return 1
    record = {
        "command": " ".join(f"{k}={v}" for k, v in ENV.items()) + " " + " ".join(COMMAND),
        "script": "python scripts/docs_figures.py",
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "machine": machine(),
        "figures": [*REPORT_FIGURES, "curves.png"],
    }
    (OUT / "figures.json").write_text(json.dumps(record, indent=2) + "\n")
    print("wrote", ", ".join(record["figures"]), "and figures.json to", OUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
