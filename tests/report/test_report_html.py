"""report.html: one self-contained page with the comparison table (sortable), Δm% and its baseline, the
failed jobs and the plots inlined, checked by parsing it and by opening it in a real headless Chromium.

The fake sweep is test_report.py's (task a: accuracy, higher is better; task b: mae, lower is better), with
``grad_cosine`` rows added to the multi-task runs and markup in the failed job's overrides and error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import EQUAL, JOBS, PCGRAD, SINGLE, write_run

from mtlrun.report.cli import main

# The failed job (5): overrides and an error with markup, which must show as text, never as elements.
FAILED_OVERRIDES = ["architecture=hard_sharing", "weighting=pcgrad", "seed=2", "+note=<i>x</i>&amp;"]
FAILED_ERROR = 'TrainingError: loss <b>NaN</b> & "inf" at step 3 <script>alert(1)</script>'
COSINES = {"equal": (0.3, 0.1), "pcgrad": (-0.2, 0.05)}  # mean grad_cosine of a~b at epochs 1, 2

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Page(HTMLParser):
    """What the tests read from report.html: tables (rows of (text, data-sort) cells, headers), images,
    headings, every attribute and the text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self.images: list[dict[str, str | None]] = []
        self.headings: list[str] = []
        self.attributes: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self._cell: list | None = None
        self._heading: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value) for name, value in attrs]
        if tag == "table":
            self.tables.append({"headers": [], "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", dict(attrs).get("data-sort")]
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            kind, text, key = self._cell
            table = self.tables[-1]
            if kind == "th":
                table["headers"].append(text.strip())
            else:
                table["rows"][-1].append((text.strip(), key))
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell[1] += data
        if self._heading is not None:
            self._heading.append(data)

    def body_rows(self, table: int) -> list[list[tuple[str, str | None]]]:
        return [row for row in self.tables[table]["rows"] if row]  # the header row has no td


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake sweep after `mtlrun report SWEEP` (plots on): report.html and the rest beside the runs."""
    sweep = tmp_path_factory.mktemp("html") / "sweep"
    for job, spec in enumerate(JOBS):
        folder = write_run(sweep / str(job), *spec[:6], wall=spec[6])
        architecture, weighting = spec[:2]
        if architecture == "hard_sharing" and spec[3] is not None:
            metrics = pd.read_csv(folder / "metrics.csv")
            cosines = pd.DataFrame(
                [(e, 3 * e, "train", "a~b", "grad_cosine", v) for e, v in enumerate(COSINES[weighting], 1)],
                columns=metrics.columns,
            )
            pd.concat([metrics, cosines]).to_csv(folder / "metrics.csv", index=False)
    failed = sweep / "5"
    summary = json.loads((failed / "summary.json").read_text())
    (failed / "summary.json").write_text(json.dumps(summary | {"error": FAILED_ERROR}))
    (failed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(FAILED_OVERRIDES))
    assert main([str(sweep)]) == 0
    return sweep


def test_report_html_holds_the_tables_and_inlined_plots(report_dir: Path) -> None:
    text = (report_dir / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    comparison, failed = page.tables
    headers = comparison["headers"]
    assert headers[:5] == ["configuration", "n", "a/accuracy ↑", "b/mae ↓", "Δm% ↓"]
    assert headers[5:] == ["mean rank ↓", "ms/step ↓", "wall s (all seeds)", "status"]
    rows = {row[0][0]: dict(zip(headers, row, strict=True)) for row in page.body_rows(0)}
    assert list(rows) == [EQUAL, PCGRAD, SINGLE]  # the order of summary.csv
    # the numbers of summary.csv: shown as in summary.md, sorted on the full value
    csv = pd.read_csv(report_dir / "summary.csv").set_index("label")
    for label, cells in rows.items():
        for header, column, scale in [
            ("n", "n_seeds", 1),
            ("a/accuracy ↑", "a/accuracy_mean", 1),
            ("b/mae ↓", "b/mae_mean", 1),
            ("Δm% ↓", "delta_m_mean", 1),
            ("mean rank ↓", "mean_rank", 1),
            ("ms/step ↓", "time_per_step_s", 1000),
            ("wall s (all seeds)", "wall_time_s_sum", 1),
        ]:
            assert float(cells[header][1]) == pytest.approx(csv.loc[label, column] * scale), (label, header)
        assert cells["status"] == ("completed", None)
    # by hand (test_report.py): accuracy 0.82 ± sqrt(0.0004), Δm% +3.75 ± sqrt(20.3125), pcgrad -5
    assert rows[EQUAL]["a/accuracy ↑"][0] == "0.82 ± 0.02"
    assert rows[EQUAL]["Δm% ↓"][0] == "+3.75 ± 4.51"
    assert rows[PCGRAD]["a/accuracy ↑"][0] == "0.88 ± 0.028"
    assert rows[PCGRAD]["Δm% ↓"][0] == "-5.00 ± 8.84"
    assert rows[PCGRAD]["ms/step ↓"][0] == "25.00" and rows[SINGLE]["ms/step ↓"][0] == "5.00"
    assert rows[SINGLE]["n"][0] == "2" and rows[SINGLE]["wall s (all seeds)"][0] == "11.0"
    assert "<strong>-5.00 ± 8.84</strong>" in text  # best in bold, as in summary.md

    # Δm% and its baseline B
    assert "Δm%" in page.headings
    assert "B: the single-task runs (architecture=single_task) among the inputs" in "".join(page.text)
    assert "toy (2 run(s)): a/accuracy 0.8, b/mae 2" in "".join(page.text)

    # the failed job, its markup shown as text (escaped), never as elements
    assert "Failed jobs" in page.headings
    (job,) = page.body_rows(1)
    assert [cell for cell, _ in job] == [
        " ".join(FAILED_OVERRIDES),
        "failed",
        "2",
        FAILED_ERROR,
        str(report_dir / "5"),
    ]
    assert "b" not in page.tags and "i" not in page.tags and page.tags.count("script") == 1

    # the header: date, inputs, split
    meta = "".join(page.text)
    assert re.search(r"date\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", meta)
    assert f"inputs{report_dir}" in meta and "splittest" in meta

    # the plots, each inlined; nothing to fetch anywhere
    assert [img["alt"] for img in page.images] == ["val_curves", "task_weights", "tradeoff", "cosines"]
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert (report_dir / "cosines.png").stat().st_size > 0
    links = [value for _, name, value in page.attributes if name in ("src", "href")]
    assert links and all(value.startswith("data:") for value in links)
    assert not re.search(r"https?://", text, re.IGNORECASE)


def test_report_html_without_plots_says_so(tmp_path: Path) -> None:
    write_run(tmp_path / "mtl" / "0", "hard_sharing", "equal", 0, 0.9, 1.0)
    write_run(tmp_path / "mtl" / "1", "hard_sharing", "pcgrad", 0, 0.8, 1.5)
    out = tmp_path / "out"
    assert main([str(tmp_path / "mtl"), "--out", str(out), "--no-plots"]) == 0
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    assert not page.images and len(page.tables) == 1  # no failed job: no second table
    assert [row[0][0] for row in page.body_rows(0)] == ["weighting=equal", "weighting=pcgrad"]
    text = " ".join("".join(page.text).split())
    assert "Plots were not drawn (--no-plots or trainer.plots=false)" in text
    assert "No single-task baseline" in text and "no Δm%" in text


def chromium() -> str:
    """The system's Chromium, or skip."""
    for path in ("/usr/bin/chromium", shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    pytest.skip("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")


def test_report_html_in_headless_chromium(report_dir: Path) -> None:
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra dev)")
    start = time.perf_counter()
    problems: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((report_dir / "report.html").as_uri(), wait_until="load")

            images = page.eval_on_selector_all(
                "img",
                """imgs => imgs.map(img => ({loaded: img.complete && img.naturalWidth > 0,
                                            right: img.getBoundingClientRect().right,
                                            page: document.documentElement.clientWidth}))""",
            )
            assert len(images) == 4
            assert all(img["loaded"] for img in images), images
            assert all(img["right"] <= img["page"] for img in images), images  # scaled to the page

            labels = page.locator("table.sortable").first.locator("tbody tr td:first-child")
            header = page.locator("table.sortable").first.locator("th", has_text="a/accuracy")
            assert labels.all_inner_texts() == [EQUAL, PCGRAD, SINGLE]
            header.click()  # accuracy ascending: 0.80, 0.82, 0.88
            assert labels.all_inner_texts() == [SINGLE, EQUAL, PCGRAD]
            assert header.get_attribute("aria-sort") == "ascending"
            header.click()
            assert labels.all_inner_texts() == [PCGRAD, EQUAL, SINGLE]
            assert header.get_attribute("aria-sort") == "descending"
            # Δm% as numbers (-5.00, +0.00, +3.75), not as text
            page.locator("table.sortable").first.locator("th", has_text="Δm%").click()
            assert labels.all_inner_texts() == [PCGRAD, SINGLE, EQUAL]
            if os.environ.get("MTLRUN_HTML_SCREENSHOT"):  # a picture of the page, to look at by hand
                page.screenshot(path=os.environ["MTLRUN_HTML_SCREENSHOT"], full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    print(f"browser check: {time.perf_counter() - start:.2f} s")
