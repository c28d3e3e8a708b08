"""The speed benchmark (benchmarks/speed.py) and the GPU check (scripts/gpu_check.sh) as tools: the quick
mode prints its table, the baseline comparison warns, the docs list saved tables, and the GPU check exits
cleanly where there is no GPU. Nothing here is timed: the benchmark's numbers are never asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"
GPU_CHECK = ROOT / "scripts" / "gpu_check.sh"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("speed_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it is being executed
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def markdown_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the first markdown table after the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
        elif table:
            break
    return table[2:]  # without the header and the rule


def test_quick_step_section_prints_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tasks", "3", "--only", "step"]
        + ["--results-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "`mtlrun × bare` = mtlrun's time per step / the bare loop's" in done.stdout
    rows = markdown_rows(done.stdout, "## step:")
    assert [row[:3] for row in rows] == [["3", "fp32", "no"]]
    ms_bare, ms_mtlrun, ratio = float(rows[0][3]), float(rows[0][4]), float(rows[0][7])
    assert ms_bare > 0 and ms_mtlrun > 0 and ratio > 0
    assert "no baseline speed_step.csv" in done.stdout
    assert not list(tmp_path.iterdir())  # nothing saved without --save


def test_a_ratio_worse_than_the_baseline_by_the_margin_warns(speed) -> None:
    keys, ratios = ("T", "method", "grad source"), {"× equal": "lower", "% of bare": "higher"}
    new = [
        {"T": 8, "method": "upgrad", "grad source": "shared_params", "× equal": 3.0, "% of bare": 90.0},
        {"T": 8, "method": "mgda", "grad source": "shared_params", "× equal": 1.2, "% of bare": 30.0},
        {"T": 8, "method": "pcgrad", "grad source": "-", "× equal": "–", "% of bare": 50.0},
    ]
    baseline = [  # read from a CSV: every cell a string
        {"T": "8", "method": "upgrad", "grad source": "shared_params", "× equal": "1.0", "% of bare": "90"},
        {"T": "8", "method": "mgda", "grad source": "shared_params", "× equal": "1.0", "% of bare": "95"},
        {"T": "8", "method": "pcgrad", "grad source": "-", "× equal": "1.0", "% of bare": "60"},
    ]
    warnings = speed.compare_to_baseline(new, baseline, keys, ratios, margin=1.5, section="methods")
    assert len(warnings) == 2, warnings
    upgrad, mgda = warnings
    assert upgrad.startswith("WARNING: methods [T=8, method=upgrad, grad source=shared_params] × equal:")
    assert "3 against 1 in the baseline (3.00x worse" in upgrad
    assert "method=mgda" in mgda and "% of bare: 30 against 95" in mgda  # higher is better: 3.2x worse
    # within the margin, or a row the baseline lacks: no warning
    assert not speed.compare_to_baseline(new[:1], baseline, keys, ratios, margin=4.0)
    assert not speed.compare_to_baseline(new, [], keys, ratios)


def test_saved_tables_are_listed_on_the_results_page(speed, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for stem in ("speed_methods", "speed_step", "speed_cuda_h100_80gb_step", "speed_orphan_step"):
        (results / f"{stem}.csv").write_text("a\n1\n")
        if stem != "speed_orphan_step":  # a table without its record is not listed
            (results / f"{stem}.json").write_text(json.dumps({"date": "x"}))
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nbefore\n\n{speed.DOCS_BEGIN}\nold\n{speed.DOCS_END}\n\nafter\n")
    assert speed.sync_docs(results, page)
    text = page.read_text()
    directives = [line for line in text.splitlines() if line.startswith("<!-- mtlrun:results")]
    assert directives == [
        "<!-- mtlrun:results speed_step -->",
        "<!-- mtlrun:results speed_methods -->",
        "<!-- mtlrun:results speed_cuda_h100_80gb_step -->",
    ]
    assert "old" not in text and text.startswith("# Results\n\nbefore") and text.endswith("after\n")
    assert not speed.sync_docs(results, page)  # already up to date
    # the real page has the block
    real = (ROOT / "docs" / "results.md").read_text()
    assert speed.DOCS_BEGIN in real and speed.DOCS_END in real


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_exits_cleanly_without_a_gpu(tmp_path: Path) -> None:
    dry = subprocess.run(["bash", str(GPU_CHECK), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert "pytest -m gpu" in dry.stdout and "benchmarks/speed.py --device cuda" in dry.stdout
    out = tmp_path / "out"
    env = os.environ | {"OUT": str(out), "NVIDIA_SMI": "false"}  # an nvidia-smi that finds nothing
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no NVIDIA GPU here" in done.stdout
    assert (out / "summary.txt").read_text().startswith("no GPU")
    assert "no NVIDIA GPU here" in (out / "gpu_check.log").read_text()
