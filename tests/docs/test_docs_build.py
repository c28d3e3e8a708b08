"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, a page missing from
the nav, a directive of docs/hooks.py that names a missing file, or a docstring mkdocstrings warns about
fails the fast tier. About 2 seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mkdocs() -> str | None:
    beside = Path(sys.executable).with_name("mkdocs")
    return str(beside) if beside.exists() else shutil.which("mkdocs")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    exe = mkdocs()
    if exe is None:
        pytest.fail(
            "mkdocs is not installed: `make test` installs the `docs` extra (pip install -e '.[docs]')"
        )
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [exe, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        timeout=120,
    )
    return done, site


def test_the_site_builds_strictly_without_a_warning(built):
    done, site = built
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    assert (site / "index.html").exists()


def test_every_config_option_and_docstring_is_rendered(built):
    """Each option of every group shows on its group's page; weighting, architecture and regularizer pages
    render each class with mkdocstrings (its heading carries the class's full path as its id)."""
    _, site = built
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    for group, page in hooks.GROUP_PAGES.items():
        html = (site / page.replace(".md", ".html")).read_text(encoding="utf-8")
        for option in hooks.options(group):
            assert f"conf/{group}/{option}.yaml" in html, (group, option)
            if group in ("weighting", "architecture", "regularizer"):
                target = hooks.target_of(hooks.read_conf(group, option), group)
                assert target, f"conf/{group}/{option}.yaml: no _target_ found"
                assert f'id="{target}"' in html, target


def test_measured_results_and_figures_are_rendered(built):
    _, site = built
    results = (site / "results.html").read_text(encoding="utf-8")
    for record in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        if record.stem not in ("predictions_example", "report_example"):
            assert f"benchmarks/results/{record.stem}.csv" in results, record.stem
    for png in sorted((ROOT / "docs" / "assets" / "figures").glob("*.png")):
        assert (site / "assets" / "figures" / png.name).exists()
